"""Packet-summary collector benchmark: pcap -> bidirectional flow records, packets/s per core.

Generates the shared benchmark pcap (``shared/bench/gen_pcap.py``, seed 1) in a temporary folder, then
measures on one pinned core (child processes inherit the pin), in CPU time of the process and its children,
best of ``--repeat``:
  - ours: ``read_flows`` (vectorised reader, decoder and flow table), with and without the DNS/TLS/HTTP
    metadata, and its stages on their own;
  - a naive pure-Python flow table (``struct`` per packet, a dict of flows) over the same file;
  - peers in the same run on the same file: ``tshark -T fields`` with 7 header fields (whole file; packets
    only, no flows), pyshark ``FileCapture(use_json=True)`` reading ``ip.src`` (a 20k-packet slice: at a few
    thousand packets/s the whole file would take minutes), and nfstream (C flow meter with a Python API),
    dissection off and on, if it is installed.
Flow counts are printed beside the generator's (distinct bidirectional 5-tuples; a flow meter differs by
its timeouts and by keying ICMP on type/code). Prints figures only; asserts nothing about time.

nfstream is not a Taishi dependency; to include it: ``.venv/bin/pip install nfstream`` (a wheel from PyPI;
it pulls pandas). tshark and pyshark: ``apt-get install tshark`` and the ``collector`` extra. A peer that is
missing or fails is reported with the reason and the run goes on.

Run: python -m tests.benchmarks.bench_pcap [--packets 300000 | --full] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from taishi.collectors.pcap_decode import Decoder
from taishi.collectors.pcap_flows import FlowParams, read_flows
from taishi.collectors.pcap_reader import iter_packet_batches

GENERATOR = Path(__file__).resolve().parents[2].parent / "shared" / "bench" / "gen_pcap.py"
FULL_PACKETS = 1_500_000
PYSHARK_SLICE = 20_000
TSHARK_FIELDS = ("frame.time_epoch", "ip.src", "ip.dst", "ip.proto", "tcp.srcport", "tcp.dstport", "ip.len")


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


def _cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = _cpu()
        out = fn()
        best = min(best, _cpu() - t0)
    return best, out


def pcap_slice(src: Path, dst: Path, packets: int) -> int:
    """The first ``packets`` packets of a classic pcap file into ``dst``; returns how many were copied."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        header = f.read(24)
        endian = "<" if header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        out.write(header)
        n = 0
        while n < packets:
            rec = f.read(16)
            if len(rec) < 16:
                break
            incl = struct.unpack(endian + "IIII", rec)[2]
            out.write(rec + f.read(incl))
            n += 1
    return n


def tshark_fields(path: Path) -> int:
    """``tshark -T fields`` over the whole file (output discarded); returns its exit code."""
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields"]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True).returncode


def pyshark_json(path: Path) -> int:
    """pyshark ``FileCapture(use_json=True)``, reading ``ip.src`` of every packet; returns the packets seen."""
    import pyshark

    n = 0
    cap = pyshark.FileCapture(str(path), use_json=True, keep_packets=False)
    try:
        for pkt in cap:
            if "IP" in pkt:
                _ = pkt.ip.src
            n += 1
    finally:
        cap.close()
    return n


def nfstream_flows(path: Path, dissections: int) -> int:
    """nfstream's flow count over the file, one meter process, Zeek-like timeouts (60 s idle, 1800 s active)."""
    from nfstream import NFStreamer

    streamer = NFStreamer(
        source=str(path),
        n_dissections=dissections,
        statistical_analysis=False,
        idle_timeout=60,
        active_timeout=1800,
        n_meters=0,  # auto: one meter on the pinned core (asking for 1 prints a contention warning)
    )
    return sum(1 for _ in streamer)


def _peer(
    label: str, fn: Callable[[], object], repeat: int, packets: int, rows: list[tuple[str, str, str]]
) -> None:
    """Measure a peer; a missing or failing one is reported with the reason instead."""
    try:
        t, out = _best(fn, repeat)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:70]
        rows.append((label, "skipped", reason))
        return
    flows = f"{out:,}" if label.startswith("nfstream") and isinstance(out, int) else ""
    rows.append((label, f"{packets / t:,.0f}", flows))


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
        t_app, _ = _best(lambda: read_flows(path, FlowParams(app_metadata=True)), args.repeat)
        t_naive, naive_count = _best(lambda: naive_flows(path), 1)
        ours_count = len(flows["@timestamp"])  # type: ignore[index]

        peers: list[tuple[str, str, str]] = []
        if shutil.which("tshark"):
            _peer(
                f"tshark -T fields ({len(TSHARK_FIELDS)} fields, packets only)",
                lambda: tshark_fields(path),
                1,
                n,
                peers,
            )
            piece = folder / f"slice-{PYSHARK_SLICE}.pcap"
            k = pcap_slice(path, piece, PYSHARK_SLICE)
            _peer(
                f"pyshark use_json, ip.src ({k // 1000}k-packet slice)",
                lambda: pyshark_json(piece),
                1,
                k,
                peers,
            )
        else:
            peers.append(("tshark / pyshark", "skipped", "tshark not installed (apt-get install tshark)"))
        for label, dissections in (
            ("nfstream, dissection off", 0),
            ("nfstream, dissection on (20 packets)", 20),
        ):
            _peer(label, functools.partial(nfstream_flows, path, dissections), args.repeat, n, peers)

    print(
        f"{n:,} packets, {meta['bytes'] / 1e6:,.0f} MB, one core, CPU time incl. children (best of {args.repeat})"
    )
    print(f"{'':<50} {'packets/s':>12} {'flows':>9}")
    print(f"{'ours: read records':<50} {n / t_read:>12,.0f}")
    print(f"{'ours: read + decode':<50} {n / t_dec:>12,.0f}")
    print(f"{'ours: read + decode + flow table (read_flows)':<50} {n / t_ours:>12,.0f} {ours_count:>9,}")
    print(f"{'ours: read_flows with DNS/TLS/HTTP metadata':<50} {n / t_app:>12,.0f} {ours_count:>9,}")
    print(f"{'naive pure-Python flow table (struct/packet)':<50} {n / t_naive:>12,.0f} {naive_count:>9,}")
    for label, rate, extra in peers:
        if rate == "skipped":
            print(f"{label:<50} {'skipped':>12}  {extra}")
        else:
            print(f"{label:<50} {rate:>12} {extra:>9}")
    print(f"{'generator: distinct bidirectional 5-tuples':<50} {'':>12} {meta['flows']:>9,}")
    print(f"speed-up over the naive table: {t_naive / t_ours:.1f}x")


if __name__ == "__main__":
    main()
