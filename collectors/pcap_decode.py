"""Vectorised packet decoding: link layers, VLAN/MPLS/PPPoE/FabricPath shims, IPv4/IPv6, transports, tunnels.

Every step works on whole columns: the common path (Ethernet, IPv4, TCP/UDP) is computed densely for all
packets with gathers at per-packet offsets, and rarer layers (VLAN tags, MPLS labels, IPv6 extension
headers, tunnels) on index subsets. Fields are read with :func:`load_le64`, two aligned uint64 gathers
that return 8 bytes at any offset.

The decoding follows what Zeek accepts, so that our flows can be compared with its conn.log: the IP bytes
of a packet are its IP total length; GRE and IP-in-IP are decapsulated and only the inner packets are kept
(Zeek logs the tunnel in tunnel.log, not conn.log); UDP tunnels (VXLAN, Geneve, GTP-U, Teredo) keep the
outer UDP packet and add the inner one; ICMP uses the message type as the originator port and the
counterpart type (or the code, for one-way messages) as the responder port; IP fragments are reassembled
(see ``pcap_frag``) and counted once, at the reassembled length; at most two levels of tunnels are opened
(Zeek's Tunnel::max_depth) and deeper packets are dropped, as are IP packets longer than the packet on the
wire. Unlike Zeek run without ``-C``, packets with bad IPv4 header checksums are kept: a flow meter counts
what crossed the wire, and offloaded checksums are wrong in most local captures.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

import numpy as np

from taishi.collectors.pcap_frag import FragmentReassembler
from taishi.collectors.pcap_reader import PacketBatch, load_le64

# pseudo ether types for "an Ethernet header starts here" and "undecodable"
ETH_FRAME: Final = 0x6558
NOT_IP: Final = -1

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
_VLAN_TYPES: Final = (0x8100, 0x88A8, 0x9100, 0x9200)
_MPLS_TYPES: Final = (0x8847, 0x8848)
_PPPOE_SESSION: Final = 0x8864
_FABRICPATH: Final = 0x8903

LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_PPP: Final = 9
LINKTYPE_RAW_OLD: Final = (12, 14)  # DLT_RAW values some writers put in files instead of 101
LINKTYPE_PPP_HDLC: Final = 50
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

PROTO_ICMP: Final = 1
PROTO_IPIP: Final = 4
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_IPV6: Final = 41
PROTO_GRE: Final = 47
PROTO_ICMPV6: Final = 58

VXLAN_PORT: Final = 4789
GENEVE_PORT: Final = 6081
GTPU_PORT: Final = 2152
TEREDO_PORT: Final = 3544

SUB_BATCH: Final = 16384
MAX_TUNNEL_DEPTH: Final = 2  # Zeek's Tunnel::max_depth; deeper packets are dropped
_MAX_SHIMS: Final = 8
_MAX_EXT_HEADERS: Final = 8
# IPv6 extension headers we step over (fragment, 44, is handled on its own)
_IPV6_EXT: Final = (0, 43, 60, 51, 135, 139, 140, 253, 254)

V4_MAPPED_HI: Final = np.uint64(0)
V4_MAPPED_LO: Final = np.uint64(0xFFFF00000000)


def _counterparts(pairs: dict[int, int]) -> np.ndarray:
    table = np.full(256, -1, dtype=np.int64)
    for a, b in pairs.items():
        table[a], table[b] = b, a
    return table


# Zeek pairs request and reply ICMP types into one connection; other types are one-way and use the code.
ICMP4_COUNTERPART: Final = _counterparts({8: 0, 13: 14, 15: 16, 10: 9, 17: 18})
ICMP6_COUNTERPART: Final = _counterparts({128: 129, 133: 134, 135: 136, 130: 131, 139: 140, 144: 145})


@dataclass(slots=True)
class Packets:
    """Decoded IP packets: one row per packet that Zeek would count in a connection.

    Addresses are 128-bit as two uint64 (IPv4 as IPv4-mapped IPv6). ``payload_off``/``payload_len`` locate
    the captured transport payload in ``data`` (the buffer the packet was decoded from).
    """

    ts: np.ndarray  # int64 epoch microseconds
    src_hi: np.ndarray  # uint64
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    proto: np.ndarray  # int64 IP protocol number
    sport: np.ndarray  # int64 (ICMP: type)
    dport: np.ndarray  # int64 (ICMP: counterpart type or code)
    oneway: np.ndarray  # bool: an ICMP message without a counterpart (Zeek keys those per direction)
    ip_len: np.ndarray  # int64 IP total length
    tcp_flags: np.ndarray  # int64 (0 when not TCP)
    tcp_seq: np.ndarray  # int64 (-1 when not TCP)
    payload_off: np.ndarray  # int64
    payload_len: np.ndarray  # int64
    data: np.ndarray  # uint8 buffer the offsets refer to

    def __len__(self) -> int:
        return int(self.ts.size)

    def take(self, idx: np.ndarray) -> Packets:
        """The rows at ``idx`` (same buffer)."""
        cols = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "data"}
        return Packets(**{k: v[idx] for k, v in cols.items()}, data=self.data)


@dataclass(slots=True)
class DecodeStats:
    """Why packets were not turned into rows, for the caller's counters."""

    packets: int = 0
    not_ip: int = 0
    truncated: int = 0
    fragments: int = 0
    tunnelled: int = 0


