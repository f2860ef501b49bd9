"""Pipeline benchmark on the real stack (make stack-up first).

1. Throughput: N simulated flow records (Arrow batches) on a fresh topic; the raw kafka-python consume rate
   of that topic, then the whole pipeline (consume -> validate -> enrich -> windows -> Elasticsearch) on
   it, in records/s per core of CPU the process used.
2. Latency: a producer process offers records at a steady rate with event time = wall time; for every
   entity window we record when its document became searchable, minus when the window could close
   (window end + allowed lateness): p50/p95.

Run: python -m tests.benchmarks.bench_pipeline [--records 1000000] [--rate 20000] [--seconds 60]
Prints figures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
import uuid

import numpy as np

from taishi.pipeline.config import Settings
from taishi.pipeline.kafka_io import make_producer, produce_columns
from taishi.pipeline.runner import KafkaPipeline, ensure_topics
from taishi.pipeline.simulator import SectorSpec, simulate
from taishi.pipeline.sinks import ElasticsearchSink

KAFKA = os.environ.get("TAISHI_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:39092")
ES = os.environ.get("TAISHI_ELASTICSEARCH__URL", "http://127.0.0.1:39200")


def _settings(tag: str, **window: float) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": KAFKA,
            "flows_topic": f"bench.flows.{tag}",
            "dlq_topic": f"bench.dlq.{tag}",
            "state_topic": f"bench.state.{tag}",
            "group_id": f"bench-{tag}",
            "partitions": 4,
            "max_poll_records": 50,
        },
        elasticsearch={"url": ES},
        window=window or {"size_s": 300, "allowed_lateness_s": 60, "idle_close_s": 2},
        # The pipeline's own cost (consume, validate, enrich, windows, sink); detectors: bench_detectors.
        detection={"enabled": []},
    )


def raw_consume(settings: Settings) -> tuple[float, int, int]:
    """kafka-python alone: iterate every message of the topic; (seconds, messages, records)."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        settings.kafka.flows_topic,
        bootstrap_servers=KAFKA,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=50,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        consumer_timeout_ms=3000,
    )
    msgs = recs = 0
    t0 = time.process_time()
    for m in c:
        msgs += 1
        recs += int(dict(m.headers)["taishi-count"])
    cpu = time.process_time() - t0
    c.close()
    return cpu, msgs, recs


