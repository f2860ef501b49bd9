"""Delivery guarantees on the real stack: SIGKILL at any moment, two consumers, dead letters."""

from __future__ import annotations

import random
import signal
import time

import orjson
import pytest

from taishi.pipeline import wire
from taishi.pipeline.kafka_io import make_producer, produce_columns
from taishi.pipeline.runner import ensure_topics
from taishi.pipeline.simulator import SectorSpec, simulate

from .conftest import es_docs, read_partitions, reference_docs, start_pipeline, tag_orgs, wait_for


def _produce_sector(settings, tag, flows=60_000, seed=9):
    cols = tag_orgs(simulate(SectorSpec(institutions=4, flows=flows, duration_s=3600, seed=seed)), tag)
    ensure_topics(settings)
    return produce_columns(settings, cols)


@pytest.mark.slow
def test_sigkill_at_random_moments_yields_the_uninterrupted_documents(settings, es, tag, tmp_path):
    settings.kafka.max_poll_records = 20  # small polls: many commits, many moments to die between
    _produce_sector(settings, tag)
    rng = random.Random(1)
    log = tmp_path / "pipeline.log"
    # Each life outlasts the group's session timeout (6 s), so every restart rejoins and works a while.
    for _ in range(3):
        proc = start_pipeline(settings, log=log)
        time.sleep(rng.uniform(8.0, 12.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = start_pipeline(settings, "--idle-exit", "6", log=log)
    assert wait_for(final, 300) == 0, log.read_text()[-3000:]

    got = es_docs(es, f"taishi-entities-v1-{tag}-*")
    want = reference_docs(settings)
    assert len(want) > 500
    assert set(got) == set(want), "document ids differ from an uninterrupted run"
    assert got == want


@pytest.mark.slow
def test_two_consumers_split_partitions_and_one_leaving_changes_nothing(settings, es, tag, tmp_path):
    settings.kafka.max_poll_records = 20
    _produce_sector(settings, tag, seed=10)
    log = tmp_path / "pipeline.log"
    a = start_pipeline(settings, "--idle-exit", "8", "--status-file", str(tmp_path / "a.json"), log=log)
    b = start_pipeline(settings, "--idle-exit", "8", "--status-file", str(tmp_path / "b.json"), log=log)
    time.sleep(6)
    b.send_signal(signal.SIGTERM)  # leaves the group mid-run; a takes over its partitions
    assert wait_for(b, 60) == 0
    assert wait_for(a, 300) == 0, log.read_text()[-3000:]
    sa = orjson.loads((tmp_path / "a.json").read_bytes())
    sb = orjson.loads((tmp_path / "b.json").read_bytes())
    assert sb["counters"]["messages"] > 0, "the second consumer never got a partition"
    assert sa["counters"]["messages"] > 0

    got = es_docs(es, f"taishi-entities-v1-{tag}-*")
    want = reference_docs(settings)
    assert set(got) == set(want) and len(want) > 500
    diff = {i: (got[i]["taishi"], want[i]["taishi"]) for i in want if got[i] != want[i]}
    assert not diff, f"{len(diff)} documents differ, e.g. {next(iter(diff.values()))}"


def test_malformed_records_go_to_the_dlq_with_reasons_and_nothing_valid_is_lost(settings, es, tag):
    from taishi.pipeline.runner import KafkaPipeline
    from taishi.pipeline.sinks import ElasticsearchSink

    ensure_topics(settings)
    org = f"{tag}-bank-a"
    good = {
        "@timestamp": 1_795_000_000_000,
        "organization.id": org,
        "observer.name": "s1",
        "source.ip": "10.0.0.1",
        "source.port": 40000,
        "destination.ip": "8.8.8.8",
        "destination.port": 53,
        "network.transport": "udp",
        "source.bytes": 100,
        "destination.bytes": 300,
    }
    bad_lines = {
        b'{"@timestamp": 1795000000000, "organization.id": "'
        + org.encode()
        + b'", "source.ip": "10.0.0.1"': "invalid JSON",
        b"\xff\xfe\xfa{}": "",  # non-UTF-8
        orjson.dumps({**good, "source.bytes": "lots"}): "wrong type for source.bytes",
        orjson.dumps(
            {k: v for k, v in good.items() if k != "destination.ip"}
        ): "missing required field destination.ip",
        orjson.dumps({**good, "destination.port": 99999}): "destination.port out of range",
    }
    goods = [
        orjson.dumps({**good, "source.bytes": 100 + i, "@timestamp": good["@timestamp"] + i})
        for i in range(10)
    ]
    batch = b"\n".join(goods[:5] + list(bad_lines) + goods[5:])
    producer = make_producer(settings)
    producer.send(
        settings.kafka.flows_topic, key=b"k", value=batch, headers=wire.headers(wire.NDJSON, 15, "s1")
    )
    producer.send(
        settings.kafka.flows_topic,
        key=b"k",
        value=b"\x00\x01 not a batch at all",
        headers=wire.headers(wire.ARROW, 3, "s1"),
    )
    producer.send(
        settings.kafka.flows_topic, key=b"k", value=orjson.dumps({**good, "source.bytes": 7})
    )  # third-party
    producer.flush()
    producer.close()

    status = KafkaPipeline(settings, ElasticsearchSink(settings.elasticsearch)).run(idle_exit_s=5)
    assert status.counters["records_valid"] == 11

    dlq = [m for msgs in read_partitions(settings, settings.kafka.dlq_topic).values() for m in msgs]
    reasons = {m.value: dict(m.headers)["taishi-reason"].decode() for m in dlq}
    assert len(dlq) == 6
    for raw, expected in bad_lines.items():
        assert raw in reasons, f"{raw!r} missing from the DLQ"
        assert expected in reasons[raw]
    assert any("arrow batch unreadable" in r for r in reasons.values())
    for m in dlq:
        assert dict(m.headers)["taishi-source"].decode().startswith(settings.kafka.flows_topic + "/")

    docs = es_docs(es, f"taishi-entities-v1-{tag}-*")
    assert len(docs) == 1
    (doc,) = docs.values()
    assert doc["taishi"]["behaviour"]["bytes_out"] == sum(100 + i for i in range(10)) + 7
    assert doc["taishi"]["behaviour"]["connections_out"] == 11
