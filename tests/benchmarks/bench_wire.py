"""Wire format benchmark: Arrow IPC vs NDJSON batches, encode and decode-to-DataFrame, records/s per core.

Run: python -m tests.benchmarks.bench_wire [--records 200000] [--batch 20000]
Prints figures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import time

import lz4.frame
import pandas as pd

from taishi.pipeline import wire
from taishi.pipeline.simulator import SectorSpec, simulate


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cols = simulate(SectorSpec(flows=args.records, seed=1))
    n, b = args.records, args.batch
    parts = [{k: v[i : i + b] for k, v in cols.items()} for i in range(0, n, b)]
    rows = [wire._records(p, len(p["@timestamp"])) for p in parts]

    arrow_msgs = [wire.encode_arrow(p) for p in parts]
    ndjson_msgs = [wire.encode_ndjson(r) for r in rows]
    ha, hn = wire.headers(wire.ARROW, b, "s"), wire.headers(wire.NDJSON, b, "s")

    def dec_arrow() -> None:
        for m in arrow_msgs:
            wire.decode(m, ha).table.to_pandas()

    def dec_ndjson() -> None:
        for m in ndjson_msgs:
            pd.DataFrame.from_records(wire.decode(m, hn).rows)

    figures = {
        "arrow": (
            _best(lambda: [wire.encode_arrow(p) for p in parts], args.repeat),
            _best(dec_arrow, args.repeat),
            sum(map(len, arrow_msgs)),
            sum(len(lz4.frame.compress(m)) for m in arrow_msgs),
        ),
        "ndjson": (
            _best(lambda: [wire.encode_ndjson(r) for r in rows], args.repeat),
            _best(dec_ndjson, args.repeat),
            sum(map(len, ndjson_msgs)),
            sum(len(lz4.frame.compress(m)) for m in ndjson_msgs),
        ),
    }
    print(f"{n:,} simulated flow records, {b:,} per message, one core, best of {args.repeat} (CPU time)")
    print(
        f"{'encoding':<8} {'encode rec/s':>14} {'decode->DataFrame rec/s':>24} {'bytes/rec':>10} {'lz4 bytes/rec':>14}"
    )
    for name, (enc, dec, size, csize) in figures.items():
        print(f"{name:<8} {n / enc:>14,.0f} {n / dec:>24,.0f} {size / n:>10.1f} {csize / n:>14.1f}")


if __name__ == "__main__":
    main()
