"""Fixtures on the real Kafka and Elasticsearch started by deploy/local/stack.sh (``make stack-up``).

Every test gets its own topics, consumer group and institution ids (so its own indices): tests never see
each other's data. When the stack is not reachable the tests fail with the command that starts it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from taishi.pipeline.config import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KAFKA = os.environ.get("TAISHI_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:39092")
ES = os.environ.get("TAISHI_ELASTICSEARCH__URL", "http://127.0.0.1:39200")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _reachable(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def stack() -> None:
    es_hostport = ES.split("://", 1)[-1].rstrip("/")
    missing = [name for name, hp in (("Kafka", KAFKA), ("Elasticsearch", es_hostport)) if not _reachable(hp)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not reachable ({KAFKA}, {ES}): start them with `make stack-up`")


@pytest.fixture
def tag() -> str:
    """A short id unique to this test, used in topic, group and institution names."""
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def settings(stack: None, tag: str) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": KAFKA,
            "flows_topic": f"taishi.flows.v1.{tag}",
            "dlq_topic": f"taishi.dlq.v1.{tag}",
            "state_topic": f"taishi.state.v1.{tag}",
            "group_id": f"taishi-{tag}",
            "partitions": 4,
        },
        elasticsearch={"url": ES, "retry_backoff_s": 0.2},
        window={"size_s": 300, "allowed_lateness_s": 60, "idle_close_s": 2},
    )


@pytest.fixture
def es(stack: None) -> Iterator[Any]:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(ES, request_timeout=60)
    yield client
    client.close()


def tag_orgs(cols: dict[str, np.ndarray], tag: str) -> dict[str, np.ndarray]:
    """Prefix institution ids (and sensors) with the test tag so indices are the test's own."""
    out = dict(cols)
    out["organization.id"] = np.array([f"{tag}-{o}" for o in cols["organization.id"]], dtype=object)
    out["observer.name"] = np.array([f"{tag}-{s}" for s in cols["observer.name"]], dtype=object)
    return out


def env_for(settings: Settings) -> dict[str, str]:
    """Environment that makes a `taishi` subprocess use these settings."""
    env = dict(os.environ)
    k, w = settings.kafka, settings.window
    env.update(
        {
            "TAISHI_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "TAISHI_KAFKA__FLOWS_TOPIC": k.flows_topic,
            "TAISHI_KAFKA__DLQ_TOPIC": k.dlq_topic,
            "TAISHI_KAFKA__STATE_TOPIC": k.state_topic,
            "TAISHI_KAFKA__GROUP_ID": k.group_id,
            "TAISHI_KAFKA__PARTITIONS": str(k.partitions),
            "TAISHI_KAFKA__MAX_POLL_RECORDS": str(k.max_poll_records),
            "TAISHI_ELASTICSEARCH__URL": settings.elasticsearch.url,
            "TAISHI_WINDOW__SIZE_S": str(w.size_s),
            "TAISHI_WINDOW__ALLOWED_LATENESS_S": str(w.allowed_lateness_s),
            "TAISHI_WINDOW__IDLE_CLOSE_S": str(w.idle_close_s),
        }
    )
    return env


def start_pipeline(settings: Settings, *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `taishi run` as its own process (so it can be SIGKILLed like a real one)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "taishi.pipeline.cli", "-v", "run", "--no-retention", *extra],
        env=env_for(settings),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def read_partitions(settings: Settings, topic: str | None = None) -> dict[int, list[Any]]:
    """Every message of a topic, per partition, in offset order (for reference runs and DLQ checks)."""
    from kafka import KafkaConsumer, TopicPartition

    from taishi.pipeline.processor import Message

    topic = topic or settings.kafka.flows_topic
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: dict[int, list[Any]] = {p: [] for p in parts}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=500, max_records=5000).items():
                out[tp.partition].extend(
                    Message(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or []))
                    for r in recs
                )
        return out
    finally:
        consumer.close(autocommit=False)


def reference_docs(settings: Settings) -> dict[str, dict[str, Any]]:
    """Documents of an uninterrupted in-process run over exactly the topic's partitions and offsets."""
    from taishi.pipeline.enrich import Enricher
    from taishi.pipeline.processor import PartitionProcessor

    enricher = Enricher(settings)
    docs: dict[str, dict[str, Any]] = {}
    for p, msgs in read_partitions(settings).items():
        proc = PartitionProcessor(settings, enricher, p)
        for i in range(0, len(msgs), 50):
            docs.update({d.id: d.source for d in proc.process(msgs[i : i + 50])[0]})
        docs.update({d.id: d.source for d in proc.flush()})
    return docs


def es_docs(es: Any, index: str) -> dict[str, dict[str, Any]]:
    """Every document of an index pattern, by id."""
    es.indices.refresh(index=index, ignore_unavailable=True, allow_no_indices=True)
    out: dict[str, dict[str, Any]] = {}
    search_after = None
    while True:
        kw: dict[str, Any] = {
            "index": index,
            "size": 5000,
            "sort": [{"_doc": "asc"}],
            "query": {"match_all": {}},
        }
        if search_after:
            kw["search_after"] = search_after
        resp = es.search(**kw, ignore_unavailable=True, allow_no_indices=True)
        hits = resp["hits"]["hits"]
        if not hits:
            return out
        out.update({h["_id"]: h["_source"] for h in hits})
        search_after = hits[-1]["sort"]


def wait_for(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
