"""Detector benchmark: records/s per core through every detector together, beside the pipeline without
detectors, on the same in-memory messages in the same run; and detector state per tracked entity.

Run: python -m tests.benchmarks.bench_detectors [--records 500000]
Prints figures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import time

import orjson

from taishi.pipeline import wire
from taishi.pipeline.alerts import DetectorSet, build_detectors
from taishi.pipeline.config import Settings
from taishi.pipeline.demo import demo_sector
from taishi.pipeline.embedded import MemoryBus
from taishi.pipeline.enrich import Enricher
from taishi.pipeline.processor import PartitionProcessor
from taishi.pipeline.simulator import SectorSpec


def _run(settings: Settings, msgs: list, detectors: DetectorSet) -> tuple[float, PartitionProcessor]:
    proc = PartitionProcessor(settings, Enricher(settings, indicators={}), 0, detectors=detectors)
    t0 = time.process_time()
    for i in range(0, len(msgs), 50):
        proc.process(msgs[i : i + 50])
    proc.flush()
    return time.process_time() - t0, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--minutes", type=int, default=75)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    settings = Settings()
    cols, labels = demo_sector(SectorSpec(flows=args.records, duration_s=args.minutes * 60, seed=1))
    bus = MemoryBus(1)
    for key, value, hdrs in wire.sensor_batches(cols, 20_000):
        bus.send(settings.kafka.flows_topic, key, value, hdrs)
    msgs = bus.read(settings.kafka.flows_topic, 0)
    n = len(cols["@timestamp"])
    base, _ = _run(settings, msgs, DetectorSet(settings.detection, []))
    every = build_detectors(settings.detection)
    full, proc = _run(settings, msgs, DetectorSet(settings.detection, every))
    print(f"{n:,} records (demo sector with {len(labels)} attacks), one core, CPU time")
    print(f"pipeline without detectors: {n / base:>10,.0f} records/s")
    print(
        f"with all {len(every)} detectors:    {n / full:>10,.0f} records/s  ({proc.counters.alerts} alert writes)"
    )
    state = proc.detectors.snapshot()
    sizes = {d: len(orjson.dumps(s)) for d, s in state["detectors"].items()}
    tracked = len(proc.windows.baselines)
    print(
        f"detector state after the run: {sum(sizes.values()):,} bytes for {tracked:,} tracked entities "
        f"= {sum(sizes.values()) / max(1, tracked):,.0f} bytes per entity (JSON snapshot)"
    )
    for d, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"  {d:<13} {size:>12,} bytes")


if __name__ == "__main__":
    main()
