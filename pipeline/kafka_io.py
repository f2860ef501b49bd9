"""Producing the batched wire format to Kafka, and reading a consumer group's lag."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from taishi.pipeline import wire
from taishi.pipeline.config import Settings


def make_producer(settings: Settings, **overrides: Any) -> Any:
    """A kafka-python producer: acks=all, idempotent, compressed, for batch messages."""
    from kafka import KafkaProducer

    k = settings.kafka
    opts: dict[str, Any] = {
        "client_id": f"{k.client_id}-producer",
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if k.compression == "none" else k.compression,
        "linger_ms": 20,
        "batch_size": 1 << 20,
        "max_request_size": 16 << 20,
        "retries": 10,
        **k.client_options(),
    }
    opts.update(overrides)
    return KafkaProducer(**opts)


def produce_columns(
    settings: Settings,
    columns: Mapping[str, Any],
    encoding: str = wire.ARROW,
    producer: Any = None,
    topic: str | None = None,
) -> int:
    """Send a columnar batch, split per (institution, sensor), and wait until Kafka acknowledged it."""
    own = producer is None
    producer = producer or make_producer(settings)
    futures = []
    n = 0
    try:
        for key, value, hdrs in wire.sensor_batches(columns, settings.kafka.batch_records, encoding):
            futures.append(
                producer.send(topic or settings.kafka.flows_topic, key=key, value=value, headers=hdrs)
            )
            n += int(dict(hdrs)["taishi-count"])
        producer.flush()
        for f in futures:
            f.get(timeout=60)
    finally:
        if own:
            producer.close()
    return n


def produce_file(settings: Settings, path: Path, producer: Any = None, topic: str | None = None) -> int:
    """Send a flow log file (JSON lines or CSV) as NDJSON batch messages."""
    from taishi.pipeline.embedded import read_flow_file

    own = producer is None
    producer = producer or make_producer(settings)
    futures, n = [], 0
    try:
        for chunk in read_flow_file(path, settings.kafka.batch_records):
            count = chunk.count(b"\n") + 1
            hdrs = wire.headers(wire.NDJSON, count, settings.sensor_id)
            futures.append(producer.send(topic or settings.kafka.flows_topic, value=chunk, headers=hdrs))
            n += count
        producer.flush()
        for f in futures:
            f.get(timeout=60)
    finally:
        if own:
            producer.close()
    return n


def group_lag(settings: Settings) -> dict[str, int]:
    """Per partition: end offset minus the group's committed offset."""
    from kafka import KafkaConsumer, TopicPartition

    k = settings.kafka
    consumer = KafkaConsumer(group_id=k.group_id, enable_auto_commit=False, **k.client_options())
    try:
        parts = consumer.partitions_for_topic(k.flows_topic) or set()
        tps = [TopicPartition(k.flows_topic, p) for p in sorted(parts)]
        ends = consumer.end_offsets(tps) if tps else {}
        return {str(tp.partition): ends[tp] - (consumer.committed(tp) or 0) for tp in tps}
    finally:
        consumer.close(autocommit=False)
