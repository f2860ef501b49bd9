"""Packet summary collector, fast path: a pcap/pcapng file in, bidirectional flow records out, vectorised.

A flow is what Zeek calls a connection: packets of one 5-tuple in both directions, until it goes idle, a
TCP connection is reused (a new SYN), or it closed and lingered. Per flow we report the originator's and
responder's packets and IP bytes (IP total length, Zeek's ``orig_ip_bytes``/``resp_ip_bytes``), the OR of
the TCP flags, first/last timestamps and the IP protocol, in the ECS columns of the flow contract.

The originator is decided as Zeek decides it: the sender of the first packet, except that a connection
whose first packet is not a plain SYN (or a UDP packet) is flipped when its source port is a "likely server
port" and its destination port is not (``FlowParams.likely_server_ports_*``; Zeek's
``likely_server_ports``), never towards 255.255.255.255. ICMP flows carry the message type as source port
and the counterpart type (or code) as destination port, as Zeek's conn.log does.

How it is fast: packets become rows (one per packet, keyed by the canonical 5-tuple) and open flows from
earlier batches become rows too (one per flow, already aggregated). One sort by (key hash, row number)
groups each key's rows in time order; flow starts are found with array comparisons along the groups (the
TCP rules only look at the few rows that can start a connection); ``np.add.reduceat`` and friends
aggregate each flow. A flow still open at the end of a batch is carried to the next as one row holding the
state the rules need, so the result does not depend on where batches end, and memory is bounded by the
batch plus ``max_open_flows`` (the least recently active are reported early when a flood of one-packet
flows exceeds it). Two keys could only share a flow if their keyed 64-bit hashes collided.

Entry points: :func:`read_flows` (a whole file), :func:`iter_flows` (batches as flows finish) and
:class:`FlowMeter` (feed decoded packets yourself).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import BinaryIO, Final

import numpy as np

from taishi.collectors.pcap_app import APP_COLUMNS, AppExtractor, AppJoin
from taishi.collectors.pcap_decode import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Decoder,
    Packets,
)
from taishi.collectors.pcap_reader import DEFAULT_CHUNK_BYTES, iter_packet_batches

# Zeek's likely_server_ports as set by its base scripts (each protocol analyzer adds its well-known ports).
ZEEK_LIKELY_SERVER_PORTS_TCP: Final = frozenset(
    {21, 2811, 22, 23, 25, 587, 53, 79, 80, 81, 631, 1080, 3128, 8000, 8080, 8888, 88, 135, 139, 445, 143,
     389, 3268, 502, 1883, 1434, 3306, 5432, 3389, 6379, 6666, 6667, 6668, 6669, 443, 563, 585, 614, 636,
     989, 990, 992, 993, 995, 5223, 5222, 5269, 20000}
)  # fmt: skip
ZEEK_LIKELY_SERVER_PORTS_UDP: Final = frozenset(
    {53, 137, 5353, 5355, 67, 123, 161, 162, 514, 1812, 5060, 88, 389, 443, 20000, 4789, 6081, 3544, 5072,
     2152, 2123, 1194, 1195, 1196, 1197}
)  # fmt: skip

_US: Final = 1_000_000

# TCP flag bits
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
# per-flow TCP state bits: FIN seen from side A, from side B, a RST seen
_ST_FIN_A, _ST_FIN_B, _ST_RST = 1, 2, 4

FLOW_COLUMNS_OUT: Final = (
    "@timestamp",
    "event.end",
    "source.ip",
    "source.port",
    "destination.ip",
    "destination.port",
    "network.iana_number",
    "source.bytes",
    "source.packets",
    "destination.bytes",
    "destination.packets",
    "taishi.flow.tcp_flags",
)


@dataclass(frozen=True, slots=True)
class FlowParams:
    """Tunables of the flow meter. The defaults are Zeek's, so that flows compare with its conn.log."""

    tcp_idle_s: float = 300.0  # Zeek tcp_inactivity_timeout
    udp_idle_s: float = 60.0  # udp_inactivity_timeout
    icmp_idle_s: float = 60.0  # icmp_inactivity_timeout
    other_idle_s: float = 60.0  # unknown_ip_inactivity_timeout
    # A TCP connection that closed (FIN both ways, or RST) lingers this long before a packet starts a new
    # one (Zeek tcp_close_delay / tcp_reset_delay).
    tcp_close_s: float = 5.0
    # Report long flows in pieces of at most this length (NetFlow's active timeout; Zeek has none). None
    # disables it.
    active_s: float | None = 1800.0
    # Open flows kept between batches; beyond it the least recently active are reported early.
    max_open_flows: int = 262_144
    likely_server_ports_tcp: frozenset[int] = ZEEK_LIKELY_SERVER_PORTS_TCP
    likely_server_ports_udp: frozenset[int] = ZEEK_LIKELY_SERVER_PORTS_UDP
    # Also report the outer GRE / IP-in-IP packets as flows (Zeek does not: it logs them in tunnel.log).
    ip_tunnel_outer_flows: bool = False
    # Add the first DNS question and response code, TLS server name and HTTP request of each flow
    # (``pcap_app.APP_COLUMNS``). Parsing those payloads costs time: off unless asked for.
    app_metadata: bool = False
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        for name in ("tcp_idle_s", "udp_idle_s", "icmp_idle_s", "other_idle_s", "tcp_close_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FlowParams.{name} must be positive, got {getattr(self, name)!r}")
        if self.active_s is not None and self.active_s <= 0:
            raise ValueError(f"FlowParams.active_s must be positive or None, got {self.active_s!r}")
        if self.max_open_flows < 1:
            raise ValueError(f"FlowParams.max_open_flows must be at least 1, got {self.max_open_flows!r}")


