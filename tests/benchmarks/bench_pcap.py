"""Packet-summary collector benchmark: pcap -> bidirectional flow records, packets/s per core.

Generates the shared benchmark pcap (``shared/bench/gen_pcap.py``, seed 1) in a temporary folder, then
measures on one pinned core, in CPU time, best of ``--repeat``:
  - ours: ``read_flows`` (vectorised reader, decoder and flow table), and its stages on their own;
  - a naive pure-Python flow table (``struct`` per packet, a dict of flows) over the same file.
Flow counts are printed beside the generator's (distinct bidirectional 5-tuples; a flow meter differs by
its timeouts and by keying ICMP on type/code). Prints figures only; asserts nothing about time.

Run: python -m tests.benchmarks.bench_pcap [--packets 300000 | --full] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from taishi.collectors.pcap_decode import Decoder
from taishi.collectors.pcap_flows import FlowParams, read_flows
from taishi.collectors.pcap_reader import iter_packet_batches

GENERATOR = Path(__file__).resolve().parents[2].parent / "shared" / "bench" / "gen_pcap.py"
FULL_PACKETS = 1_500_000


def naive_flows(path: Path, udp_idle: float = 60.0, tcp_idle: float = 300.0) -> int:
    """Flows the obvious way: one ``struct`` unpack per header, a dict keyed on the sorted endpoints."""
    flows: dict[tuple[object, ...], list[float]] = {}
    done = 0
    with open(path, "rb") as f:
        f.read(24)
        rec = struct.Struct("<IIII")
        while True:
            hdr = f.read(16)
            if len(hdr) < 16:
                break
            sec, usec, incl, _ = rec.unpack(hdr)
            frame = f.read(incl)
            ts = sec + usec / 1e6
            et = struct.unpack_from("!H", frame, 12)[0]
            if et == 0x0800:
                ihl = (frame[14] & 15) * 4
                total, proto = struct.unpack_from("!H", frame, 16)[0], frame[23]
                src, dst = frame[26:30], frame[30:34]
                l4 = 14 + ihl
            elif et == 0x86DD:
                total, proto = 40 + struct.unpack_from("!H", frame, 18)[0], frame[20]
                src, dst = frame[22:38], frame[38:54]
                l4 = 54
            else:
                continue
            sport, dport = struct.unpack_from("!HH", frame, l4) if proto in (6, 17) else (0, 0)
            a, b = (src, sport), (dst, dport)
            key = (a, b, proto) if a <= b else (b, a, proto)
            fwd = a <= b
            flow = flows.get(key)
            idle = tcp_idle if proto == 6 else udp_idle
            if flow is None or ts - flow[1] > idle:
                if flow is not None:
                    done += 1
                flow = flows[key] = [ts, ts, 0, 0, 0, 0]
            flow[1] = ts
            flow[2 if fwd else 4] += 1
            flow[3 if fwd else 5] += total
    return done + len(flows)


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--full", action="store_true", help=f"the full {FULL_PACKETS:,}-packet file (about 1 GB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--keep", type=Path, help="generate into (or reuse from) this folder instead of a temp one"
    )
    args = ap.parse_args()
    packets = FULL_PACKETS if args.full else args.packets
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory(prefix="bench_pcap_") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"bench-{packets}-seed1.pcap"
        if not (path.exists() and Path(f"{path}.json").exists()):
            if not GENERATOR.exists():
                sys.exit(f"benchmark generator not found at {GENERATOR}")
            print(f"generating {path.name} ...", flush=True)
            cmd = [sys.executable, str(GENERATOR), str(path), "--packets", str(packets), "--seed", "1"]
            subprocess.run(cmd, check=True)
        meta = json.loads(Path(f"{path}.json").read_text())
        n = int(meta["packets"])

        def read_only() -> int:
            return sum(len(b) for b in iter_packet_batches(path))

        def read_decode() -> int:
            dec = Decoder()
            return sum(sum(len(p) for p in dec.decode(b)) for b in iter_packet_batches(path))

        t_read, _ = _best(read_only, args.repeat)
        t_dec, _ = _best(read_decode, args.repeat)
        t_ours, flows = _best(lambda: read_flows(path, FlowParams()), args.repeat)
        t_naive, naive_count = _best(lambda: naive_flows(path), 1)
        ours_count = len(flows["@timestamp"])  # type: ignore[index]

    print(f"{n:,} packets, {meta['bytes'] / 1e6:,.0f} MB, one core, CPU time (best of {args.repeat})")
    print(f"{'':<44} {'packets/s':>12} {'flows':>9}")
    print(f"{'ours: read records':<44} {n / t_read:>12,.0f}")
    print(f"{'ours: read + decode':<44} {n / t_dec:>12,.0f}")
    print(f"{'ours: read + decode + flow table (read_flows)':<44} {n / t_ours:>12,.0f} {ours_count:>9,}")
    print(f"{'naive pure-Python flow table (struct/packet)':<44} {n / t_naive:>12,.0f} {naive_count:>9,}")
    print(f"{'generator: distinct bidirectional 5-tuples':<44} {'':>12} {meta['flows']:>9,}")
    print(f"speed-up over the naive table: {t_naive / t_ours:.1f}x")


if __name__ == "__main__":
    main()
