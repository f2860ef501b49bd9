"""The packet-summary collector around the fast path: files and live capture to the shipper, pyshark's parts.

Tests that need tshark or dumpcap skip with the reason when they are missing (``.ci/run`` installs tshark);
the live capture runs on loopback only, with a capture filter on the ports the test sends to.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from taishi.collectors.capture import (
    InterfaceCollector,
    RingParams,
    ToolMissing,
    dissect_with_wireshark,
    list_interfaces,
    ship_capture_files,
    tool_path,
)
from taishi.collectors.pcap_app import read_app_records
from taishi.collectors.pcap_flows import FlowParams, read_flows
from taishi.collectors.shipper import CollectorSettings, MemoryProducer, Shipper
from taishi.pipeline import contract, wire
from tests.unit.collectors.test_pcap_frames import ACK, PSH, SYN, eth, ipv4, pcap, tcp

TRACES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "pcaps" / "zeek" / "traces"

try:
    import pyshark  # noqa: F401

    _PYSHARK = True
except ImportError:
    _PYSHARK = False

needs_tshark = pytest.mark.skipif(
    not (_PYSHARK and shutil.which("tshark")),
    reason="tshark or pyshark not installed (apt-get install tshark; pip install pyshark)",
)


def _can_capture_on_loopback() -> str | None:
    """None when dumpcap can open ``lo``, else why not."""
    if not shutil.which("dumpcap"):
        return "dumpcap not installed (apt-get install tshark)"
    proc = subprocess.run(["dumpcap", "-i", "lo", "-L"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"dumpcap cannot open lo (capture permission?): {proc.stderr.strip()[-200:]}"
    return None


def _trace(name: str) -> Path:
    path = TRACES / name
    if not path.exists():
        pytest.skip(f"trace {name} not found under {TRACES}")
    return path


def _settings(tmp_path: Path) -> CollectorSettings:
    return CollectorSettings(
        organization_id="bank-a",
        sensor_id="s1",
        hostname="probe-1",
        dataset="packets.flow",
        spool_dir=tmp_path / "spool",
        retry_backoff_s=0.05,
    )


def _records(producer: MemoryProducer) -> list[dict[str, Any]]:
    """Every record the producer was given, decoded from the Arrow messages."""
    out: list[dict[str, Any]] = []
    for topic, _key, value, hdrs in producer.messages:
        assert topic == contract.FLOWS_TOPIC
        decoded = wire.decode(value, hdrs)
        assert decoded.table is not None and not decoded.rejects
        out += decoded.table.to_pylist()
    return out


# ---- finding the tools ------------------------------------------------------------------------------------


def test_a_missing_tshark_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("pyshark")
    monkeypatch.setenv("PATH", str(tmp_path))  # pyshark searches its config.ini, then PATH
    with pytest.raises(ToolMissing, match=r"^tshark not found: apt-get install tshark$"):
        tool_path("tshark")
    with pytest.raises(ToolMissing, match="dumpcap not found"):
        tool_path("dumpcap")


@needs_tshark
def test_interface_listing_includes_loopback() -> None:
    assert "lo" in list_interfaces()


# ---- capture files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [("http/methods.pcap",), ("dns-two-responses.pcap", "tls/tls13-ech.pcap")])
def test_collect_pcap_ships_every_flow_read_flows_finds(
    names: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from taishi.pipeline.cli import build_parser

    paths = [_trace(n) for n in names]
    producer = MemoryProducer()
    argv = ["collect", "pcap", *map(str, paths), "--org", "bank-a", "--sensor", "s1"]
    args = build_parser().parse_args([*argv, "--spool", str(tmp_path / "spool"), "--drain-timeout", "10"])
    assert args.func(args, producer_factory=lambda: producer) == 0
    records = _records(producer)
    expected = [read_flows(p, FlowParams(app_metadata=True)) for p in paths]
    assert len(records) == sum(len(f["@timestamp"]) for f in expected)
    assert {r["organization.id"] for r in records} == {"bank-a"}
    assert {r["event.dataset"] for r in records} == {"packets.flow"}
    for col in ("dns.question.name", "tls.client.server_name", "http.request.method", "url.original"):
        want = sorted(str(v) for f in expected for v in f[col] if v is not None)
        assert sorted(str(r[col]) for r in records if r[col] is not None) == want
    assert '"pending_messages": 0' in capsys.readouterr().out


def test_collect_pcap_counts_an_unreadable_file_and_ships_the_others(tmp_path: Path) -> None:
    good = _trace("dns-two-responses.pcap")
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture file")
    producer = MemoryProducer()
    shipper = Shipper(_settings(tmp_path), lambda: producer)
    try:
        c = ship_capture_files([bad, good, tmp_path / "missing.pcap"], shipper)
        assert shipper.flush(10)
    finally:
        shipper.close()
    assert (c.files, c.bad_files) == (1, 2)
    assert c.flows == len(read_flows(good)["@timestamp"]) == len(_records(producer))
    assert "missing.pcap" in c.last_error


# ---- Wireshark's dissectors for selected packets ------------------------------------------------------------


@needs_tshark
@pytest.mark.parametrize(
    "name",
    ["dns-two-responses.pcap", "dns-txt-multiple.pcap", "ipv6-fragmented-dns.pcap", "dnssec/rrsig.pcap"],
)
def test_wireshark_dissection_finds_the_dns_queries_the_fast_path_finds(name: str) -> None:
    path = _trace(name)
    ws = [r for r in dissect_with_wireshark(path, "dns") if r.kind == "dns"]
    fast = [r for r in read_app_records(path) if r.kind == "dns"]
    assert ws and [r.dns.query for r in ws if r.dns] == [r.dns.query for r in fast if r.dns]
    assert [(r.src, r.sport, r.dst, r.dport) for r in ws] == [(r.src, r.sport, r.dst, r.dport) for r in fast]


@needs_tshark
def test_wireshark_dissection_finds_tls_server_names_and_http_requests() -> None:
    tls = _trace("tls/tls13-ech.pcap")
    assert [r.sni for r in dissect_with_wireshark(tls, "tls.handshake.type == 1")] == [
        r.sni for r in read_app_records(tls) if r.kind == "tls"
    ]
    http = _trace("http/pipelined-requests.pcap")
    ws = [
        (r.http.method, r.http.host, r.http.uri)
        for r in dissect_with_wireshark(http, "http.request")
        if r.http
    ]
    fast = [(r.http.method, r.http.host, r.http.uri) for r in read_app_records(http) if r.http]
    assert ws == fast and len(ws) >= 5


@needs_tshark
def test_a_bad_display_filter_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="display filter 'dns &&& x'"):
        dissect_with_wireshark(_trace("dns-two-responses.pcap"), "dns &&& x")


def _dns_over_tcp_pcap(path: Path) -> None:
    """A DNS query over TCP (the fast path parses DNS over UDP only)."""
    name = b"".join(bytes([len(p)]) + p.encode() for p in ["tcp-only", "example", "org"]) + b"\0"
    query = struct.pack("!HHHHHH", 77, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 16, 1)
    c, s = "10.1.0.5", "10.1.0.53"
    pkts = [
        (1.0, eth(ipv4(c, s, 6, tcp(40000, 53, SYN, seq=99)))),
        (1.01, eth(ipv4(s, c, 6, tcp(53, 40000, SYN | ACK, seq=499, ack=100)))),
        (1.02, eth(ipv4(c, s, 6, tcp(40000, 53, ACK, seq=100, ack=500)))),
        (
            1.03,
            eth(ipv4(c, s, 6, tcp(40000, 53, ACK | PSH, 100, 500, struct.pack("!H", len(query)) + query))),
        ),
    ]
    path.write_bytes(pcap(pkts))


@needs_tshark
def test_wireshark_records_fill_metadata_the_fast_path_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "dns-tcp.pcap"
    _dns_over_tcp_pcap(path)
    assert read_flows(path, FlowParams(app_metadata=True))["dns.question.name"].tolist() == [None]
    producer = MemoryProducer()
    shipper = Shipper(_settings(tmp_path), lambda: producer)
    try:
        c = ship_capture_files([path], shipper, wireshark_filter="dns and tcp")
        assert shipper.flush(10)
    finally:
        shipper.close()
    (rec,) = _records(producer)
    assert c.dissected_records == 1
    assert (rec["dns.question.name"], rec["dns.question.type"], rec["destination.port"]) == (
        "tcp-only.example.org",
        "TXT",
        53,
    )


# ---- live capture ---------------------------------------------------------------------------------------------


def _free_udp_port_range(n: int) -> int:
    """A base port whose next ``n`` UDP ports nobody is bound to on 127.0.0.1 (best effort)."""
    for base in range(47000 + os.getpid() % 1000 * 10, 60000, 10):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range")


def test_live_capture_on_loopback_yields_flows_for_the_packets_sent(tmp_path: Path) -> None:
    why = _can_capture_on_loopback() if _PYSHARK else "pyshark not installed"
    if why:
        pytest.skip(why)
    base = _free_udp_port_range(3)
    producer = MemoryProducer()
    shipper = Shipper(_settings(tmp_path), lambda: producer)
    ring = RingParams(
        ring_size_bytes=200_000,
        ring_files=4,
        rotate_s=1,  # several files, so flows continue across them
        capture_filter=f"udp and dst host 127.0.0.1 and dst portrange {base}-{base + 2}",
    )
    collector = InterfaceCollector(shipper, "lo", tmp_path / "ring", ring, status_interval_s=3600)
    runner = threading.Thread(target=collector.run, name="collector")
    runner.start()
    try:
        assert collector.ring.capturing.wait(20), f"dumpcap did not start: {list(collector.ring.stderr_tail)}"
        time.sleep(0.3)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            for i in range(24):  # 3 flows x 8 datagrams over ~2.4 s, loopback only
                s.sendto(b"taishi-test-%03d" % i, ("127.0.0.1", base + i % 3))
                time.sleep(0.1)
            sport = s.getsockname()[1]
        time.sleep(1.5)
    finally:
        collector.stop()
        runner.join(30)
        collector.close()
        shipper.flush(10)
        shipper.close()
    assert not runner.is_alive()
    c = collector.counters
    assert c.files >= 2 and c.lost_files == c.bad_files == 0 and c.packets == c.captured == 24
    flows = sorted(_records(producer), key=lambda r: r["destination.port"])
    assert [r["destination.port"] for r in flows] == [base, base + 1, base + 2]
    for r in flows:
        assert (r["source.ip"], r["source.port"], r["destination.ip"]) == ("127.0.0.1", sport, "127.0.0.1")
        assert (r["source.packets"], r["destination.packets"], r["network.iana_number"]) == (8, 0, 17)
        assert r["source.bytes"] == 8 * (20 + 8 + 15)  # IP + UDP headers + payload
    assert not list((tmp_path / "ring").glob("ring_*")), "processed ring files are deleted"
    assert {r["observer.name"] for r in flows} == {"s1"}


_NO_PANDAS = """
import contextlib, io, sys
for blocked in ("pandas", "elasticsearch", "sklearn"):
    sys.modules[blocked] = None  # any import of them raises ImportError
from taishi.pipeline.cli import build_parser
import taishi.collectors.capture
assert "pyshark" not in sys.modules, "pyshark is imported only when a command needs it"
parser = build_parser()
for argv in (["collect", "pcap", "--help"], ["collect", "interface", "--help"], ["collect", "interfaces", "--help"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    print(out.getvalue())
args = parser.parse_args(["collect", "interface", "lo", "--org", "bank-a", "--spool", "d", "--ring-files", "4"])
assert args.ring_files == 4 and args.ring_size_mb == 64 and args.dataset == "packets.flow"
"""


def test_packet_commands_need_neither_pandas_nor_pyshark_to_start() -> None:
    import sys

    proc = subprocess.run([sys.executable, "-c", _NO_PANDAS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--ring-size-mb" in proc.stdout and "--wireshark-filter" in proc.stdout