@dataclass(slots=True)
class _Rows:
    """Flow rows: one per packet, or one per already aggregated open flow. Side A < side B (canonical).

    ``seq`` and ``st`` hold the TCP state the break rules need (see ``FlowMeter._breaks``): for a packet,
    its sequence number if it is a plain SYN and its own FIN/RST bits; for a carried flow, the sequence
    number of its last anchor and the FIN/RST bits seen since that anchor.
    """

    a_hi: np.ndarray  # uint64
    a_lo: np.ndarray
    b_hi: np.ndarray
    b_lo: np.ndarray
    ports: np.ndarray  # uint64: port A << 32 | port B << 8 | IP protocol
    h: np.ndarray  # uint64 hash of the key
    ts: np.ndarray  # int64 microseconds: the packet's time; for a flow, its last packet's
    pk: np.ndarray  # int64: packets from A << 32 | packets from B
    by_a: np.ndarray  # int64 IP bytes from A
    by_b: np.ndarray
    flags: np.ndarray  # int64 TCP flags, OR-ed
    orig_a: np.ndarray  # bool: the originator is side A (for a packet: if it started a flow)
    seq: np.ndarray  # int64 SYN sequence number or -1
    st: np.ndarray  # int64 _ST_* bits

    def __len__(self) -> int:
        return int(self.ts.size)

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows(**{f.name: getattr(self, f.name)[idx] for f in fields(_Rows)})

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        return _Rows(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Rows)})


@dataclass(slots=True)
class _Flows:
    """Aggregated flow records: their rows (``rows.ts`` is the last packet's time) and when they began."""

    rows: _Rows
    ts_first: np.ndarray  # int64 microseconds: first packet of this record
    t0: np.ndarray  # int64 microseconds: start of the flow (active-timeout pieces are aligned on it)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray) -> _Flows:
        return _Flows(self.rows.take(idx), self.ts_first[idx], self.t0[idx])

    @staticmethod
    def concat(parts: list[_Flows]) -> _Flows:
        return _Flows(
            _Rows.concat([p.rows for p in parts]),
            np.concatenate([p.ts_first for p in parts]),
            np.concatenate([p.t0 for p in parts]),
        )


