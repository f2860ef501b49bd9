"""Flows of the pcap collector against Zeek's own conn.log, plus the flow meter's rules on synthetic traffic.

The oracle: real traces from Zeek's test suite with the conn.log Zeek produced for them (see the data
folder's README). Per connection (matched on the 5-tuple, and on the start time where the log has one) the
packets and IP bytes each way must equal Zeek's orig_pkts/orig_ip_bytes/resp_pkts/resp_ip_bytes, and we
must not report connections Zeek did not.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pytest

from taishi.collectors.pcap_flows import FLOW_COLUMNS_OUT, FlowMeter, FlowParams, FlowRun, read_flows
from taishi.pipeline.contract import FLOW_DTYPES
from tests.unit.collectors.test_pcap_frames import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    eth,
    icmp,
    ipv4,
    ipv6,
    pcap,
    tcp,
    udp,
)

ZEEK = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "pcaps" / "zeek"

# Baselines whose counts Zeek did not take from the whole trace, with the reason. Keep this short.
PARTIAL_BASELINES = {
    # The NetControl test installs a packet filter (a shunt) for connections as they start, so Zeek stops
    # seeing their packets: its counts are a prefix of the trace's, and shunted connections are missing.
    "scripts.base.frameworks.netcontrol.packetfilter": "packets dropped by the test's NetControl filter",
}

Key = tuple[str, int, str, int, int]
Counts = tuple[int, int, int, int]


def _conn_baselines() -> list[tuple[str, str]]:
    readme = ZEEK / "README.md"
    if not readme.exists():
        return []
    rows = re.findall(r"^\|\s*(traces/\S+)\s*\|\s*(baselines/\S+/conn\.log)\s*\|", readme.read_text(), re.M)
    return [(t, b) for t, b in rows if (ZEEK / t).exists() and (ZEEK / b).exists()]


def _zeek_log(path: Path) -> list[dict[str, str]]:
    fields: list[str] = []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"), strict=False)))
    return rows


_ZEEK_PROTO = {"tcp": 6, "udp": 17}


def _zeek_key(r: dict[str, str]) -> Key:
    if r.get("ip_proto", "-") != "-":
        proto = int(r["ip_proto"])
    elif r["proto"] == "icmp":  # without ip_proto, tell ICMPv6 by the address family
        proto = 58 if ":" in r["id.orig_h"] else 1
    else:
        proto = _ZEEK_PROTO[r["proto"]]
    return (r["id.orig_h"], int(r["id.orig_p"]), r["id.resp_h"], int(r["id.resp_p"]), proto)


def _ts(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None  # masked in btest baselines


@pytest.mark.skipif(not ZEEK.exists(), reason="Zeek reference traces not present")
@pytest.mark.parametrize(
    ("trace", "baseline"), _conn_baselines(), ids=lambda v: v.split("/")[-2] if "/" in v else v
)
def test_flows_match_zeek_conn_log(trace: str, baseline: str) -> None:
    flows = read_flows(ZEEK / trace)
    ours: dict[Key, list[tuple[float, Counts]]] = collections.defaultdict(list)
    for i in range(flows["@timestamp"].size):
        key = (
            str(flows["source.ip"][i]),
            int(flows["source.port"][i]),
            str(flows["destination.ip"][i]),
            int(flows["destination.port"][i]),
            int(flows["network.iana_number"][i]),
        )
        counts = (
            int(flows["source.packets"][i]),
            int(flows["source.bytes"][i]),
            int(flows["destination.packets"][i]),
            int(flows["destination.bytes"][i]),
        )
        ours[key].append((flows["@timestamp"][i] / 1000, counts))

    zeek: dict[Key, list[tuple[float | None, Counts]]] = collections.defaultdict(list)
    for r in _zeek_log(ZEEK / baseline):
        counts = (int(r["orig_pkts"]), int(r["orig_ip_bytes"]), int(r["resp_pkts"]), int(r["resp_ip_bytes"]))
        zeek[_zeek_key(r)].append((_ts(r["ts"]), counts))

    partial = baseline.split("/")[1] in PARTIAL_BASELINES
    problems = []
    for key, zconns in zeek.items():
        mine = sorted(ours.get(key, []))
        if partial:  # Zeek saw a prefix of each connection: ours must contain it
            if not any(all(o >= z for o, z in zip(c, zc, strict=True)) for _, c in mine for _, zc in zconns):
                problems.append(f"{key}: zeek {zconns} not within ours {mine}")
            continue
        if all(t is not None for t, _ in zconns):  # match each connection by its start time
            for t, zc in zconns:
                near = [c for ot, c in mine if abs(ot - float(t or 0)) < 1.0]
                if zc not in near:
                    problems.append(f"{key} at {t}: zeek {zc}, ours {near}")
        elif sorted(c for _, c in zconns) != sorted(c for _, c in mine):
            problems.append(f"{key}: zeek {sorted(c for _, c in zconns)}, ours {sorted(c for _, c in mine)}")
    if not partial:
        problems += [f"{key}: ours only {ours[key]}" for key in ours if key not in zeek]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------------------
# The meter's rules, on synthetic traffic


def _run(tmp_path: Path, packets: list[tuple[float, bytes]], **params: object) -> dict[str, np.ndarray]:
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap(packets))
    return read_flows(path, FlowParams(**params))  # type: ignore[arg-type]


def _table(f: dict[str, np.ndarray]) -> list[tuple[object, ...]]:
    cols = ("source.ip", "source.port", "destination.ip", "destination.port", "network.iana_number")
    cols += ("source.packets", "source.bytes", "destination.packets", "destination.bytes")
    return sorted(zip(*[f[c].tolist() for c in cols], strict=True))


def _t4(a: str, b: str, sp: int, dp: int, flags: int, seq: int = 1000, payload: bytes = b"") -> bytes:
    return eth(ipv4(a, b, 6, tcp(sp, dp, flags, seq=seq, payload=payload)))


def _u4(a: str, b: str, sp: int, dp: int, payload: bytes = b"") -> bytes:
    return eth(ipv4(a, b, 17, udp(sp, dp, payload)))


A, B = "10.0.0.1", "10.0.0.2"


def test_output_columns_follow_the_contract(tmp_path: Path) -> None:
    f = _run(tmp_path, [(1.0, _t4(A, B, 40000, 80, SYN)), (1.1, _t4(B, A, 80, 40000, SYN | ACK))])
    assert tuple(f) == FLOW_COLUMNS_OUT
    assert set(f) <= set(FLOW_DTYPES)
    expected = {"source.ip": object, "destination.ip": object, "network.iana_number": np.int16}
    expected |= {"source.port": np.int32, "destination.port": np.int32, "taishi.flow.tcp_flags": np.int16}
    for name, col in f.items():
        assert col.dtype == np.dtype(expected.get(name, np.int64)), name
    assert f["@timestamp"].tolist() == [1000] and f["event.end"].tolist() == [1100]
    assert f["taishi.flow.tcp_flags"].tolist() == [SYN | ACK]


def test_originator_is_first_sender_or_zeek_flip(tmp_path: Path) -> None:
    f = _run(
        tmp_path,
        [
            # mid-stream TCP from a likely server port: Zeek makes the client the originator
            (1.0, _t4(B, A, 443, 50000, ACK | PSH, payload=b"x" * 10)),
            (1.1, _t4(A, B, 50000, 443, ACK)),
            # a SYN-ACK first: also flipped
            (2.0, _t4(B, A, 22, 50001, SYN | ACK)),
            # both ports likely servers, no SYN: flipped only towards the larger port... here src < dst
            (3.0, _t4(B, A, 80, 8080, ACK)),
            # UDP reply first from port 53
            (4.0, _u4(B, A, 53, 33333, b"r")),
            # UDP to the broadcast address is never flipped
            (5.0, _u4(B, "255.255.255.255", 67, 68, b"o")),
            # a plain SYN is never flipped
            (6.0, _t4(B, A, 443, 50002, SYN)),
        ],
    )
    rows = _table(f)
    assert (A, 50000, B, 443, 6, 1, 40, 1, 50) in rows
    assert (A, 50001, B, 22, 6, 0, 0, 1, 40) in rows
    assert (A, 8080, B, 80, 6, 0, 0, 1, 40) in rows
    assert (A, 33333, B, 53, 17, 0, 0, 1, 29) in rows
    assert (B, 67, "255.255.255.255", 68, 17, 1, 29, 0, 0) in rows
    assert (B, 443, A, 50002, 6, 1, 40, 0, 0) in rows


def test_icmp_uses_type_and_counterpart_like_zeek(tmp_path: Path) -> None:
    f = _run(
        tmp_path,
        [
            (1.0, eth(ipv4(A, B, 1, icmp(8)))),  # echo request
            (1.1, eth(ipv4(B, A, 1, icmp(0)))),  # its reply: same connection
            (2.0, eth(ipv4(B, A, 1, icmp(3, 3)))),  # port unreachable: one-way, code as responder port
            (2.5, eth(ipv4(A, B, 1, icmp(3, 3)))),  # the same message the other way is its own connection
            (3.0, eth(ipv6("fe80::1", "ff02::1", 58, icmp(136)), et=0x86DD)),  # neighbour advertisement
            (3.1, eth(ipv6("fe80::2", "ff02::16", 58, icmp(143)), et=0x86DD)),  # MLDv2 report: one-way
        ],
    )
    rows = _table(f)
    assert (A, 8, B, 0, 1, 1, 28, 1, 28) in rows
    assert (B, 3, A, 3, 1, 1, 28, 0, 0) in rows
    assert (A, 3, B, 3, 1, 1, 28, 0, 0) in rows
    assert ("fe80::1", 136, "ff02::1", 135, 58, 1, 48, 0, 0) in rows
    assert ("fe80::2", 143, "ff02::16", 0, 58, 1, 48, 0, 0) in rows


def test_tcp_reuse_retransmission_and_close_linger(tmp_path: Path) -> None:
    f = _run(
        tmp_path,
        [
            (1.0, _t4(A, B, 40000, 110, SYN, seq=1)),
            (1.5, _t4(A, B, 40000, 110, SYN, seq=1)),  # retransmitted SYN: same connection
            (1.6, _t4(B, A, 110, 40000, RST | ACK)),
            (2.0, _t4(A, B, 40000, 110, SYN, seq=2)),  # new SYN on the reused tuple: new connection
            (2.1, _t4(B, A, 110, 40000, RST | ACK)),
            (3.0, _t4(B, A, 110, 40000, RST | ACK)),  # within the linger: still the second one
            # long after the reset: a new connection, not flipped (110 is not among Zeek's likely server
            # ports: its POP3 analyzer is found by signature)
            (20.0, _t4(B, A, 110, 40000, ACK)),
        ],
    )
    assert _table(f) == [
        (A, 40000, B, 110, 6, 1, 40, 2, 80),
        (A, 40000, B, 110, 6, 2, 80, 1, 40),
        (B, 110, A, 40000, 6, 1, 40, 0, 0),
    ]


def test_idle_and_active_timeouts(tmp_path: Path) -> None:
    pkts = [(1.0, _u4(A, B, 5000, 6000)), (50.0, _u4(A, B, 5000, 6000)), (200.0, _u4(A, B, 5000, 6000))]
    assert [r[5] for r in _table(_run(tmp_path, pkts))] == [1, 2]  # udp idle 60 s
    assert [r[5] for r in _table(_run(tmp_path, pkts, udp_idle_s=10))] == [1, 1, 1]
    # a flow active for longer than active_s is reported in pieces that keep the originator
    long = [(1.0 + 10 * i, _u4(A, B, 5000, 6000) if i % 2 else _u4(B, A, 6000, 5000)) for i in range(10)]
    rows = _table(_run(tmp_path, long, active_s=30))
    assert len(rows) == 4 and {r[0] for r in rows} == {B}
    assert sum(r[5] + r[7] for r in rows) == 10


def test_open_flows_are_bounded(tmp_path: Path) -> None:
    # a SYN flood from many source ports: each packet is a flow that stays open (no answer)
    flood = [(1.0 + i * 1e-4, _t4(A, B, 1024 + i, 80, SYN, seq=i)) for i in range(3000)]
    path = tmp_path / "flood.pcap"
    path.write_bytes(pcap(flood))
    meter = FlowMeter(FlowParams(max_open_flows=100))
    from taishi.collectors.pcap_decode import Decoder
    from taishi.collectors.pcap_reader import iter_packet_batches

    decoder = Decoder()
    reported = 0
    for batch in iter_packet_batches(path, chunk_bytes=1 << 16):
        out = meter.add(decoder.decode(batch))
        reported += 0 if out is None else out["@timestamp"].size
        assert meter.open_flows <= 100
    reported += meter.flush()["@timestamp"].size  # type: ignore[index]
    assert reported == 3000 and meter.evicted > 0


def _reference(
    pkts: list[tuple[float, str, int, str, int, int, int]], p: FlowParams
) -> list[tuple[object, ...]]:
    """The meter's rules as a plain per-packet state machine (TCP over IPv4 only), for comparison.

    Packets are (ts, src, sport, dst, dport, flags, seq); every packet is 40 IP bytes.
    """
    likely = p.likely_server_ports_tcp
    flows: dict[tuple[object, ...], dict[str, object]] = {}
    out: list[tuple[object, ...]] = []

    def emit(f: dict[str, object]) -> None:
        if f["n"]:
            o, r = f["orig"], f["resp"]
            c = f["count"]
            out.append((*o, *r, 6, c[o], 40 * c[o], c[r], 40 * c[r], f["first"] // 1000, f["last"] // 1000))  # type: ignore[index]

    for ts_s, src, sp, dst, dp, flags, seq in pkts:
        ts = round(ts_s * 1e6)
        me, peer = (src, sp), (dst, dp)
        key = tuple(sorted((me, peer)))
        syn = flags & (SYN | ACK) == SYN
        f = flows.get(key)
        new = f is None
        if f is not None:
            gap = ts - f["last"]  # type: ignore[operator]
            ev = f["ev"]
            closed = "R" in ev or {"FA", "FB"} <= ev  # type: ignore[operator]
            anchor_seq = f["anchor_seq"]
            new = (
                gap > p.tcp_idle_s * 1e6
                or (syn and (anchor_seq < 0 or anchor_seq != seq or closed))  # type: ignore[operator]
                or (not syn and closed and gap > p.tcp_close_s * 1e6)
            )
        if new:
            if f is not None:
                emit(f)
            flip = not syn and sp in likely and (dp not in likely or (not flags & SYN and sp < dp))
            orig, resp = (peer, me) if flip else (me, peer)
            f = {"orig": orig, "resp": resp, "t0": ts, "first": ts, "n": 0, "count": {me: 0, peer: 0}}
            f |= {"anchor_seq": seq if syn else -1, "ev": set()}
            flows[key] = f
        elif syn:  # a retransmitted SYN moves the anchor
            f["anchor_seq"], f["ev"] = seq, set()  # type: ignore[index]
        assert f is not None
        if p.active_s is not None and f["n"]:
            t0 = f["t0"]
            if (ts - t0) // (p.active_s * 1e6) != (f["last"] - t0) // (p.active_s * 1e6):  # type: ignore[operator]
                emit(f)
                f |= {"first": ts, "n": 0, "count": {me: 0, peer: 0}}
        side = "FA" if me == key[0] else "FB"
        if flags & FIN:
            f["ev"].add(side)  # type: ignore[union-attr]
        if flags & RST:
            f["ev"].add("R")  # type: ignore[union-attr]
        f["count"][me] += 1  # type: ignore[index]
        f["n"] += 1  # type: ignore[operator]
        f["last"] = ts
    for f in flows.values():
        emit(f)
    return sorted(out)


@pytest.mark.parametrize(
    ("keys", "mean_gap", "active_s"),
    [(40, 0.5, None), (6, 1.2, None), (6, 1.2, 20.0), (3, 3.0, 45.0)],
)
def test_meter_matches_reference_for_any_batching(
    tmp_path: Path, keys: int, mean_gap: float, active_s: float | None
) -> None:
    rng = np.random.default_rng(keys)
    pkts = []
    t = 1.0
    for _ in range(3000):
        c = int(rng.integers(0, keys))
        a, b = f"10.0.1.{c}", "10.0.2.1"
        sp = 30000 + c % 3
        flags = int(rng.choice([SYN, SYN, ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK]))
        seq = int(rng.integers(0, 2))
        pkts.append(
            (round(t, 6), a, sp, b, 443, flags, seq)
            if rng.random() < 0.5
            else (round(t, 6), b, 443, a, sp, flags, seq)
        )
        t += float(rng.exponential(mean_gap))
    path = tmp_path / "mix.pcap"
    path.write_bytes(pcap([(ts, _t4(s, d, sp, dp, fl, seq=sq)) for ts, s, sp, d, dp, fl, sq in pkts]))
    cols = ("source.ip", "source.port", "destination.ip", "destination.port", "network.iana_number")
    cols += (
        "source.packets",
        "source.bytes",
        "destination.packets",
        "destination.bytes",
        "@timestamp",
        "event.end",
    )
    expected = _reference(pkts, FlowParams(active_s=active_s))
    for chunk in (1 << 30, 1 << 16, 20_000):
        run = FlowRun()
        f = read_flows(path, FlowParams(chunk_bytes=chunk, active_s=active_s), run=run)
        assert sorted(zip(*[f[c].tolist() for c in cols], strict=True)) == expected, chunk
        assert run.packets == 3000


def test_flow_params_are_validated() -> None:
    with pytest.raises(ValueError, match="tcp_idle_s"):
        FlowParams(tcp_idle_s=0)
    with pytest.raises(ValueError, match="max_open_flows"):
        FlowParams(max_open_flows=0)