# --------------------------------------------------------------------------------------------------------------
# Field reads. ``_be(words, pos)`` returns the 8 bytes at pos as a big-endian uint64, so that the field at
# byte k (0..7) of that window is a shift and a mask away.


def _be(words: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return load_le64(words, pos).byteswap()


def _byte(y: np.ndarray, k: int) -> np.ndarray:
    return ((y >> np.uint64(56 - 8 * k)) & np.uint64(0xFF)).astype(np.int64)


def _be16(y: np.ndarray, k: int) -> np.ndarray:
    return ((y >> np.uint64(48 - 8 * k)) & np.uint64(0xFFFF)).astype(np.int64)


def _be32(y: np.ndarray, k: int) -> np.ndarray:
    return ((y >> np.uint64(32 - 8 * k)) & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _isin(a: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    m = a == values[0]
    for v in values[1:]:
        m |= a == v
    return m


# --------------------------------------------------------------------------------------------------------------
# Link layer and shims


def _link_layer(words: np.ndarray, start: np.ndarray, lt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per packet: offset of the network layer and its ether type (``NOT_IP`` when unknown)."""
    pos = start.copy()
    et = np.full(pos.size, NOT_IP, dtype=np.int64)
    kinds = lt[:1] if (lt == lt[0]).all() else np.unique(lt)
    for kind in kinds.tolist():
        idx = slice(None) if kinds.size == 1 else np.flatnonzero(lt == kind)
        p = pos[idx]
        if kind == LINKTYPE_ETHERNET:
            et[idx] = _be16(_be(words, p + 12), 0)
            pos[idx] = p + 14
        elif kind == LINKTYPE_LINUX_SLL:
            et[idx] = _be16(_be(words, p + 14), 0)
            pos[idx] = p + 16
        elif kind == LINKTYPE_LINUX_SLL2:
            et[idx] = _be16(_be(words, p), 0)
            pos[idx] = p + 20
        elif kind in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *LINKTYPE_RAW_OLD):
            et[idx] = _version_type(_byte(_be(words, p), 0))
        elif kind in (LINKTYPE_NULL, LINKTYPE_LOOP):
            y = _be(words, p)
            fam_be, fam_le = _be32(y, 0), _byte(y, 0)  # NULL is host order, LOOP network order
            fam = np.where(fam_be <= 0xFF, fam_be, fam_le)
            et[idx] = np.where(
                fam == 2, ETHERTYPE_IPV4, np.where(_isin(fam, (24, 28, 30)), ETHERTYPE_IPV6, NOT_IP)
            )
            pos[idx] = p + 4
        elif kind in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
            y = _be(words, p)
            has_ac = _be16(y, 0) == 0xFF03  # address and control bytes present
            proto = np.where(has_ac, _be16(y, 2), _be16(y, 0))
            et[idx] = _ppp_type(proto)
            pos[idx] = p + np.where(has_ac, 4, 2)
    return pos, et


def _version_type(first_byte: np.ndarray) -> np.ndarray:
    v = first_byte >> 4
    return np.where(v == 4, ETHERTYPE_IPV4, np.where(v == 6, ETHERTYPE_IPV6, NOT_IP))


def _ppp_type(proto: np.ndarray) -> np.ndarray:
    return np.where(proto == 0x0021, ETHERTYPE_IPV4, np.where(proto == 0x0057, ETHERTYPE_IPV6, NOT_IP))


def _shims(words: np.ndarray, pos: np.ndarray, end: np.ndarray, et: np.ndarray) -> None:
    """Step over Ethernet headers, VLAN tags, MPLS labels, PPPoE and FabricPath (in place)."""
    for _ in range(_MAX_SHIMS):
        todo = np.flatnonzero(_isin(et, (ETH_FRAME, *_VLAN_TYPES, *_MPLS_TYPES, _PPPOE_SESSION, _FABRICPATH)))
        if todo.size == 0:
            return
        p, t = pos[todo], et[todo]
        y = _be(words, p)
        new_t = np.full(todo.size, NOT_IP, dtype=np.int64)
        new_p = p.copy()
        m = t == ETH_FRAME
        if m.any():
            new_t[m] = _be16(_be(words, p[m] + 12), 0)
            new_p[m] = p[m] + 14
        m = _isin(t, _VLAN_TYPES)
        if m.any():
            new_t[m] = _be16(y[m], 2)
            new_p[m] = p[m] + 4
        m = _isin(t, _MPLS_TYPES)
        if m.any():
            bottom = (_byte(y[m], 2) & 1) == 1
            after = _byte(y[m], 4)  # first byte after this label: the IP version once at the bottom
            new_t[m] = np.where(bottom, _version_type(after), t[m])
            new_p[m] = p[m] + 4
        m = t == _PPPOE_SESSION
        if m.any():
            new_t[m] = _ppp_type(_be16(y[m], 6))
            new_p[m] = p[m] + 8
        m = t == _FABRICPATH
        if m.any():  # FTag/TTL, then the inner destination and source MACs, then the inner ether type
            new_t[m] = _be16(_be(words, p[m] + 14), 0)
            new_p[m] = p[m] + 16
        new_t[new_p > end[todo]] = NOT_IP
        et[todo] = new_t
        pos[todo] = new_p
    et[_isin(et, (ETH_FRAME, *_VLAN_TYPES, *_MPLS_TYPES, _PPPOE_SESSION, _FABRICPATH))] = NOT_IP


# --------------------------------------------------------------------------------------------------------------
# IP and transport


@dataclass(slots=True)
class _Ip:
    """Network-layer fields of the packets that have a usable IP header."""

    row: np.ndarray  # index into the decoded input
    pos: np.ndarray  # IP header offset
    l4: np.ndarray  # transport header offset
    ip_end: np.ndarray  # min(captured end, IP end)
    ip_len: np.ndarray
    proto: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    frag: np.ndarray  # bool: a fragment (MF set or offset > 0)
    frag_off: np.ndarray  # fragment offset in bytes
    frag_mf: np.ndarray  # bool
    frag_id: np.ndarray  # int64
    unfrag_len: np.ndarray  # IPv4: header length; IPv6: bytes before the fragment header
    v6: np.ndarray  # bool


def _ip_layer(
    words: np.ndarray, pos: np.ndarray, end: np.ndarray, wire_end: np.ndarray, et: np.ndarray
) -> _Ip:
    y0 = _be(words, pos)
    version = _byte(y0, 0) >> 4
    v4 = (et == ETHERTYPE_IPV4) & (version == 4) & (pos + 20 <= end)
    v6 = (et == ETHERTYPE_IPV6) & (version == 6) & (pos + 40 <= end)
    # IPv4 fields are computed for every row (the common case, no index gathers); IPv6 rows are
    # computed on their own and written over them.
    ip, ok = _ipv4(words, pos, end, y0)
    ok &= v4
    r6 = np.flatnonzero(v6)
    if r6.size:
        b, ok6 = _ipv6(words, pos[r6], end[r6], y0[r6], r6)
        for f in fields(_Ip):
            getattr(ip, f.name)[r6] = getattr(b, f.name)
        ok[r6] = ok6
    ok &= pos + ip.ip_len <= wire_end
    if ok.all():
        return ip
    keep = np.flatnonzero(ok)
    return _Ip(**{f.name: getattr(ip, f.name)[keep] for f in fields(_Ip)})


def _ipv4(words: np.ndarray, pos: np.ndarray, end: np.ndarray, y0: np.ndarray) -> tuple[_Ip, np.ndarray]:
    ihl = (_byte(y0, 0) & 15) * 4
    total = _be16(y0, 2)
    ff = _be16(y0, 6)
    y1 = _be(words, pos + 8)
    proto = _byte(y1, 1)
    src = _be32(y1, 4).astype(np.uint64) | V4_MAPPED_LO
    dst = _be32(_be(words, pos + 16), 0).astype(np.uint64) | V4_MAPPED_LO
    # TCP segmentation offload leaves the total length 0: take what was captured, as Zeek does
    total = np.where(total == 0, end - pos, total)
    ok = (ihl >= 20) & (total >= ihl) & (pos + ihl <= end)
    frag_off = (ff & 0x1FFF) * 8
    mf = (ff & 0x2000) != 0
    ip = _Ip(
        row=np.arange(pos.size),
        pos=pos,
        l4=pos + ihl,
        ip_end=np.minimum(end, pos + total),
        ip_len=total,
        proto=proto,
        src_hi=np.zeros(pos.size, dtype=np.uint64),
        src_lo=src,
        dst_hi=np.zeros(pos.size, dtype=np.uint64),
        dst_lo=dst,
        frag=mf | (frag_off > 0),
        frag_off=frag_off,
        frag_mf=mf,
        frag_id=_be16(y0, 4),
        unfrag_len=ihl,
        v6=np.zeros(pos.size, dtype=bool),
    )
    return ip, ok


def _ipv6(
    words: np.ndarray, pos: np.ndarray, end: np.ndarray, y0: np.ndarray, rows: np.ndarray
) -> tuple[_Ip, np.ndarray]:
    plen = _be16(y0, 4)
    nh = _byte(y0, 6)
    src_hi, src_lo = _be(words, pos + 8), _be(words, pos + 16)
    dst_hi, dst_lo = _be(words, pos + 24), _be(words, pos + 32)
    total = plen + 40  # Zeek's total length (a jumbogram's zero payload length is not special-cased)
    p = pos + 40
    n = pos.size
    frag = np.zeros(n, dtype=bool)
    frag_off = np.zeros(n, dtype=np.int64)
    frag_mf = np.zeros(n, dtype=bool)
    frag_id = np.zeros(n, dtype=np.int64)
    unfrag = np.full(n, 40, dtype=np.int64)
    done = np.zeros(n, dtype=bool)  # a non-first fragment: what follows is payload, not headers
    for _ in range(_MAX_EXT_HEADERS):
        ext = (~done) & (_isin(nh, _IPV6_EXT) | (nh == 44)) & (p + 8 <= end)
        i = np.flatnonzero(ext)
        if i.size == 0:
            break
        y = _be(words, p[i])
        t = nh[i]
        is_frag = t == 44
        length = np.where(t == 51, (_byte(y, 1) + 2) * 4, (_byte(y, 1) + 1) * 8)
        length = np.where(is_frag, 8, length)
        f = i[is_frag]
        if f.size:
            yf = y[is_frag]
            ofs = _be16(yf, 2)
            off, mf = (ofs >> 3) * 8, (ofs & 1) == 1
            unfrag[f] = p[f] - pos[f]
            frag_off[f], frag_mf[f], frag_id[f] = off, mf, _be32(yf, 4)
            frag[f] = mf | (off > 0)
            done[f] = off > 0
        nh[i] = _byte(y, 0)
        p[i] = p[i] + length
    ok = p <= end
    ip = _Ip(
        row=rows,
        pos=pos,
        l4=p,
        ip_end=np.minimum(end, pos + total),
        ip_len=total,
        proto=nh,
        src_hi=src_hi,
        src_lo=src_lo,
        dst_hi=dst_hi,
        dst_lo=dst_lo,
        frag=frag,
        frag_off=frag_off,
        frag_mf=frag_mf,
        frag_id=frag_id,
        unfrag_len=unfrag,
        v6=np.ones(pos.size, dtype=bool),
    )
    return ip, ok


def _transport(words: np.ndarray, ip: _Ip, ts: np.ndarray) -> tuple[Packets, np.ndarray]:
    """Transport fields; returns the packets and a mask of rows with a complete transport header."""
    l4, ip_end, proto = ip.l4, ip.ip_end, ip.proto
    y = _be(words, l4)
    sport, dport = _be16(y, 0), _be16(y, 2)
    tcp = proto == PROTO_TCP
    udp = proto == PROTO_UDP
    icmp4 = proto == PROTO_ICMP
    icmp6 = proto == PROTO_ICMPV6
    icmp = icmp4 | icmp6
    ports = tcp | udp
    n = l4.size
    # Zeek needs the whole fixed header of the transport it knows; anything else is keyed on addresses only
    need = np.where(tcp, 20, np.where(udp | icmp, 8, 0))
    ok = l4 + need <= ip_end
    flags = np.zeros(n, dtype=np.int64)
    seq = np.full(n, -1, dtype=np.int64)
    hdr = np.where(udp | icmp, 8, 0)
    oneway = np.zeros(n, dtype=bool)
    if tcp.any():
        y2 = _be(words, l4 + 8)
        doff = (_byte(y2, 4) >> 4) * 4
        fl = _byte(y2, 5) | ((_byte(y2, 4) & 1) << 8)
        flags = np.where(tcp, fl, 0)
        seq = np.where(tcp, _be32(y, 4), -1)
        hdr = np.where(tcp, doff, hdr)
        ok &= ~tcp | (doff >= 20)
    if icmp.any():
        itype, code = _byte(y, 0), _byte(y, 1)
        cp = np.where(icmp4, ICMP4_COUNTERPART[itype], ICMP6_COUNTERPART[itype])
        oneway = icmp & (cp < 0)
        sport = np.where(icmp, itype, sport)
        dport = np.where(icmp, np.where(cp < 0, code, cp), dport)
    other = ~(ports | icmp)
    if other.any():
        sport = np.where(other, 0, sport)
        dport = np.where(other, 0, dport)
    payload = l4 + hdr
    pk = Packets(
        ts=ts,
        src_hi=ip.src_hi,
        src_lo=ip.src_lo,
        dst_hi=ip.dst_hi,
        dst_lo=ip.dst_lo,
        proto=proto,
        sport=sport,
        dport=dport,
        oneway=oneway,
        ip_len=ip.ip_len,
        tcp_flags=flags,
        tcp_seq=seq,
        payload_off=payload,
        payload_len=np.maximum(ip_end - payload, 0),
        data=np.empty(0, np.uint8),
    )
    return pk, ok


# --------------------------------------------------------------------------------------------------------------
# Tunnels


@dataclass(slots=True)
class _Inner:
    rows: np.ndarray  # which decoded packet each inner packet came from
    pos: np.ndarray
    end: np.ndarray  # captured end
    wire_end: np.ndarray  # end of the outer IP packet as declared
    et: np.ndarray


def _gre(words: np.ndarray, l4: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inner offset and ether type of GRE payloads (NOT_IP when Zeek would not decapsulate)."""
    y = _be(words, l4)
    fv, ptype = _be16(y, 0), _be16(y, 2)
    ver = fv & 7
    glen = 4 + 4 * (((fv & 0x8000) != 0).astype(np.int64) + ((fv & 0x2000) != 0) + ((fv & 0x1000) != 0))
    glen = glen + 4 * ((fv & 0x0080) != 0)
    p = l4 + glen
    et = np.full(l4.size, NOT_IP, dtype=np.int64)
    v0 = ver == 0
    ip_payload = v0 & _isin(ptype, (ETHERTYPE_IPV4, ETHERTYPE_IPV6, *_MPLS_TYPES))
    et = np.where(ip_payload, ptype, et)
    et = np.where(v0 & (ptype == ETH_FRAME), ETH_FRAME, et)
    erspan2 = v0 & (ptype == 0x88BE)  # type I without, type II with a sequence number and an 8-byte header
    p = np.where(erspan2 & ((fv & 0x1000) != 0), p + 8, p)
    et = np.where(erspan2, ETH_FRAME, et)
    erspan3 = v0 & (ptype == 0x22EB)
    if erspan3.any():
        has_opt = (_byte(_be(words, p + 4), 7) & 1) == 1  # O flag, last byte of the 12-byte header
        p = np.where(erspan3, p + 12 + np.where(has_opt, 8, 0), p)
        et = np.where(erspan3, ETH_FRAME, et)
    pptp = (ver == 1) & (ptype == 0x880B)
    if pptp.any():  # enhanced GRE carries PPP: address, control, then the PPP protocol
        et = np.where(pptp, _ppp_type(_be16(_be(words, p), 2)), et)
        p = np.where(pptp, p + 4, p)
    bad = ((fv & 0x4000) != 0) | ((fv & 0x0078) != 0) | (p > end)
    return p, np.where(bad, NOT_IP, et)


def _udp_tunnels(
    words: np.ndarray, pk: Packets, rows: np.ndarray, end: np.ndarray, declared: np.ndarray
) -> _Inner:
    sport, dport = pk.sport[rows], pk.dport[rows]
    p = pk.payload_off[rows]
    e = end[rows]
    y = _be(words, p)
    et = np.full(rows.size, NOT_IP, dtype=np.int64)
    inner = p.copy()

    def port(k: int) -> np.ndarray:
        return (dport == k) | (sport == k)

    vx = port(VXLAN_PORT) & ((_byte(y, 0) & 0x08) != 0)
    et = np.where(vx, ETH_FRAME, et)
    inner = np.where(vx, p + 8, inner)
    gn = port(GENEVE_PORT) & ((_byte(y, 0) >> 6) == 0)
    if gn.any():
        gtype = _be16(y, 2)
        et = np.where(gn & _isin(gtype, (ETH_FRAME, ETHERTYPE_IPV4, ETHERTYPE_IPV6)), gtype, et)
        inner = np.where(gn, p + 8 + (_byte(y, 0) & 0x3F) * 4, inner)
    gtp = port(GTPU_PORT) & ((_byte(y, 0) >> 5) == 1) & ((_byte(y, 0) & 0x10) != 0) & (_byte(y, 1) == 0xFF)
    if gtp.any():
        opt = (_byte(y, 0) & 0x07) != 0
        q = p + 8 + np.where(opt, 4, 0)
        nxt = np.where((_byte(y, 0) & 0x04) != 0, _byte(_be(words, p + 11), 0), 0)
        for _ in range(4):  # extension headers: length in 4-byte units, next type in their last byte
            more = gtp & (nxt != 0) & (q < e)
            if not more.any():
                break
            ln = _byte(_be(words, q), 0) * 4
            ln = np.where(ln == 0, 4, ln)
            nxt = np.where(more, _byte(_be(words, q + ln - 1), 0), nxt)
            q = np.where(more, q + ln, q)
        et = np.where(gtp, _version_type(_byte(_be(words, q), 0)), et)
        inner = np.where(gtp, q, inner)
    td = port(TEREDO_PORT) & ~vx & ~gn & ~gtp
    if td.any():
        q = p.copy()
        auth = _be16(y, 0) == 0x0001
        if auth.any():
            ya = _be(words, p)
            q = np.where(auth, p + 13 + _byte(ya, 2) + _byte(ya, 3), q)
        origin = _be16(_be(words, q), 0) == 0x0000
        q = np.where(origin, q + 8, q)
        yq = _be(words, q)
        valid = ((_byte(yq, 0) >> 4) == 6) & (q + 40 + _be16(yq, 4) == e)
        et = np.where(td & valid, ETHERTYPE_IPV6, et)
        inner = np.where(td, q, inner)
    keep = np.flatnonzero((et != NOT_IP) & (inner <= e))
    return _Inner(rows=rows[keep], pos=inner[keep], end=e[keep], wire_end=declared[rows][keep], et=et[keep])


# --------------------------------------------------------------------------------------------------------------
# Driver


class Decoder:
    """Decodes packet batches into :class:`Packets`; keeps the IP fragment reassembly state across batches."""

    def __init__(self, keep_ip_tunnel_outer: bool = False, reassembler: FragmentReassembler | None = None):
        self.keep_ip_tunnel_outer = keep_ip_tunnel_outer
        self.frag = reassembler if reassembler is not None else FragmentReassembler()
        self.stats = DecodeStats()

    def decode(self, batch: PacketBatch) -> list[Packets]:
        """Decode one batch; returns packets from its buffer and, if any, reassembled datagrams.

        A window's packets are decoded ``SUB_BATCH`` at a time: each field read gathers from every packet's
        headers, and a smaller set of packets keeps those cache lines hot from one read to the next.
        """
        self.stats.packets += len(batch)
        out: list[Packets] = []
        for i in range(0, len(batch), SUB_BATCH):
            part = slice(i, i + SUB_BATCH)
            start = batch.start[part]
            pos, et = _link_layer(batch.words, start, batch.linktype[part])
            end = start + batch.caplen[part]
            wire_end = start + batch.wirelen[part]
            out += self._from_network(batch.data, batch.words, pos, end, wire_end, et, batch.ts_us[part], 0)
        done = self.frag.completed()
        if done is not None:
            data, words, start, caplen, ts = done
            et2 = _version_type(data.take(start).astype(np.int64))
            end2 = start + caplen
            out += self._from_network(data, words, start, end2, end2, et2, ts, 0, reassembled=True)
        return [p for p in out if len(p)]

    def flush_fragments(self) -> None:
        """Forget fragments still waiting for their missing pieces (end of input)."""
        self.frag.clear()

    def _from_network(
        self,
        data: np.ndarray,
        words: np.ndarray,
        pos: np.ndarray,
        end: np.ndarray,
        wire_end: np.ndarray,
        et: np.ndarray,
        ts: np.ndarray,
        depth: int,
        reassembled: bool = False,
    ) -> list[Packets]:
        """Decode from the network layer on (after the link layer, or inside a tunnel).

        ``end`` is where each packet's captured bytes end, ``wire_end`` where they would end had the whole
        packet been captured: an IP packet longer than that is damaged and dropped, as Zeek drops it.
        """
        _shims(words, pos, end, et)
        ip = _ip_layer(words, pos, end, wire_end, et)
        self.stats.not_ip += int(pos.size - ip.row.size)
        if ip.frag.any():
            f = np.flatnonzero(ip.frag)
            self.stats.fragments += int(f.size)
            if not reassembled:
                self.frag.add(data, ip, f, ts)
            keep = np.flatnonzero(~ip.frag)
            ip = _Ip(**{fl.name: getattr(ip, fl.name)[keep] for fl in fields(_Ip)})
        ts_rows = ts[ip.row]
        pk, ok = _transport(words, ip, ts_rows)
        pk.data = data
        out: list[Packets] = []
        # IP-level tunnels: the outer packet is not a connection for Zeek (tunnel.log instead)
        gre = pk.proto == PROTO_GRE
        ipip = (pk.proto == PROTO_IPIP) | (pk.proto == PROTO_IPV6)
        tunnels = gre | ipip
        udp = (pk.proto == PROTO_UDP) & ok
        may_udp_tunnel = udp & _isin(pk.dport, (VXLAN_PORT, GENEVE_PORT, GTPU_PORT, TEREDO_PORT)) | (
            udp & _isin(pk.sport, (VXLAN_PORT, GENEVE_PORT, GTPU_PORT, TEREDO_PORT))
        )
        if tunnels.any() or may_udp_tunnel.any():
            inner = self._inner(words, pk, ip, gre, ipip, may_udp_tunnel)
            if inner.rows.size and depth < MAX_TUNNEL_DEPTH:
                self.stats.tunnelled += int(inner.rows.size)
                out += self._from_network(
                    data,
                    words,
                    inner.pos,
                    inner.end,
                    inner.wire_end,
                    inner.et,
                    ts_rows[inner.rows],
                    depth + 1,
                    reassembled,
                )
            elif inner.rows.size:  # too deep: Zeek drops the whole packet
                ok[inner.rows] = False
            if not self.keep_ip_tunnel_outer:
                ok &= ~tunnels
        self.stats.truncated += int((~ok).sum())
        rows = pk if ok.all() else pk.take(np.flatnonzero(ok))
        return [rows, *out]

    def _inner(
        self, words: np.ndarray, pk: Packets, ip: _Ip, gre: np.ndarray, ipip: np.ndarray, udp_tun: np.ndarray
    ) -> _Inner:
        parts = []
        declared = ip.pos + ip.ip_len
        r = np.flatnonzero(gre)
        if r.size:
            p, et = _gre(words, ip.l4[r], ip.ip_end[r])
            parts.append(_Inner(rows=r, pos=p, end=ip.ip_end[r], wire_end=declared[r], et=et))
        r = np.flatnonzero(ipip)
        if r.size:
            et = np.where(pk.proto[r] == PROTO_IPIP, ETHERTYPE_IPV4, ETHERTYPE_IPV6)
            parts.append(_Inner(rows=r, pos=ip.l4[r].copy(), end=ip.ip_end[r], wire_end=declared[r], et=et))
        r = np.flatnonzero(udp_tun)
        if r.size:
            parts.append(_udp_tunnels(words, pk, r, ip.ip_end, declared))
        inner = _Inner(
            **{f.name: np.concatenate([getattr(x, f.name) for x in parts]) for f in fields(_Inner)}
        )
        keep = np.flatnonzero(inner.et != NOT_IP)
        return _Inner(**{f.name: getattr(inner, f.name)[keep] for f in fields(_Inner)})
