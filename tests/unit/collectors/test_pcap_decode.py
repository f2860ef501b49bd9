"""Decoding of link layers, shims, IPv6 extension headers, fragments and tunnels, checked through the flows.

Each case builds the frames byte by byte (see ``test_pcap_frames``) and states the flows it expects: IP
bytes are the IP total length of the innermost packet, as Zeek counts them.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest

from taishi.collectors.pcap_decode import ICMP4_COUNTERPART, ICMP6_COUNTERPART, Decoder
from taishi.collectors.pcap_flows import FlowParams, read_flows
from taishi.collectors.pcap_frag import FragmentReassembler
from taishi.collectors.pcap_reader import iter_packet_batches
from tests.unit.collectors.test_pcap_frames import (
    ACK,
    IPV4,
    IPV6,
    SYN,
    eth,
    ext6,
    frag6,
    icmp,
    ipv4,
    ipv6,
    mpls,
    pcap,
    pcapng_section,
    tcp,
    udp,
    vlan,
)

A4, B4 = "192.0.2.1", "198.51.100.7"
A6, B6 = "2001:db8::1", "2001:db8:0:1::2"
SEG = tcp(51000, 80, SYN, payload=b"")  # 20 bytes
TCP4 = ipv4(A4, B4, 6, SEG)  # 40 IP bytes
TCP6 = ipv6(A6, B6, 6, SEG)  # 60 IP bytes
FLOW4 = (A4, 51000, B4, 80, 6, 1, 40, 0, 0)
FLOW6 = (A6, 51000, B6, 80, 6, 1, 60, 0, 0)

Row = tuple[object, ...]


def flows_of(tmp_path: Path, frames: list[bytes], linktype: int = 1, **params: object) -> list[Row]:
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap([(1.0 + i * 0.01, f) for i, f in enumerate(frames)], linktype=linktype))
    f = read_flows(path, FlowParams(**params))  # type: ignore[arg-type]
    cols = ("source.ip", "source.port", "destination.ip", "destination.port", "network.iana_number")
    cols += ("source.packets", "source.bytes", "destination.packets", "destination.bytes")
    return sorted(zip(*[f[c].tolist() for c in cols], strict=True))


# ---- link layers and shims ----------------------------------------------------------------------------------


def _sll(payload: bytes, proto: int) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, proto) + payload


def _sll2(payload: bytes, proto: int) -> bytes:
    return struct.pack("!HHIHBB8s", proto, 0, 2, 1, 0, 6, b"\x02" * 8) + payload


def _fabricpath(inner_frame: bytes) -> bytes:
    return b"\x01" * 6 + b"\x02" * 6 + b"\x89\x03\x00\x00" + inner_frame


@pytest.mark.parametrize(
    ("linktype", "frame", "expected"),
    [
        pytest.param(1, eth(TCP4), FLOW4, id="ethernet"),
        pytest.param(1, eth(TCP6, et=IPV6), FLOW6, id="ethernet-ipv6"),
        pytest.param(1, eth(vlan(TCP4, IPV4), et=0x8100), FLOW4, id="vlan"),
        pytest.param(1, eth(vlan(vlan(TCP4, IPV4), 0x8100), et=0x88A8), FLOW4, id="q-in-q"),
        pytest.param(1, eth(vlan(TCP6, IPV6), et=0x9100), FLOW6, id="vlan-9100"),
        pytest.param(1, eth(mpls(TCP4, (16, 17, 18)), et=0x8847), FLOW4, id="mpls-stack"),
        pytest.param(1, eth(vlan(mpls(TCP6), 0x8847), et=0x8100), FLOW6, id="mpls-in-vlan-ipv6"),
        pytest.param(
            1,
            eth(struct.pack("!BBHHH", 0x11, 0, 7, len(TCP4) + 2, 0x21) + TCP4, et=0x8864),
            FLOW4,
            id="pppoe",
        ),
        pytest.param(
            1,
            eth(struct.pack("!BBHHH", 0x11, 0, 7, len(TCP6) + 2, 0x57) + TCP6, et=0x8864),
            FLOW6,
            id="pppoe-ipv6",
        ),
        pytest.param(1, _fabricpath(eth(TCP4)), FLOW4, id="fabricpath"),
        pytest.param(113, _sll(TCP4, IPV4), FLOW4, id="linux-sll"),
        pytest.param(276, _sll2(TCP6, IPV6), FLOW6, id="linux-sll2"),
        pytest.param(101, TCP4, FLOW4, id="raw"),
        pytest.param(101, TCP6, FLOW6, id="raw-ipv6"),
        pytest.param(228, TCP4, FLOW4, id="ipv4"),
        pytest.param(229, TCP6, FLOW6, id="ipv6"),
        pytest.param(12, TCP4, FLOW4, id="dlt-raw"),
        pytest.param(0, struct.pack("<I", 2) + TCP4, FLOW4, id="null-little-endian"),
        pytest.param(0, struct.pack(">I", 30) + TCP6, FLOW6, id="null-big-endian-ipv6"),
        pytest.param(108, struct.pack(">I", 24) + TCP6, FLOW6, id="loop"),
        pytest.param(9, b"\xff\x03\x00\x21" + TCP4, FLOW4, id="ppp"),
        pytest.param(9, b"\x00\x57" + TCP6, FLOW6, id="ppp-no-address-control"),
    ],
)
def test_link_layers_and_shims(tmp_path: Path, linktype: int, frame: bytes, expected: Row) -> None:
    assert flows_of(tmp_path, [frame], linktype=linktype) == [expected]


def test_non_ip_and_truncated_frames_make_no_flow(tmp_path: Path) -> None:
    arp = eth(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20, et=0x0806)
    llc = eth(b"\xaa\xaa\x03" + b"\0" * 40, et=46)  # an 802.3 length field, not an ether type
    short_ip = eth(TCP4[:19])  # 19 bytes of an IPv4 header
    short_tcp = eth(TCP4[:35])  # 15 bytes of a TCP header: Zeek needs all 20
    mpls_unknown = eth(mpls(b"\x00\x00" + TCP4), et=0x8847)  # a pseudowire control word, not IP
    # an IP header claiming more bytes than the packet had on the wire (not a snap-length cut): Zeek's
    # truncated_IP, dropped
    overlong = eth(ipv4(A4, B4, 6, SEG, total=1000))
    assert flows_of(tmp_path, [arp, llc, short_ip, short_tcp, mpls_unknown, overlong]) == []


def test_ip_bytes_come_from_the_ip_header_not_the_capture(tmp_path: Path) -> None:
    big = eth(ipv4(A4, B4, 6, tcp(51000, 80, ACK, payload=b"x" * 1400)))
    path = tmp_path / "snap.pcap"
    path.write_bytes(pcap([(1.0, big)], snaplen=68))  # the payload is cut off by the snap length
    f = read_flows(path)
    assert f["source.bytes"].tolist() == [1440]
    # TCP segmentation offload writes a zero total length: the captured length stands in (as in Zeek)
    tso = eth(ipv4(A4, B4, 6, tcp(51000, 80, ACK, payload=b"y" * 3000), total=0))
    assert flows_of(tmp_path, [tso])[0][6] == 3040
    # an IPv6 header with a zero payload length counts 40 bytes, as Zeek's TotalLen does
    assert flows_of(tmp_path, [eth(ipv6(A6, B6, 99, b"\0" * 6, plen=0), et=IPV6)])[0][6] == 40


def test_ipv6_extension_headers(tmp_path: Path) -> None:
    chain = ext6(43, b"\0" * 6) + ext6(60, b"\0" * 14) + ext6(6, b"\0" * 6) + SEG  # hop-by-hop, routing, dst
    frame = eth(ipv6(A6, B6, 0, chain), et=IPV6)
    assert flows_of(tmp_path, [frame]) == [(A6, 51000, B6, 80, 6, 1, 40 + len(chain), 0, 0)]
    # an atomic fragment (offset 0, no more fragments) is not a fragment
    atomic = eth(ipv6(A6, B6, 44, frag6(6, 0, False, 9) + SEG), et=IPV6)
    assert flows_of(tmp_path, [atomic]) == [(A6, 51000, B6, 80, 6, 1, 68, 0, 0)]


def test_icmp_counterpart_tables_follow_zeek() -> None:
    assert ICMP4_COUNTERPART[8] == 0 and ICMP4_COUNTERPART[13] == 14 and ICMP4_COUNTERPART[3] == -1
    assert ICMP6_COUNTERPART[128] == 129 and ICMP6_COUNTERPART[134] == 133 and ICMP6_COUNTERPART[1] == -1


# ---- fragments ----------------------------------------------------------------------------------------------


def _fragments4(payload: bytes, ident: int, cuts: list[int]) -> list[bytes]:
    """IPv4 fragments of a UDP datagram (``cuts`` are payload offsets, multiples of 8)."""
    out = []
    edges = [0, *cuts, len(payload)]
    for lo, hi in itertools.pairwise(edges):
        more = 0x2000 if hi < len(payload) else 0
        out.append(eth(ipv4(A4, B4, 17, payload[lo:hi], ident=ident, frag=more | lo // 8)))
    return out


def test_ipv4_fragments_count_once_at_the_reassembled_length(tmp_path: Path) -> None:
    dgram = udp(5353, 53, b"q" * 3000)
    frags = _fragments4(dgram, 77, [1480, 2960])
    lost = _fragments4(udp(5353, 53, b"z" * 2000), 78, [1480])[1:]  # the first piece never arrives
    rows = flows_of(tmp_path, [frags[2], frags[0], *lost, frags[1]])
    assert rows == [(A4, 5353, B4, 53, 17, 1, 20 + len(dgram), 0, 0)]


def test_ipv6_fragments_reassemble_across_batches(tmp_path: Path) -> None:
    dgram = udp(40000, 53, b"r" * 2500)
    pieces = [(0, dgram[:1232], True), (1232, dgram[1232:], False)]
    frames = [
        eth(ipv6(A6, B6, 0, ext6(44, b"\0" * 6) + frag6(17, off, more, 5) + chunk), et=IPV6)
        for off, chunk, more in pieces
    ]
    # padding frames push the two fragments into different batches
    pad = [eth(ipv4("10.9.9.9", "10.9.9.8", 17, udp(1, 2, b"p" * 1000)))] * 80
    path = tmp_path / "frag6.pcap"
    path.write_bytes(pcap([(1.0 + i * 1e-3, f) for i, f in enumerate([frames[0], *pad, frames[1]])]))
    f = read_flows(path, FlowParams(chunk_bytes=1 << 16))
    i = f["source.ip"].tolist().index(A6)
    # the reassembled packet keeps the hop-by-hop header and drops the fragment header
    assert int(f["source.packets"][i]) == 1 and int(f["source.bytes"][i]) == 40 + 8 + len(dgram)
    assert int(f["destination.port"][i]) == 53


# ---- tunnels ------------------------------------------------------------------------------------------------


def _gre(payload: bytes, ptype: int, flags: int = 0, extra: bytes = b"") -> bytes:
    return struct.pack("!HH", flags, ptype) + extra + payload


OUT_A, OUT_B = "203.0.113.1", "203.0.113.2"


def _outer4(proto: int, inner: bytes) -> bytes:
    return eth(ipv4(OUT_A, OUT_B, proto, inner))


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(_outer4(47, _gre(TCP4, IPV4)), id="gre"),
        pytest.param(_outer4(47, _gre(TCP4, IPV4, 0xB000, b"\0" * 12)), id="gre-checksum-key-seq"),
        pytest.param(_outer4(47, _gre(eth(TCP4), 0x6558)), id="gre-ethernet"),
        pytest.param(_outer4(47, _gre(eth(TCP4), 0x88BE)), id="erspan-1"),
        pytest.param(_outer4(47, _gre(b"\0" * 8 + eth(TCP4), 0x88BE, 0x1000, b"\0" * 4)), id="erspan-2"),
        pytest.param(_outer4(47, _gre(b"\0" * 12 + eth(TCP4), 0x22EB)), id="erspan-3"),
        pytest.param(
            _outer4(47, _gre(b"\0" * 11 + b"\x01" + b"\0" * 8 + eth(TCP4), 0x22EB)), id="erspan-3-opt"
        ),
        pytest.param(_outer4(47, _gre(b"\xff\x03\x00\x21" + TCP4, 0x880B, 0x3081, b"\0" * 12)), id="pptp"),
        pytest.param(_outer4(4, TCP4), id="ip-in-ip"),
        pytest.param(eth(ipv6("2001:db8:ff::1", "2001:db8:ff::2", 4, TCP4), et=IPV6), id="4in6"),
    ],
)
def test_ip_tunnels_report_the_inner_flow_only(tmp_path: Path, frame: bytes) -> None:
    assert flows_of(tmp_path, [frame]) == [FLOW4]


def test_ip_tunnel_outer_flow_on_request(tmp_path: Path) -> None:
    frame = _outer4(47, _gre(TCP4, IPV4))
    rows = flows_of(tmp_path, [frame], ip_tunnel_outer_flows=True)
    assert rows == [FLOW4, (OUT_A, 0, OUT_B, 0, 47, 1, 20 + 4 + 40, 0, 0)]


def test_6in4_and_gre_routing(tmp_path: Path) -> None:
    assert flows_of(tmp_path, [_outer4(41, TCP6)]) == [FLOW6]
    # GRE with the (deprecated) routing bit is not decapsulated, and its outer packet is not a flow
    assert flows_of(tmp_path, [_outer4(47, _gre(TCP4, IPV4, 0x4000, b"\0" * 4))]) == []


def _udp_outer(dport: int, payload: bytes, sport: int = 40000) -> bytes:
    return _outer4(17, udp(sport, dport, payload))


@pytest.mark.parametrize(
    ("frame", "outer_port"),
    [
        pytest.param(_udp_outer(4789, b"\x08\0\0\0\0\0\x01\0" + eth(TCP4)), 4789, id="vxlan"),
        pytest.param(
            _udp_outer(6081, b"\x02\0\x65\x58" + b"\0" * 4 + b"\0" * 8 + eth(TCP4)), 6081, id="geneve"
        ),
        pytest.param(_udp_outer(6081, b"\x00\0\x86\xdd\0\0\0\0" + TCP6), 6081, id="geneve-ipv6"),
        pytest.param(
            _udp_outer(2152, b"\x30\xff" + struct.pack("!H", 40) + b"\0" * 4 + TCP4), 2152, id="gtp-u"
        ),
        pytest.param(
            _udp_outer(2152, b"\x32\xff" + struct.pack("!H", 44) + b"\0" * 8 + TCP6), 2152, id="gtp-u-seq"
        ),
        pytest.param(_udp_outer(3544, b"\x00\x00" + b"\0" * 6 + TCP6), 3544, id="teredo-origin"),
        pytest.param(_udp_outer(3544, TCP6, sport=3544), 3544, id="teredo"),
    ],
)
def test_udp_tunnels_report_outer_and_inner(tmp_path: Path, frame: bytes, outer_port: int) -> None:
    rows = flows_of(tmp_path, [frame])
    inner = FLOW6 if rows and rows[0][0] == A6 else FLOW4
    assert inner in rows
    outer = [r for r in rows if r[0] == OUT_A]
    assert len(outer) == 1 and outer[0][3] == outer_port and outer[0][5] == 1
    assert len(rows) == 2


def test_nested_tunnels_stop_at_the_depth_limit(tmp_path: Path) -> None:
    # Zeek's Tunnel::max_depth is 2: a third level is dropped with everything around it
    frame = TCP4
    for _ in range(3):
        frame = ipv4(OUT_A, OUT_B, 4, frame)
    assert flows_of(tmp_path, [eth(frame)]) == []
    vxlan_in_gre = _outer4(
        47, _gre(ipv4("10.1.1.1", "10.1.1.2", 17, udp(1, 4789, b"\x08" + b"\0" * 7 + eth(TCP4))), IPV4)
    )
    rows = flows_of(tmp_path, [vxlan_in_gre])
    assert FLOW4 in rows and ("10.1.1.1", 1, "10.1.1.2", 4789, 17, 1, 20 + 8 + 8 + 14 + 40, 0, 0) in rows


def test_pcapng_interfaces_with_different_link_types(tmp_path: Path) -> None:
    section = pcapng_section(
        [(1, 6), (101, 9), (113, 0x80 | 20)],
        [(0, 1.0, eth(TCP4)), (1, 2.0, TCP6), (2, 3.0, _sll(ipv4(A4, B4, 1, icmp(8)), IPV4))],
    )
    path = tmp_path / "multi.pcapng"
    path.write_bytes(section)
    decoder = Decoder()
    batches = list(iter_packet_batches(path))
    assert [b.linktype.tolist() for b in batches] == [[1, 101, 113]]
    ts = batches[0].ts_us.tolist()
    assert ts[0] == 1_000_000 and ts[1] == 2_000_000 and abs(ts[2] - 3_000_000) <= 1
    pk = decoder.decode(batches[0])
    assert sum(len(p) for p in pk) == 3
    assert sorted(read_flows(path)["network.iana_number"].tolist()) == [1, 6, 6]


def test_fragment_memory_is_bounded(tmp_path: Path) -> None:
    # first fragments whose other pieces never come: the reassembler keeps only the newest
    frames = [eth(ipv4(A4, B4, 17, udp(1, 2, b"f" * 1472), ident=i, frag=0x2000)) for i in range(300)]
    path = tmp_path / "frags.pcap"
    path.write_bytes(pcap([(1.0 + i * 1e-3, f) for i, f in enumerate(frames)]))
    frag = FragmentReassembler(max_pending=50, max_bytes=40 * 1480)
    decoder = Decoder(reassembler=frag)
    for batch in iter_packet_batches(path):
        assert sum(len(p) for p in decoder.decode(batch)) == 0
    assert len(frag) == 40 and frag.dropped == 260
