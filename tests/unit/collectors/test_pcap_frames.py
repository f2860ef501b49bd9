"""Builders of synthetic frames and capture files for the pcap collector tests (and checks of the builders).

Only what the tests need: Ethernet and friends, IPv4/IPv6, TCP/UDP/ICMP, and pcap/pcapng writers in
either byte order. Checksums are left zero; the collector does not validate them.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

IPV4, IPV6 = 0x0800, 0x86DD


def mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, i & 0xFF])


def eth(payload: bytes, et: int = IPV4, dst: bytes = mac(1), src: bytes = mac(2)) -> bytes:
    return dst + src + struct.pack("!H", et) + payload


def vlan(payload: bytes, et: int, vid: int = 10) -> bytes:
    """A VLAN tag and what follows it (the header before it carries the tag protocol id, e.g. 0x8100)."""
    return struct.pack("!HH", vid, et) + payload


def mpls(payload: bytes, labels: Sequence[int] = (100,)) -> bytes:
    out = b""
    for i, lab in enumerate(labels):
        bottom = 1 if i == len(labels) - 1 else 0
        out += struct.pack("!I", (lab << 12) | bottom << 8 | 64)
    return out + payload


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    ident: int = 1,
    frag: int = 0x4000,
    options: bytes = b"",
    total: int | None = None,
) -> bytes:
    ihl = 5 + len(options) // 4
    length = 4 * ihl + len(payload) if total is None else total
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        length,
        ident,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + options + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, plen: int | None = None) -> bytes:
    n = len(payload) if plen is None else plen
    return (
        struct.pack("!IHBB", 0x60000000, n, nh, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def ext6(nh: int, body: bytes = b"\0" * 6) -> bytes:
    """A generic IPv6 extension header (hop-by-hop, routing, destination options)."""
    assert (len(body) + 2) % 8 == 0
    return struct.pack("!BB", nh, (len(body) + 2) // 8 - 1) + body


def frag6(nh: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nh, 0, offset | int(more), ident)


def tcp(sport: int, dport: int, flags: int, seq: int = 1000, ack: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(itype: int, code: int = 0, payload: bytes = b"\0" * 4) -> bytes:
    return struct.pack("!BBH", itype, code, 0) + payload


SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def pcap(
    packets: Sequence[tuple[float, bytes]],
    linktype: int = 1,
    endian: str = "<",
    nanos: bool = False,
    modified: bool = False,
    snaplen: int = 262144,
) -> bytes:
    magic = 0xA1B2CD34 if modified else (0xA1B23C4D if nanos else 0xA1B2C3D4)
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, frame in packets:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nanos else 1e6))
        cap = frame[:snaplen]
        out.append(struct.pack(endian + "IIII", sec, frac, len(cap), len(frame)))
        if modified:
            out.append(struct.pack(endian + "IHBB", 0, 0, 0, 0))
        out.append(cap)
    return b"".join(out)


def _block(endian: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def _option(endian: str, code: int, value: bytes) -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def pcapng_section(
    interfaces: Sequence[tuple[int, int]],
    packets: Sequence[tuple[int, float, bytes]],
    endian: str = "<",
    simple: Sequence[bytes] = (),
) -> bytes:
    """One pcapng section: interfaces as (linktype, tsresol), packets as (interface, ts, frame) in EPBs."""
    out = [_block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for linktype, resol in interfaces:
        opts = _option(endian, 9, bytes([resol])) + _option(endian, 0, b"")
        out.append(_block(endian, 1, struct.pack(endian + "HHI", linktype, 0, 0) + opts))
    for iface, ts, frame in packets:
        resol = interfaces[iface][1]
        ticks = round(ts * (2 ** (resol & 0x7F) if resol & 0x80 else 10**resol))
        body = struct.pack(endian + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
        out.append(_block(endian, 6, body + frame))
    for frame in simple:
        out.append(_block(endian, 3, struct.pack(endian + "I", len(frame)) + frame))
    out.append(_block(endian, 5, struct.pack(endian + "I", 0)))  # an interface statistics block, ignored
    return b"".join(out)


def test_builders_roundtrip() -> None:
    frame = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, SYN)))
    assert len(frame) == 14 + 20 + 20
    assert pcap([(1.5, frame)])[:4] == struct.pack("<I", 0xA1B2C3D4)
    assert len(pcapng_section([(1, 6)], [(0, 1.0, frame)])) % 4 == 0