def throughput(records: int) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = _settings(tag)
    # A dense stream (50k records/s of event time), as collectors at full rate produce it.
    cols = simulate(SectorSpec(institutions=5, flows=records, duration_s=max(60, records // 50_000), seed=1))
    cols["organization.id"] = np.array([f"bench{tag}-{o}" for o in cols["organization.id"]], dtype=object)
    ensure_topics(settings)
    produce_columns(settings, cols)
    cpu, msgs, recs = raw_consume(settings)
    print(
        f"raw kafka-python consume of the topic: {msgs:,} messages ({recs:,} records) "
        f"in {cpu:.2f} CPU s = {msgs / cpu:,.0f} msg/s, {recs / cpu:,.0f} records/s per core"
    )
    st = KafkaPipeline(settings, ElasticsearchSink(settings.elasticsearch)).run(idle_exit_s=5)
    n = st.counters["records_valid"]
    print(
        f"pipeline (consume, validate, enrich, windows, Elasticsearch): {n:,} records, {st.counters['docs']:,} "
        f"entity documents; {st.active_cpu_seconds:.2f} CPU s (polling included) = "
        f"{n / st.active_cpu_seconds:,.0f} records/s per core; our processing alone {st.busy_cpu_seconds:.2f} CPU s "
        f"= {n / st.busy_cpu_seconds:,.0f} records/s per core"
    )


def flow_indexing(records: int) -> None:
    """The same pipeline with raw-flow indexing on for every institution: what one ES node absorbs."""
    from taishi.pipeline.config import Institution

    tag = uuid.uuid4().hex[:8]
    settings = _settings(tag)
    cols = simulate(SectorSpec(institutions=2, flows=records, duration_s=max(60, records // 50_000), seed=2))
    cols["organization.id"] = np.array([f"bench{tag}-{o}" for o in cols["organization.id"]], dtype=object)
    settings.institutions = [
        Institution(id=o, index_flows=True) for o in sorted(set(cols["organization.id"]))
    ]
    ensure_topics(settings)
    produce_columns(settings, cols)
    t0 = time.monotonic()
    st = KafkaPipeline(settings, ElasticsearchSink(settings.elasticsearch)).run(idle_exit_s=5)
    print(
        f"with raw flows indexed: {st.counters['records_valid']:,} records -> {st.counters['docs']:,} documents "
        f"in {st.busy_seconds:.1f} s busy = {st.counters['records_valid'] / st.busy_seconds:,.0f} records/s "
        f"(wall incl. 5 s idle exit {time.monotonic() - t0:.1f} s)"
    )


def _offer(settings: Settings, rate: int, seconds: int, seed: int) -> None:
    """Producer process: every 200 ms, send rate/5 records stamped with the current wall time."""
    producer = make_producer(settings, linger_ms=5)
    rng = np.random.default_rng(seed)
    per_tick = max(1, rate // 5)
    t_end = time.time() + seconds
    next_tick = time.time()
    while time.time() < t_end:
        spec = SectorSpec(institutions=5, flows=per_tick, duration_s=1, seed=int(rng.integers(1 << 30)))
        cols = simulate(spec)
        now_ms = int(time.time() * 1000)
        cols["@timestamp"] = np.full(per_tick, now_ms, np.int64)
        cols["event.end"] = cols["@timestamp"]
        produce_columns(settings, cols, producer=producer)
        next_tick += 0.2
        time.sleep(max(0.0, next_tick - time.time()))
    producer.close()


def latency(rate: int, seconds: int) -> None:
    import threading

    from elasticsearch import Elasticsearch

    tag = uuid.uuid4().hex[:8]
    size, lateness = 5, 2
    settings = _settings(tag, size_s=size, allowed_lateness_s=lateness, idle_close_s=30)
    ensure_topics(settings)
    es = Elasticsearch(ES)
    pipe = KafkaPipeline(settings, ElasticsearchSink(settings.elasticsearch))
    t = threading.Thread(target=pipe.run, kwargs={"idle_exit_s": 10}, daemon=True)
    t.start()
    time.sleep(3)
    prod = multiprocessing.get_context("spawn").Process(target=_offer, args=(settings, rate, seconds, 1))
    prod.start()
    seen: dict[str, float] = {}
    stopped_at = float("inf")
    while prod.is_alive() or t.is_alive():
        if not prod.is_alive() and stopped_at == float("inf"):
            stopped_at = time.time()
        resp = es.search(
            index="taishi-entities-v1-*",
            size=0,
            query={"range": {"@timestamp": {"gte": "now-1h"}}},
            aggs={"w": {"terms": {"field": "event.end", "size": 1000}}},
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        now = time.time()
        for b in resp.get("aggregations", {}).get("w", {}).get("buckets", []):
            seen.setdefault(str(b["key"]), now)
        time.sleep(0.1)
    # Steady state only: windows that could close while records were still flowing (the last ones close
    # later, when the idle partition closes them).
    closes = {k: int(k) / 1000 + lateness for k in seen}
    lat = np.array(
        [seen[k] - c for k, c in closes.items() if c <= stopped_at - 1 and seen[k] - c > -lateness]
    )
    if not len(lat):
        print("latency: no windows observed")
        return
    print(
        f"latency at {rate:,} records/s offered for {seconds} s ({len(lat)} windows of {size} s, lateness "
        f"{lateness} s): searchable after window close p50 {np.percentile(lat, 50):.2f} s, "
        f"p95 {np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--flow-records", type=int, default=200_000, help="records for the raw-flow indexing run")
    args = ap.parse_args()
    throughput(args.records)
    flow_indexing(args.flow_records)
    if not args.skip_latency:
        latency(args.rate, args.seconds)


if __name__ == "__main__":
    main()
