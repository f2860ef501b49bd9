"""Opt-in raw flows, `taishi status`, and retention — on the real stack."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson

from taishi.pipeline.config import Institution
from taishi.pipeline.kafka_io import produce_columns
from taishi.pipeline.retention import delete_expired
from taishi.pipeline.runner import KafkaPipeline, ensure_topics
from taishi.pipeline.simulator import SectorSpec, simulate
from taishi.pipeline.sinks import ElasticsearchSink

from .conftest import ROOT, env_for, es_docs, tag_orgs


def test_raw_flows_only_for_institutions_that_opt_in_and_replays_do_not_duplicate(settings, es, tag):
    cols = tag_orgs(simulate(SectorSpec(institutions=2, flows=5_000, duration_s=600, seed=4)), tag)
    orgs = sorted(set(cols["organization.id"]))
    settings.institutions = [Institution(id=orgs[0], index_flows=True), Institution(id=orgs[1])]
    ensure_topics(settings)
    produce_columns(settings, cols)
    produce_columns(settings, cols)  # a shipper resending everything after a crash
    KafkaPipeline(settings, ElasticsearchSink(settings.elasticsearch)).run(idle_exit_s=5)

    flows = es_docs(es, f"taishi-flows-v1-{tag}-*")
    sent = int((cols["organization.id"] == orgs[0]).sum())
    assert len(flows) == sent, "each raw flow once, although it was sent twice"
    assert {d["organization"]["id"] for d in flows.values()} == {orgs[0]}
    one = next(iter(flows.values()))
    assert one["network"]["community_id"].startswith("1:") and one["network"]["direction"]


def test_status_reports_lag_and_counts_from_the_real_servers(settings, tag):
    cols = tag_orgs(simulate(SectorSpec(institutions=1, flows=2_000, duration_s=300, seed=2)), tag)
    ensure_topics(settings)
    produce_columns(settings, cols)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "taishi.pipeline.cli", *a],
        env=env_for(settings),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    before = orjson.loads(run("status").stdout)
    assert sum(before["lag"].values()) > 0
    assert run("run", "--idle-exit", "4", "--no-retention").returncode == 0
    after = orjson.loads(run("status").stdout)
    assert sum(after["lag"].values()) == 0
    assert after["documents"]["taishi-entities-v1"] > 0


def test_retention_deletes_only_expired_taishi_indices(es, tag):
    old = (datetime.now(UTC) - timedelta(days=40)).strftime("%Y.%m.%d")
    new = datetime.now(UTC).strftime("%Y.%m.%d")
    names = [f"taishi-entities-v1-{tag}-{old}", f"taishi-entities-v1-{tag}-{new}", f"{tag}-other-{old}"]
    for n in names:
        es.indices.create(index=n)
    try:
        deleted = delete_expired(es, 30)
        assert f"taishi-entities-v1-{tag}-{old}" in deleted
        left = set(es.indices.get(index=f"*{tag}*"))
        assert left == {names[1], names[2]}
    finally:
        es.indices.delete(index=",".join(names), ignore_unavailable=True)
