"""IP fragment reassembly, so that a fragmented datagram counts as one packet at its reassembled length.

Zeek reassembles IPv4 and IPv6 fragments before connection tracking: a datagram is delivered once it is
contiguous from offset 0 to the end given by the last fragment, with the header of the first fragment that
arrived (IPv6: minus the fragment header) and the total length fixed up; its timestamp is that of the
fragment that completed it. We do the same. Fragments are rare, so this works per fragment in Python,
bounded in memory (pending datagrams expire after ``timeout_us``; at most ``max_pending`` datagrams and
``max_bytes`` of fragment data are kept, the oldest going first).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from taishi.collectors.pcap_decode import _Ip

_PAD: Final = 256
_IPV6_EXT_LEN_AH: Final = 51


@dataclass(slots=True)
class _Datagram:
    header: bytes  # unfragmentable part of the first fragment that arrived
    v6: bool
    next_proto: int
    blocks: list[tuple[int, bytes]] = field(default_factory=list)
    size: int = 0  # payload size, known once the last fragment (MF clear) arrived
    first_ts: int = 0
    held: int = 0  # bytes kept in blocks


class FragmentReassembler:
    """Collects fragments across batches and hands back completed datagrams as raw IP packets."""

    def __init__(
        self, timeout_us: int = 60_000_000, max_pending: int = 65536, max_bytes: int = 64 << 20
    ) -> None:
        self.timeout_us = timeout_us
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self._pending: OrderedDict[tuple[int, ...], _Datagram] = OrderedDict()
        self._bytes = 0
        self._done: list[tuple[bytes, int]] = []
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def clear(self) -> None:
        """Forget every pending datagram (counted as dropped)."""
        self.dropped += len(self._pending)
        self._pending.clear()
        self._bytes = 0

    def add(self, data: np.ndarray, ip: _Ip, idx: np.ndarray, ts: np.ndarray) -> None:
        """Add the fragments at rows ``idx`` of ``ip`` (decoded from ``data``; ``ts`` per input row)."""
        v6 = ip.v6[idx]
        cols = zip(
            ip.pos[idx].tolist(),
            ip.unfrag_len[idx].tolist(),
            ip.ip_len[idx].tolist(),
            ip.ip_end[idx].tolist(),
            ip.frag_off[idx].tolist(),
            ip.frag_mf[idx].tolist(),
            ip.frag_id[idx].tolist(),
            ip.proto[idx].tolist(),
            ip.src_hi[idx].tolist(),
            ip.src_lo[idx].tolist(),
            ip.dst_hi[idx].tolist(),
            ip.dst_lo[idx].tolist(),
            v6.tolist(),
            ts[ip.row[idx]].tolist(),
            strict=True,
        )
        buf = data
        for pos, unfrag, ip_len, ip_end, off, mf, fid, proto, sh, sl, dh, dl, is6, t in cols:
            key = (sh, sl, dh, dl, fid, is6)
            start = pos + unfrag + (8 if is6 else 0)
            declared = pos + ip_len - start
            if declared <= 0:
                continue
            chunk = buf[start : min(ip_end, start + declared)].tobytes()
            if len(chunk) < declared:  # cut by the snap length: keep the size, not the bytes
                chunk += bytes(declared - len(chunk))
            dg = self._pending.get(key)
            if dg is None:
                dg = _Datagram(header=buf[pos : pos + unfrag].tobytes(), v6=is6, next_proto=proto, first_ts=t)
                self._pending[key] = dg
                self._expire(t)
            if off == 0:
                dg.next_proto = proto
            dg.blocks.append((off, chunk))
            dg.held += len(chunk)
            self._bytes += len(chunk)
            if not mf:
                dg.size = max(dg.size, off + declared)
            if dg.size and self._complete(dg):
                self._done.append((self._build(dg), t))
                self._forget(key)
            elif self._bytes > self.max_bytes:
                self._expire(t)

    def _forget(self, key: tuple[int, ...]) -> None:
        self._bytes -= self._pending.pop(key).held

    def _expire(self, now: int) -> None:
        """Drop the oldest datagrams while there are too many, too many bytes, or they waited too long."""
        while self._pending:
            key, dg = next(iter(self._pending.items()))
            within = len(self._pending) <= self.max_pending and self._bytes <= self.max_bytes
            if within and now - dg.first_ts <= self.timeout_us:
                break
            self._forget(key)
            self.dropped += 1

    @staticmethod
    def _complete(dg: _Datagram) -> bool:
        upto = 0
        for off, chunk in sorted(dg.blocks, key=lambda b: b[0]):
            if off > upto:
                return False
            upto = max(upto, off + len(chunk))
        return upto >= dg.size

    @staticmethod
    def _build(dg: _Datagram) -> bytes:
        payload = bytearray(dg.size)
        for off, chunk in dg.blocks:
            n = min(len(chunk), dg.size - off)
            if n > 0:
                payload[off : off + n] = chunk[:n]
        hdr = bytearray(dg.header)
        if not dg.v6:
            struct.pack_into("!HHH", hdr, 2, len(hdr) + dg.size, 0, 0)  # total length, id, flags/offset
            return bytes(hdr) + bytes(payload)
        struct.pack_into("!H", hdr, 4, len(hdr) - 40 + dg.size)
        # point the header before the (removed) fragment header at the fragmented protocol
        at, nh, q = 6, hdr[6], 40
        while q < len(hdr) and q + 2 <= len(hdr):
            at = q
            step = (hdr[q + 1] + 2) * 4 if nh == _IPV6_EXT_LEN_AH else (hdr[q + 1] + 1) * 8
            nh = hdr[q]
            q += step
        hdr[at] = dg.next_proto
        return bytes(hdr) + bytes(payload)

    def completed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Datagrams completed since the last call, as (data, words, start, caplen, ts) for decoding."""
        if not self._done:
            return None
        done, self._done = self._done, []
        starts, total = [], 0
        for pkt, _ in done:
            starts.append(total)
            total += (len(pkt) + 7) & ~7
        words = np.zeros((total + _PAD) // 8, dtype=np.uint64)
        data = words.view(np.uint8)
        for (pkt, _), s in zip(done, starts, strict=True):
            data[s : s + len(pkt)] = np.frombuffer(pkt, dtype=np.uint8)
        return (
            data,
            words,
            np.asarray(starts, dtype=np.int64),
            np.asarray([len(p) for p, _ in done], dtype=np.int64),
            np.asarray([t for _, t in done], dtype=np.int64),
        )
