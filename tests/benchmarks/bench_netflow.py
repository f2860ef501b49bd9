"""NetFlow decoding throughput: Taishi's vectorised decoder beside a naive pure-Python struct loop.

Builds synthetic NetFlow v5 and v9 datagrams (30 records each, as Cisco v5 packs them), then times, in one run
and on one core, datagram bytes -> contract columns (numpy arrays, addresses as text) for:

- ``feed_many``: batches of datagrams, same-template flowsets joined and decoded by one ``np.frombuffer``;
- ``feed``: one datagram per call;
- the baseline: ``struct.unpack_from`` per record, ``socket.inet_ntoa`` per address, lists -> numpy arrays.

Two address mixes: "campus" (a few thousand hosts talking to tens of thousands of peers, repeats as in real
traffic) and "unique" (every address new: the worst case for the address-text cache). Asserts nothing about
time. Run: ``.venv/bin/python tests/benchmarks/bench_netflow.py [--datagrams N] [--batch B]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
from collections.abc import Callable

import numpy as np

from taishi.collectors.netflow import NetflowDecoder

RECORDS = 30
EXPORTER = "192.0.2.10"
V5_HEADER = struct.Struct(">HHIIIIBBH")
V5_RECORD = struct.Struct(">IIIHHIIIIHHBBBBHHBBH")
# v9 template 256: src, dst, next hop, ports, protocol, flags, bytes, packets, first/last switched, if indexes.
V9_FIELDS = (
    (8, 4),
    (12, 4),
    (15, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (1, 4),
    (2, 4),
    (22, 4),
    (21, 4),
    (10, 4),
)
V9_FIELDS += ((14, 4),)
V9_RECORD = struct.Struct(">IIIHHBBIIIIII")


def addresses(rng: np.random.Generator, n: int, mix: str) -> tuple[np.ndarray, np.ndarray]:
    """Source and destination IPv4 addresses for n records."""
    if mix == "unique":
        return rng.integers(1, 2**32, n, dtype=np.uint32), rng.integers(1, 2**32, n, dtype=np.uint32)
    hosts = (0x0A000000 + rng.integers(0, 4000, n)).astype(np.uint32)
    peers = rng.integers(1, 2**32, 30000, dtype=np.uint32)[np.minimum(rng.zipf(1.3, n), 30000) - 1]
    outbound = rng.random(n) < 0.5
    return np.where(outbound, hosts, peers), np.where(outbound, peers, hosts)


def v5_datagrams(count: int, mix: str, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    src, dst = addresses(rng, count * RECORDS, mix)
    sizes = rng.integers(40, 1_500_000, count * RECORDS).tolist()
    ports = rng.integers(1024, 65535, count * RECORDS).tolist()
    out = []
    for d in range(count):
        parts = [V5_HEADER.pack(5, RECORDS, 3_600_000 + d, 1_700_000_000 + d // 100, 0, d * RECORDS, 0, 0, 0)]
        for i in range(d * RECORDS, (d + 1) * RECORDS):
            # src, dst, next hop, in/out if, packets, bytes, first, last, ports, pad, flags, proto, tos, ASes, masks
            fields = (int(src[i]), int(dst[i]), 0, 1, 2, 10, sizes[i], 3_590_000, 3_599_000, ports[i], 443)
            parts.append(V5_RECORD.pack(*fields, 0, 0x1B, 6, 0, 0, 0, 24, 24, 0))
        out.append(b"".join(parts))
    return out


def v9_datagrams(count: int, mix: str, seed: int = 2) -> list[bytes]:
    """v9 packets of one data flowset each; the template rides in every 20th packet, as exporters refresh it."""
    rng = np.random.default_rng(seed)
    src, dst = addresses(rng, count * RECORDS, mix)
    sizes = rng.integers(40, 1_500_000, count * RECORDS).tolist()
    ports = rng.integers(1024, 65535, count * RECORDS).tolist()
    template = struct.pack(">HH", 256, len(V9_FIELDS)) + b"".join(struct.pack(">HH", *f) for f in V9_FIELDS)
    template_set = struct.pack(">HH", 0, 4 + len(template)) + template
    out = []
    for d in range(count):
        records = b"".join(
            V9_RECORD.pack(
                int(src[i]), int(dst[i]), 0, ports[i], 443, 6, 0x1B, sizes[i], 10, 3_590_000, 3_599_000, 1, 2
            )
            for i in range(d * RECORDS, (d + 1) * RECORDS)
        )
        data_set = struct.pack(">HH", 256, 4 + len(records)) + records
        sets = (template_set if d % 20 == 0 else b"") + data_set
        header = struct.pack(">HHIIII", 9, RECORDS + (d % 20 == 0), 3_600_000 + d, 1_700_000_000, d, 0)
        out.append(header + sets)
    return out


def naive_v5(datagrams: list[bytes]) -> int:
    """The baseline: one struct unpack per record and one inet_ntoa per address, columns built from lists."""
    cols: dict[str, list] = {
        k: [] for k in ("ts", "end", "src", "sport", "dst", "dport", "proto", "bytes", "pkts")
    }
    ntoa = socket.inet_ntoa
    for datagram in datagrams:
        _, count, uptime, secs, nsecs, *_ = V5_HEADER.unpack_from(datagram, 0)
        export_ms = secs * 1000 + nsecs // 1_000_000
        for i in range(count):
            r = V5_RECORD.unpack_from(datagram, 24 + 48 * i)
            cols["src"].append(ntoa(datagram[24 + 48 * i : 28 + 48 * i]))
            cols["dst"].append(ntoa(datagram[28 + 48 * i : 32 + 48 * i]))
            cols["ts"].append(export_ms - (uptime - r[7]))
            cols["end"].append(export_ms - (uptime - r[8]))
            cols["sport"].append(r[9])
            cols["dport"].append(r[10])
            cols["proto"].append(r[13])
            cols["bytes"].append(r[6])
            cols["pkts"].append(r[5])
    arrays = {k: np.array(v, dtype=object if k in ("src", "dst") else np.int64) for k, v in cols.items()}
    return len(arrays["ts"])


def naive_v9(datagrams: list[bytes]) -> int:
    """The baseline for v9: template-aware walk of flowsets, one precompiled struct per record."""
    cols: dict[str, list] = {
        k: [] for k in ("ts", "end", "src", "sport", "dst", "dport", "proto", "bytes", "pkts")
    }
    ntoa = socket.inet_ntoa
    length = V9_RECORD.size
    for datagram in datagrams:
        _, _, uptime, secs, _, _ = struct.unpack_from(">HHIIII", datagram, 0)
        pos = 20
        while pos + 4 <= len(datagram):
            set_id, set_length = struct.unpack_from(">HH", datagram, pos)
            if set_id == 256:
                for off in range(pos + 4, pos + set_length - length + 1, length):
                    r = V9_RECORD.unpack_from(datagram, off)
                    cols["src"].append(ntoa(datagram[off : off + 4]))
                    cols["dst"].append(ntoa(datagram[off + 4 : off + 8]))
                    cols["ts"].append(secs * 1000 - (uptime - r[9]))
                    cols["end"].append(secs * 1000 - (uptime - r[10]))
                    cols["sport"].append(r[3])
                    cols["dport"].append(r[4])
                    cols["proto"].append(r[5])
                    cols["bytes"].append(r[7])
                    cols["pkts"].append(r[8])
            pos += set_length
    arrays = {k: np.array(v, dtype=object if k in ("src", "dst") else np.int64) for k, v in cols.items()}
    return len(arrays["ts"])


def ours_batched(batch: int) -> Callable[[list[bytes]], int]:
    def run(datagrams: list[bytes]) -> int:
        decoder = NetflowDecoder()
        total = 0
        for i in range(0, len(datagrams), batch):
            result = decoder.feed_many((d, EXPORTER, 1.0) for d in datagrams[i : i + batch])
            total += result.count
        return total

    return run


def ours_single(datagrams: list[bytes]) -> int:
    decoder = NetflowDecoder()
    return sum(decoder.feed(d, EXPORTER, 1.0).count for d in datagrams)


def best_rate(fn: Callable[[list[bytes]], int], datagrams: list[bytes], repeat: int) -> float:
    """Records per second, best of ``repeat`` runs (the least disturbed by other load on the machine)."""
    best = float("inf")
    records = 0
    for _ in range(repeat):
        start = time.perf_counter()
        records = fn(datagrams)
        best = min(best, time.perf_counter() - start)
    return records / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datagrams", type=int, default=20000, help="datagrams per workload (30 records each)"
    )
    parser.add_argument("--batch", type=int, default=1000, help="datagrams per feed_many call")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is reported")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # figures are per core
    print(
        f"{args.datagrams} datagrams x {RECORDS} records, feed_many batch {args.batch}, best of {args.repeat}"
    )
    print(f"{'workload':<18}{'naive struct loop':>20}{'feed (1/call)':>16}{'feed_many':>14}{'speed-up':>10}")
    for version, build, naive in (("v5", v5_datagrams, naive_v5), ("v9", v9_datagrams, naive_v9)):
        for mix in ("campus", "unique"):
            datagrams = build(args.datagrams, mix)
            base = best_rate(naive, datagrams, args.repeat)
            single = best_rate(ours_single, datagrams, args.repeat)
            batched = best_rate(ours_batched(args.batch), datagrams, args.repeat)
            print(
                f"{version + ' ' + mix:<18}{base:>16,.0f} r/s{single:>12,.0f} r/s{batched:>10,.0f} r/s"
                f"{batched / base:>9.1f}x"
            )


if __name__ == "__main__":
    main()