_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)
_MIX: Final = np.uint64(0xBF58476D1CE4E5B9)
_U32: Final = np.uint64(32)
_PK_B: Final = (1 << 32) - 1


def _hash(
    a_hi: np.ndarray, a_lo: np.ndarray, b_hi: np.ndarray, b_lo: np.ndarray, ports: np.ndarray, seed: np.uint64
) -> np.ndarray:
    """Keyed 64-bit hash of the canonical key. Two keys share a flow only if their hashes collide."""
    h = (a_lo ^ seed) * _GOLDEN
    for col in (b_lo, ports, a_hi, b_hi):
        h ^= h >> np.uint64(31)
        h ^= col
        h *= _MIX
    h ^= h >> np.uint64(29)
    return h


@dataclass(slots=True)
class _TcpMarks:
    """Where TCP state changes along the sorted rows: anchors and FIN/RST events (sorted row numbers)."""

    static: np.ndarray  # plain SYNs, first rows of a key, rows after an idle gap
    linger: np.ndarray  # rows that start a connection because the previous one had closed
    events: tuple[np.ndarray, np.ndarray, np.ndarray]  # rows with a RST, a FIN from A, a FIN from B

    @staticmethod
    def _last(marks: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The last mark at or before each row, or -1."""
        i = np.searchsorted(marks, rows, side="right") - 1
        return np.where(i >= 0, marks[np.maximum(i, 0)] if marks.size else -1, -1)

    def static_anchor(self, rows: np.ndarray) -> np.ndarray:
        return self._last(self.static, rows)

    def anchor(self, rows: np.ndarray) -> np.ndarray:
        a = self._last(self.static, rows)
        return np.maximum(a, self._last(self.linger, rows)) if self.linger.size else a

    def closed_from(self, rows: np.ndarray) -> np.ndarray:
        """M: the connection closed since row x (up to each row) iff x <= M."""
        r, fa, fb = (self._last(e, rows) for e in self.events)
        return np.maximum(r, np.minimum(fa, fb))

    def state_since(self, anchors: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """_ST_* bits of the events from each anchor up to each row."""
        out = np.zeros(rows.size, dtype=np.uint8)
        for bit, e in zip((_ST_RST, _ST_FIN_A, _ST_FIN_B), self.events, strict=True):
            out |= np.where(self._last(e, rows) >= anchors, bit, 0).astype(np.uint8)
        return out


def _is_closed(st: np.ndarray) -> np.ndarray:
    return ((st & (_ST_FIN_A | _ST_FIN_B)) == (_ST_FIN_A | _ST_FIN_B)) | ((st & _ST_RST) != 0)


class FlowMeter:
    """Builds flows from decoded packets, batch by batch; bounded state between batches."""

    def __init__(self, params: FlowParams | None = None) -> None:
        self.params = p = params if params is not None else FlowParams()
        self._likely_tcp = np.zeros(65536, dtype=bool)
        self._likely_tcp[list(p.likely_server_ports_tcp)] = True
        self._likely_udp = np.zeros(65536, dtype=bool)
        self._likely_udp[list(p.likely_server_ports_udp)] = True
        self._idle = np.full(256, int(p.other_idle_s * _US), dtype=np.int64)
        self._idle[PROTO_TCP] = int(p.tcp_idle_s * _US)
        self._idle[PROTO_UDP] = int(p.udp_idle_s * _US)
        self._idle[PROTO_ICMP] = self._idle[PROTO_ICMPV6] = int(p.icmp_idle_s * _US)
        self._close = int(p.tcp_close_s * _US)
        self._active = int(p.active_s * _US) if p.active_s is not None else None
        self._seed = np.uint64(int.from_bytes(os.urandom(8), "little"))
        self._open: _Flows | None = None
        self._text = AddressText()
        self.now = np.iinfo(np.int64).min
        self.evicted = 0

    @property
    def open_flows(self) -> int:
        """Flows carried to the next batch."""
        return 0 if self._open is None else len(self._open)

    # ---- packets to rows -------------------------------------------------------------------------------

    def _rows(self, pk: Packets) -> _Rows:
        sh, sl, dh, dl = pk.src_hi, pk.src_lo, pk.dst_hi, pk.dst_lo
        sp, dp, proto = pk.sport, pk.dport, pk.proto
        v4_only = not (sh.any() or dh.any())
        swap = (sl > dl) | ((sl == dl) & (sp > dp))
        if not v4_only:
            swap = (sh > dh) | ((sh == dh) & swap)
        if pk.oneway.any():
            swap &= ~pk.oneway  # Zeek keys one-way ICMP messages per direction
        from_a = ~swap
        flags = pk.tcp_flags
        tcp = proto == PROTO_TCP
        pure_syn = tcp & ((flags & (_SYN | _ACK)) == _SYN)
        # Zeek's guess of the true originator when a connection starts with anything but a plain SYN
        spc, dpc = np.minimum(sp, 65535), np.minimum(dp, 65535)
        lt = self._likely_tcp
        lu = self._likely_udp
        flip = tcp & ~pure_syn & lt[spc] & (~lt[dpc] | (((flags & _SYN) == 0) & (sp < dp)))
        flip |= (proto == PROTO_UDP) & lu[spc] & ~lu[dpc]
        flip &= (dl != np.uint64(0xFFFFFFFFFFFF)) | (dh != 0)  # never towards the IPv4 broadcast address
        a_lo = np.where(swap, dl, sl)
        b_lo = np.where(swap, sl, dl)
        if v4_only:
            a_hi = b_hi = sh
        else:
            a_hi = np.where(swap, dh, sh)
            b_hi = np.where(swap, sh, dh)
        ports = (np.where(swap, dp, sp).astype(np.uint64) << _U32) | (
            np.where(swap, sp, dp).astype(np.uint64) << np.uint64(8)
        )
        ports |= proto.astype(np.uint64)
        st = ((flags & _FIN) * (_ST_FIN_B - from_a) | (flags & _RST)).astype(np.uint8)  # FIN A 1, B 2, RST 4
        by_a = np.where(from_a, pk.ip_len, 0)
        return _Rows(
            a_hi=a_hi,
            a_lo=a_lo,
            b_hi=b_hi,
            b_lo=b_lo,
            ports=ports,
            h=_hash(a_hi, a_lo, b_hi, b_lo, ports, self._seed),
            ts=pk.ts,
            pk=np.where(from_a, 1 << 32, 1),
            by_a=by_a,
            by_b=pk.ip_len - by_a,
            flags=flags,
            orig_a=from_a ^ flip,
            seq=np.where(pure_syn, pk.tcp_seq, -1),
            st=st,
        )

    # ---- the meter ----------------------------------------------------------------------------------------

    def add(self, packets: list[Packets]) -> dict[str, np.ndarray] | None:
        """Feed the packets of one batch; returns the flows that finished, or None."""
        parts = [self._rows(p) for p in packets if len(p)]
        if not parts:
            return None
        self.now = max(self.now, *(int(p.ts.max()) for p in parts))
        opened = self._open if self._open is not None and len(self._open) else None
        if opened is not None:
            parts.insert(0, opened.rows)  # open flows first: they are older than any packet
        rows = _Rows.concat(parts) if len(parts) > 1 else parts[0]
        records, last_in_group = self._records(rows, opened)
        return self._close_or_carry(records, last_in_group)

    def flush(self) -> dict[str, np.ndarray] | None:
        """Report every flow still open (end of input)."""
        if self._open is None or not len(self._open):
            return None
        flows, self._open = self._open, None
        flows = flows.take(np.flatnonzero(flows.rows.pk != 0))
        return _columns(flows, self._text) if len(flows) else None

    def _group(self, r: _Rows) -> tuple[np.ndarray, np.ndarray]:
        """Row order that groups each key's rows in arrival order, and where each key's group starts."""
        n = len(r)
        h = r.h
        bits = max(1, int(n - 1).bit_length())
        key = ((h >> np.uint64(bits)) << np.uint64(bits)) | np.arange(n, dtype=np.uint64)
        key.sort()
        order = (key & np.uint64((1 << bits) - 1)).astype(np.int64)
        hs = h[order]
        newgrp = np.empty(n, dtype=bool)
        newgrp[0] = True
        np.not_equal(hs[1:], hs[:-1], out=newgrp[1:])
        # Keys whose hashes agree on the bits kept in the sort key may interleave: sort those exactly.
        same_top = (key[1:] >> np.uint64(bits)) == (key[:-1] >> np.uint64(bits))
        if (same_top & newgrp[1:]).any():
            order = np.lexsort((np.arange(n), h))
            hs = h[order]
            np.not_equal(hs[1:], hs[:-1], out=newgrp[1:])
        return order, newgrp

    def _records(self, r: _Rows, opened: _Flows | None) -> tuple[_Flows, np.ndarray]:
        """Flow records from rows: group by key, find where flows start, cut active-timeout pieces.

        The first ``len(opened)`` rows are the flows carried from earlier batches.
        """
        n = len(r)
        n_open = 0 if opened is None else len(opened)
        order, newgrp = self._group(r)
        ts = r.ts[order]
        proto = (r.ports[order] & np.uint64(0xFF)).astype(np.int64)
        gap = np.empty(n, dtype=np.int64)
        gap[0] = 0
        np.subtract(ts[1:], ts[:-1], out=gap[1:])
        brk = newgrp | (gap > self._idle[proto])
        tcp = bool((proto == PROTO_TCP).any())
        if tcp:
            seq, st = r.seq[order], r.st[order]
            marks, more = self._tcp_breaks(seq, st, order >= n_open, brk, newgrp, gap)
            brk[more] = True
        flow_start = np.flatnonzero(brk)
        first = order[flow_start]
        t0 = ts[flow_start]
        if opened is not None:  # a carried flow keeps its start
            carried = np.flatnonzero(first < n_open)
            t0[carried] = opened.t0[first[carried]]
        orig = r.orig_a[first]
        starts, rec_flow = flow_start, np.arange(flow_start.size)
        if self._active is not None and (np.maximum.reduceat(ts, flow_start) - t0 >= self._active).any():
            flow = np.cumsum(brk) - 1  # pieces of a long flow keep its start and originator
            piece = (ts - t0[flow]) // self._active
            cut = brk.copy()
            np.not_equal(piece[1:], piece[:-1], out=cut[1:])
            cut |= brk
            starts = np.flatnonzero(cut)
            rec_flow = flow[starts]
        ends = np.append(starts[1:], n) - 1
        add = np.add.reduceat
        if tcp:
            # the TCP state at the end of each record, for the next batch
            last_anchor = marks.anchor(ends)
            rec_seq = seq[last_anchor]
            rec_st = marks.state_since(last_anchor, ends)
        else:
            rec_seq = np.full(starts.size, -1, dtype=np.int64)
            rec_st = np.zeros(starts.size, dtype=np.uint8)
        rec_first = order[starts]
        ts_first = np.minimum.reduceat(ts, starts)
        if opened is not None:  # a record that continues a carried flow began when that flow's record did
            carried = np.flatnonzero(rec_first < n_open)
            ts_first[carried] = opened.ts_first[rec_first[carried]]
        rows = _Rows(
            a_hi=r.a_hi[rec_first],
            a_lo=r.a_lo[rec_first],
            b_hi=r.b_hi[rec_first],
            b_lo=r.b_lo[rec_first],
            ports=r.ports[rec_first],
            h=r.h[rec_first],
            ts=np.maximum.reduceat(ts, starts),
            pk=add(r.pk[order], starts),
            by_a=add(r.by_a[order], starts),
            by_b=add(r.by_b[order], starts),
            flags=np.bitwise_or.reduceat(r.flags[order], starts),
            orig_a=orig[rec_flow],
            seq=rec_seq,
            st=rec_st,
        )
        last_in_group = np.append(newgrp[starts[1:]], True)
        return _Flows(rows, ts_first, t0[rec_flow]), last_in_group

    def _tcp_breaks(
        self,
        seq: np.ndarray,
        st: np.ndarray,
        is_packet: np.ndarray,
        brk: np.ndarray,
        newgrp: np.ndarray,
        gap: np.ndarray,
    ) -> tuple[_TcpMarks, np.ndarray]:
        """New TCP connections on a tuple in use: reuse by a new SYN, and packets after a close.

        This is a per-key state machine, evaluated on whole columns. The state is the *anchor*, the row
        where the current connection's TCP state began, and the FINs/RSTs seen since. Anchors are plain
        SYNs, the first row of a key, rows after an idle gap, and rows that start a connection because the
        previous one had closed. A plain SYN starts a new connection unless it repeats the anchor's sequence
        number on a connection that has not closed (a retransmission). Any other packet starts one when the
        connection closed (FIN both ways, or RST) since the anchor and it comes more than ``tcp_close_s``
        after the previous packet (Zeek compares with the originator's initial sequence number and removes
        closed connections after tcp_close_delay / tcp_reset_delay).

        Only SYNs and packets after a pause can start a connection, so the state is looked up for those rows
        alone, by binary search over the few anchor and FIN/RST rows. Closed-since-row-x is a threshold: it
        holds iff x <= M, where M is the later of the last RST and the earlier of the last FIN from each
        side; that turns the anchors that depend on earlier decisions (close-linger starts) into a short
        pointer chase over the candidate rows. Returns the marks and the rows that start a connection.
        """
        has_seq = seq >= 0
        syn = has_seq & is_packet & ~newgrp
        q = np.flatnonzero(syn | (~brk & (gap > self._close)))
        ev = np.flatnonzero(st)
        evs = st[ev]
        marks = _TcpMarks(
            static=np.flatnonzero(has_seq | brk),
            linger=np.zeros(0, dtype=np.int64),
            events=(ev[(evs & _ST_RST) != 0], ev[(evs & _ST_FIN_A) != 0], ev[(evs & _ST_FIN_B) != 0]),
        )
        if q.size == 0:
            return marks, q
        prev = q - 1
        a_q = marks.static_anchor(prev)
        m_q = marks.closed_from(prev)
        closed = m_q >= a_q
        syn_q = syn[q]
        ref = seq[a_q]
        reuse = syn_q & ((ref < 0) | (ref != seq[q]) | closed)
        pick = ~syn_q & closed
        cand, seg, mc = q[pick], a_q[pick], m_q[pick]
        if cand.size:
            # Within a static segment the first candidate starts a connection; from a linger start at row l
            # the next one is the first later candidate whose M reaches l (the connection closed again).
            n = seq.size
            comp = seg * (n + 1) + (mc + 1)
            frontier = np.flatnonzero(np.diff(seg, prepend=-1) != 0)
            taken = np.zeros(cand.size, dtype=bool)
            while frontier.size:
                taken[frontier] = True
                nxt = np.searchsorted(comp, seg[frontier] * (n + 1) + cand[frontier] + 1, side="left")
                nxt = np.maximum(nxt, frontier + 1)
                ok = nxt < cand.size
                nxt, frontier = nxt[ok], frontier[ok]
                frontier = nxt[seg[nxt] == seg[frontier]]
            marks.linger = cand[taken]
        return marks, np.concatenate((q[reuse], marks.linger))

    def _close_or_carry(self, f: _Flows, last_in_group: np.ndarray) -> dict[str, np.ndarray] | None:
        r = f.rows
        proto = (r.ports & np.uint64(0xFF)).astype(np.int64)
        quiet = self.now - r.ts
        done = ~last_in_group | (quiet > self._idle[proto]) | (_is_closed(r.st) & (quiet > self._close))
        carry = np.flatnonzero(~done)
        report = done
        stub = None
        if self._active is not None and carry.size:
            # A piece that can get no more packets is reported now; a packet-less stub keeps the flow's
            # start, originator and TCP state for the next piece.
            piece = (r.ts[carry] - f.t0[carry]) // self._active
            full = carry[self.now - f.t0[carry] >= (piece + 1) * self._active]
            if full.size:
                report = done.copy()
                report[full] = True
                stub = f.take(full)
                for col in (stub.rows.pk, stub.rows.by_a, stub.rows.by_b, stub.rows.flags):
                    col[:] = 0
                stub.ts_first[:] = stub.rows.ts
        kept = f.take(carry) if stub is None else _Flows.concat([f.take(np.flatnonzero(~report)), stub])
        if len(kept) > self.params.max_open_flows:
            # a flood of flows: report the least recently active early
            extra = len(kept) - self.params.max_open_flows
            oldest = np.argpartition(kept.rows.ts, extra - 1)[:extra]
            drop = np.zeros(len(kept), dtype=bool)
            drop[oldest] = True
            evicted = kept.take(np.flatnonzero(drop))
            kept = kept.take(np.flatnonzero(~drop))
            self.evicted += int(extra)
            out = _Flows.concat([f.take(np.flatnonzero(report)), evicted])
        else:
            out = f.take(np.flatnonzero(report))
        self._open = kept
        out = out.take(np.flatnonzero(out.rows.pk != 0))  # stubs that got no packet
        return _columns(out, self._text) if len(out) else None


# --------------------------------------------------------------------------------------------------------------
# Output


class AddressText:
    """Text form of 128-bit addresses (IPv4-mapped ones as dotted quads), remembered across batches."""

    def __init__(self, max_entries: int = 1 << 20) -> None:
        self.max_entries = max_entries
        self._v4: dict[int, str] = {}
        self._v6: dict[tuple[int, int], str] = {}

    def __call__(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        out = np.empty(hi.size, dtype=object)
        v4 = (hi == 0) & ((lo >> _U32) == np.uint64(0xFFFF))
        if len(self._v4) + len(self._v6) > self.max_entries:
            self._v4.clear()
            self._v6.clear()
        cache4 = self._v4
        get4 = cache4.get
        if v4.all():
            i4: np.ndarray | slice = slice(None)
            vals = (lo & _LOW32).tolist()
        else:
            i4 = np.flatnonzero(v4)
            vals = (lo[i4] & _LOW32).tolist()
        text = []
        for v in vals:
            t = get4(v)
            if t is None:
                t = cache4[v] = f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"
            text.append(t)
        out[i4] = text
        if not isinstance(i4, slice):
            i6 = np.flatnonzero(~v4)
            cache6 = self._v6
            text6 = []
            for key in zip(hi[i6].tolist(), lo[i6].tolist(), strict=True):
                t = cache6.get(key)
                if t is None:
                    t = cache6[key] = str(ipaddress.IPv6Address((key[0] << 64) | key[1]))
                text6.append(t)
            out[i6] = text6
        return out


_LOW32: Final = np.uint64(0xFFFFFFFF)


def _columns(flows: _Flows, text: AddressText) -> dict[str, np.ndarray]:
    """Flow records to the contract's columns, oriented originator -> responder."""
    f = flows.rows
    o = f.orig_a
    port_a = (f.ports >> _U32).astype(np.int32)
    port_b = ((f.ports >> np.uint64(8)) & np.uint64(0xFFFFFF)).astype(np.int32)
    proto = (f.ports & np.uint64(0xFF)).astype(np.int16)
    pk_a, pk_b = f.pk >> 32, f.pk & _PK_B
    n = len(f)
    ips = text(np.concatenate((f.a_hi, f.b_hi)), np.concatenate((f.a_lo, f.b_lo)))
    ip_a, ip_b = ips[:n], ips[n:]
    return {
        "@timestamp": flows.ts_first // 1000,
        "event.end": f.ts // 1000,
        "source.ip": np.where(o, ip_a, ip_b),
        "source.port": np.where(o, port_a, port_b),
        "destination.ip": np.where(o, ip_b, ip_a),
        "destination.port": np.where(o, port_b, port_a),
        "network.iana_number": proto,
        "source.bytes": np.where(o, f.by_a, f.by_b),
        "source.packets": np.where(o, pk_a, pk_b),
        "destination.bytes": np.where(o, f.by_b, f.by_a),
        "destination.packets": np.where(o, pk_b, pk_a),
        "taishi.flow.tcp_flags": f.flags.astype(np.int16),
    }


def concat_flows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One column dict from several (an empty, correctly typed one when there are none)."""
    if not parts:
        return empty_flows()
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def empty_flows() -> dict[str, np.ndarray]:
    """Zero flows, with the output dtypes."""
    types = {"source.ip": object, "destination.ip": object, "network.iana_number": np.int16}
    types |= {"source.port": np.int32, "destination.port": np.int32, "taishi.flow.tcp_flags": np.int16}
    return {k: np.zeros(0, dtype=types.get(k, np.int64)) for k in FLOW_COLUMNS_OUT}


@dataclass(slots=True)
class FlowRun:
    """Counters of one run over a capture."""

    packets: int = 0
    decoded: int = 0
    flows: int = 0
    evicted: int = 0
    stats: dict[str, int] = field(default_factory=dict)


def iter_flows(
    source: str | os.PathLike[str] | BinaryIO, params: FlowParams | None = None, run: FlowRun | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Flows of a capture file, in batches as they finish (the last batch at the end of the file)."""
    p = params if params is not None else FlowParams()
    meter = FlowMeter(p)
    decoder = Decoder(keep_ip_tunnel_outer=p.ip_tunnel_outer_flows)
    app = AppExtractor(first_only=True) if p.app_metadata else None
    join = AppJoin(keep_us=int((max(p.tcp_idle_s, p.udp_idle_s, p.other_idle_s) + 60) * _US))
    for batch in iter_packet_batches(source, p.chunk_bytes):
        pk = decoder.decode(batch)
        if run is not None:
            run.decoded += sum(len(x) for x in pk)
        if app is not None:
            join.add([r for x in pk for r in app.add(x)])
        out = meter.add(pk)
        if out is not None:
            if app is not None:
                out |= join.columns(out)
            if run is not None:
                run.flows += len(out["@timestamp"])
            yield out
    decoder.flush_fragments()
    out = meter.flush()
    if out is not None and app is not None:
        out |= join.columns(out)
    if run is not None:
        run.packets = decoder.stats.packets
        run.evicted = meter.evicted
        run.stats = {f.name: getattr(decoder.stats, f.name) for f in fields(decoder.stats)}
        if out is not None:
            run.flows += len(out["@timestamp"])
    if out is not None:
        yield out


def read_flows(
    source: str | os.PathLike[str] | BinaryIO, params: FlowParams | None = None, run: FlowRun | None = None
) -> dict[str, np.ndarray]:
    """All flows of a pcap or pcapng file as ECS-named columns (see ``FLOW_COLUMNS_OUT``)."""
    flows = concat_flows(list(iter_flows(source, params, run)))
    if params is not None and params.app_metadata and "dns.question.name" not in flows:
        flows |= {c: np.zeros(0, dtype=object) for c in APP_COLUMNS}
    return flows
