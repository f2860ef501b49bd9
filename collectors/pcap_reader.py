"""Read pcap and pcapng files into columnar packet batches without a Python object per packet.

A capture file is a chain of variable-length records: where record *i + 1* starts depends on the length
field of record *i*, so finding the records looks inherently sequential. We walk it in parallel instead: the
window is cut into segments, a plausible record start is searched near each segment boundary (vectorised
over a strided view of the bytes), and all segment chains advance together, one numpy step per record.
A segment's chain is only trusted when the chain before it lands exactly on its start, so a false start
(a payload that happens to look like a record header) costs a sequential re-walk of one segment, never a
wrong record. Files are memory-mapped; nothing is copied except the last window, which gets zero padding
so that vectorised field reads past a packet's end stay inside the buffer.

Formats: classic pcap (microsecond and nanosecond magic, either byte order, and the 24-byte-record
"modified" variant) and pcapng (several sections and interfaces, each interface with its own link type,
timestamp resolution and offset; EPB, SPB and the obsolete PB carry packets).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Final

import numpy as np

# Bytes readable past the end of the last packet of a batch (zero in the padded tail window).
PAD: Final = 4096
DEFAULT_CHUNK_BYTES: Final = 64 << 20

# Below this many bytes a plain loop over the records is cheaper than setting up the parallel walk.
_SEQUENTIAL_BELOW: Final = 256 << 10
_TAIL_BYTES: Final = 1 << 20
_SEGMENT_BYTES: Final = 96 << 10
_SEARCH_WINDOW: Final = 1536  # an Ethernet frame's record fits; segments that find no start search wider
_WIDE_SEARCH_WINDOW: Final = 1 << 17
_VERIFY_HOPS: Final = 3
_CHECK_EVERY: Final = 8  # steps between checks whether every chain reached its target

PCAP_MAGIC_US: Final = 0xA1B2C3D4
PCAP_MAGIC_NS: Final = 0xA1B23C4D
PCAP_MAGIC_MODIFIED: Final = 0xA1B2CD34
PCAPNG_SHB: Final = 0x0A0D0D0A
PCAPNG_BOM: Final = 0x1A2B3C4D

_PCAPNG_IDB: Final = 1
_PCAPNG_PB: Final = 2
_PCAPNG_SPB: Final = 3
_PCAPNG_EPB: Final = 6
_PCAPNG_KNOWN_TYPES: Final = (1, 2, 3, 4, 5, 6, 7, 9, 10)

# The largest record we accept; anything longer is a corrupt length field, not a packet.
_MAX_RECORD: Final = (16 << 20) - 1  # record lengths fit in three bytes, which the walk reads


class CaptureFormatError(ValueError):
    """The input is not a readable pcap/pcapng file; the message names the file, offset and field."""


@dataclass(slots=True)
class PacketBatch:
    """Packets of one window of a capture file, as columns over one byte buffer.

    ``data`` is a uint8 view of the window and ``words`` the same bytes as little-endian uint64 (``data``
    starts 8-byte aligned), so any field can be read with a gather; at least ``PAD`` bytes are readable
    after every packet. ``start``/``caplen`` locate each packet's captured bytes inside ``data``.
    """

    data: np.ndarray
    words: np.ndarray
    start: np.ndarray  # int64
    caplen: np.ndarray  # int64
    ts_us: np.ndarray  # int64, epoch microseconds
    linktype: np.ndarray  # int32
    wirelen: np.ndarray  # int64, the packet's length on the wire (>= caplen)
    file_offset: int = 0  # file offset of data[0], for error messages

    def __len__(self) -> int:
        return int(self.start.size)


@dataclass(slots=True)
class _Interface:
    linktype: int
    ts_div: int = 1  # ticks -> microseconds: us = ticks * ts_mul // ts_div, or a binary shift
    ts_mul: int = 1
    ts_shift: int = -1  # >= 0 when the resolution is 2**-n seconds
    ts_offset_us: int = 0


@dataclass(slots=True)
class _PcapngState:
    little: bool = True
    interfaces: list[_Interface] = field(default_factory=list)
    section_base: int = 0  # index in ``interfaces`` of this section's interface 0


def aligned_buffer(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """A zeroed, 8-byte aligned buffer as (uint8 view, uint64 view)."""
    words = np.zeros((nbytes + 7) // 8, dtype=np.uint64)
    return words.view(np.uint8), words


_SIXTY_FOUR = np.uint64(64)
_LOW32 = np.uint64(0xFFFFFFFF)
_THIRTY_TWO = np.uint64(32)


def load_le64(words: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The 8 bytes at each byte offset ``pos`` as a little-endian uint64 (two aligned gathers)."""
    i = pos >> 3
    s = ((pos & 7) << 3).astype(np.uint64)
    return (words.take(i) >> s) | (words.take(i + 1) << (_SIXTY_FOUR - s))


def _load_le128(words: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 16 bytes at each ``pos`` as two little-endian uint64 (three aligned gathers)."""
    i = pos >> 3
    s = ((pos & 7) << 3).astype(np.uint64)
    inv = _SIXTY_FOUR - s
    b = words.take(i + 1)
    return (words.take(i) >> s) | (b << inv), (b >> s) | (words.take(i + 2) << inv)


def _halves(x: np.ndarray, little: bool) -> tuple[np.ndarray, np.ndarray]:
    """Split 8 little-endian-loaded bytes into the two 32-bit fields they hold, in the file's byte order."""
    if not little:
        x = x.byteswap()
        return (x >> _THIRTY_TWO).astype(np.int64), (x & _LOW32).astype(np.int64)
    return (x & _LOW32).astype(np.int64), (x >> _THIRTY_TWO).astype(np.int64)


def _u32(data: np.ndarray, idx: np.ndarray, k: int, little: bool) -> np.ndarray:
    b = [data.take(idx + k + i).astype(np.int64) for i in range(4)]
    if little:
        return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)
    return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]


def _window_end(wstart: int, chunk: int, total: int) -> int:
    """End of the window from ``wstart``: a big window never reaches the file's end, so that only a small
    last window has to be copied into a zero-padded buffer."""
    end = min(total, wstart + chunk)
    if end + PAD > total and total - wstart > 2 * _TAIL_BYTES:
        end = total - _TAIL_BYTES
    return end


class _Window:
    """One window of the file: the bytes, their uint64 view, and where they sit in the file."""

    __slots__ = ("data", "file_offset", "limit", "words")

    def __init__(self, source: memoryview, file_offset: int, limit: int, total: int) -> None:
        self.file_offset = file_offset
        self.limit = limit - file_offset  # records must end at or before this index
        view_end = min(total, limit + PAD)
        if view_end - limit >= PAD:
            self.data = np.frombuffer(
                source, dtype=np.uint8, count=view_end - file_offset, offset=file_offset
            )
            self.words = np.frombuffer(
                source, dtype="<u8", count=(view_end - file_offset) // 8, offset=file_offset
            )
        else:
            n = limit - file_offset
            self.data, self.words = aligned_buffer(n + PAD)
            self.data[:n] = np.frombuffer(source, dtype=np.uint8, count=n, offset=file_offset)


# --------------------------------------------------------------------------------------------------------------
# The record walk


def _walk_sequential(
    rec_len: _RecLen, first: int, stop: int, limit: int, raw: memoryview
) -> tuple[list[int], int]:
    """Record offsets from ``first`` while before ``stop`` (records may end up to ``limit``), by a plain loop.

    Returns the offsets and where the walk stopped: the first offset at or past ``stop``, or the first record
    that is incomplete or has an impossible length (the caller reports those).
    """
    out: list[int] = []
    p = first
    hdr = rec_len.header
    while p < stop and p + hdr <= limit:
        n = rec_len.scalar(raw, p)
        if n < rec_len.minimum or n > _MAX_RECORD or p + n > limit:
            break
        out.append(p)
        p += n
    return out, p


class _RecLen:
    """How to read a record's total length, vectorised and scalar, and how to spot a plausible record."""

    header = 16
    minimum = 16
    align = 1
    name = "pcap record"
    # where the low, middle and high byte of the length field sit, and what to add to get the record length
    len_bytes: tuple[int, int, int] = (8, 9, 10)
    len_add = 16

    def from_words(self, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        """Record lengths from the first 16 bytes of each record (loaded as two little-endian uint64)."""
        raise NotImplementedError

    def vector(self, data: np.ndarray, words: np.ndarray, p: np.ndarray) -> np.ndarray:
        return self.from_words(*_load_le128(words, p))

    def scalar(self, raw: memoryview, p: int) -> int:
        raise NotImplementedError

    def candidates(self, data: np.ndarray, base: int, count: int, stride: int, width: int) -> np.ndarray:
        """Flat indices (row * width + col) of plausible record starts at base + row*stride + col*align."""
        raise NotImplementedError

    def plausible(self, data: np.ndarray, p: np.ndarray, limit: int) -> np.ndarray:
        raise NotImplementedError


class _PcapRecLen(_RecLen):
    def __init__(self, little: bool, header: int, snaplen: int, nanos: bool, ts0: int) -> None:
        self.little = little
        self.header = header
        self.minimum = header
        self.fmt = struct.Struct("<I" if little else ">I")
        # plausibility bounds for the segment search (never used to accept a record on their own)
        self.max_incl = max(snaplen, 262144) if 0 < snaplen < _MAX_RECORD else _MAX_RECORD
        self.max_frac = 1_000_000_000 if nanos else 1_000_000
        self.ts0 = ts0
        hi = 3 if little else 0
        self.len_bytes = (8, 9, 10) if little else (11, 10, 9)
        self.len_add = header
        self._incl_msb = 8 + hi
        self._orig_msb = 12 + hi
        self._frac_msb = 4 + hi

    def from_words(self, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        return _halves(x1, self.little)[0] + self.header

    def scalar(self, raw: memoryview, p: int) -> int:
        return int(self.fmt.unpack_from(raw, p + 8)[0]) + self.header

    def candidates(self, data: np.ndarray, base: int, count: int, stride: int, width: int) -> np.ndarray:
        def grid(k: int) -> np.ndarray:
            return np.lib.stride_tricks.as_strided(
                data[base + k :], shape=(count, width), strides=(stride, 1)
            )

        # lengths below 16 MiB and a sub-second fraction whose top byte is small: cheap byte tests first
        ok = (grid(self._incl_msb) == 0) & (grid(self._orig_msb) == 0)
        ok &= grid(self._frac_msb) < (64 if self.max_frac > 1_000_000 else 1)
        return np.flatnonzero(ok)

    def plausible(self, data: np.ndarray, p: np.ndarray, limit: int) -> np.ndarray:
        incl = _u32(data, p, 8, self.little)
        orig = _u32(data, p, 12, self.little)
        frac = _u32(data, p, 4, self.little)
        sec = _u32(data, p, 0, self.little)
        return (
            (incl <= self.max_incl)
            & (orig >= incl)
            & (frac < self.max_frac)
            & (np.abs(sec - self.ts0) < 400 * 86400)
            & (p + self.header + incl <= limit)
        )


class _PcapngRecLen(_RecLen):
    header = 12
    minimum = 12
    align = 4
    name = "pcapng block"

    def __init__(self, little: bool) -> None:
        self.little = little
        self.fmt = struct.Struct("<I" if little else ">I")
        self.len_bytes = (4, 5, 6) if little else (7, 6, 5)
        self.len_add = 0

    def from_words(self, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        return _halves(x0, self.little)[1]

    def scalar(self, raw: memoryview, p: int) -> int:
        return int(self.fmt.unpack_from(raw, p + 4)[0])

    def candidates(self, data: np.ndarray, base: int, count: int, stride: int, width: int) -> np.ndarray:
        cols = width // 4

        def grid(k: int) -> np.ndarray:
            return np.lib.stride_tricks.as_strided(data[base + k :], shape=(count, cols), strides=(stride, 4))

        t0, t1, t2, t3 = (
            (grid(0), grid(1), grid(2), grid(3)) if self.little else (grid(3), grid(2), grid(1), grid(0))
        )
        ok = (t1 == 0) & (t2 == 0) & (t3 == 0) & (t0 > 0) & (t0 <= 10)
        ok &= grid(7 if self.little else 4) == 0
        flat = np.flatnonzero(ok)
        return (flat // cols) * width + (flat % cols) * 4

    def plausible(self, data: np.ndarray, p: np.ndarray, limit: int) -> np.ndarray:
        btype = _u32(data, p, 0, self.little)
        blen = _u32(data, p, 4, self.little)
        ok = np.isin(btype, _PCAPNG_KNOWN_TYPES) & (blen >= 12) & (blen % 4 == 0) & (p + blen <= limit)
        tail = np.where(ok, p + blen - 4, p)
        return ok & (_u32(data, tail, 0, self.little) == blen)


def _segment_starts(win: _Window, rec_len: _RecLen, first: int, stride: int) -> np.ndarray:
    """Record starts to walk from: ``first``, then the first plausible record at each segment boundary."""
    data, words, limit = win.data, win.words, win.limit
    width = _SEARCH_WINDOW
    base = first + stride
    count = max(0, (limit - width - base) // stride + 1)
    if count <= 0:
        return np.asarray([first], dtype=np.int64)

    def search(base_: int, count_: int, width_: int) -> np.ndarray:
        flat = rec_len.candidates(data, base_, count_, stride, width_)
        pos = base_ + (flat // width_) * stride + (flat % width_)
        pos = pos[rec_len.plausible(data, pos, limit)]
        for _ in range(_VERIFY_HOPS):  # a real record start is followed by more plausible records
            nxt = pos + rec_len.vector(data, words, pos)
            good = (nxt == limit) | ((nxt < limit) & rec_len.plausible(data, np.minimum(nxt, limit), limit))
            pos = pos[good]
        seg = (pos - base) // stride
        return pos[np.flatnonzero(np.diff(seg, prepend=-1) != 0)]  # the first candidate of each segment

    found = search(base, count, width)
    if found.size < count:  # records longer than the window (jumbo frames): search those segments wider
        have = np.zeros(count, dtype=bool)
        have[(found - base) // stride] = True
        extra = [found]
        for j in np.flatnonzero(~have).tolist():
            b = base + j * stride
            w = min(_WIDE_SEARCH_WINDOW, stride, limit - b)
            if w > 0:
                extra.append(search(b, 1, w))
        found = np.sort(np.concatenate(extra))
    return np.concatenate((np.asarray([first], dtype=np.int64), found))


def _walk(
    win: _Window, rec_len: _RecLen, first: int, raw: memoryview
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The records of a window from ``first``.

    Returns their offsets, their first 16 bytes as two little-endian uint64 (timestamps and lengths), their
    lengths, and where the walk stopped: at the first record that does not fit in the window (it continues
    in the next one) or whose length is impossible (``_check_stop`` tells which).
    """
    limit = win.limit
    data, words = win.data, win.words
    if limit - first < _SEQUENTIAL_BELOW:
        seq, _ = _walk_sequential(rec_len, first, limit, limit, raw[win.file_offset :])
        offs = np.asarray(seq, dtype=np.int64)
    else:
        stride = _SEGMENT_BYTES - _SEGMENT_BYTES % rec_len.align
        starts = _segment_starts(win, rec_len, first, stride)
        targets = np.append(starts[1:], limit)
        # Advance every chain together, one record per step: three byte gathers per step, nothing more
        # (the length fits in three bytes; the fourth is checked below, with everything else).
        lo, mid, hi = (data[k:] for k in rec_len.len_bytes)
        add = rec_len.len_add
        p = starts
        rows = [p]
        step = 0
        while True:
            nxt = np.left_shift(hi.take(p), 16, dtype=np.int64)
            nxt |= np.left_shift(mid.take(p), 8, dtype=np.int64)
            nxt |= lo.take(p)
            nxt += p
            nxt += add
            p = np.minimum(nxt, limit)
            rows.append(p)
            step += 1
            if step % _CHECK_EVERY == 0 and (p >= targets).all():
                break
        grid = np.vstack(rows)  # (steps + 1, chains); each column increases
        inside = grid < targets
        counts = inside.sum(axis=0)
        landing = grid[counts, np.arange(starts.size)]
        if (landing[:-1] == starts[1:]).all():
            offs = grid.T[inside.T]
        else:
            offs = _stitch(rec_len, win, raw, starts, targets, grid, counts, landing)
    x0, x1 = _load_le128(words, offs)
    lens = rec_len.from_words(x0, x1)
    # cut at the first record that does not fit or has an impossible length
    bad = np.flatnonzero((lens < rec_len.minimum) | (lens > _MAX_RECORD) | (offs + lens > limit))
    if bad.size:
        k = int(bad[0])
        return offs[:k], x0[:k], x1[:k], lens[:k], int(offs[k])
    nxt_off = int(offs[-1] + lens[-1]) if offs.size else first
    return offs, x0, x1, lens, nxt_off


def _stitch(
    rec_len: _RecLen,
    win: _Window,
    raw: memoryview,
    starts: np.ndarray,
    targets: np.ndarray,
    grid: np.ndarray,
    counts: np.ndarray,
    landing: np.ndarray,
) -> np.ndarray:
    """Join the chains when some segment start was not a record (payload that looked like a header).

    A chain is trusted only when the chain before it landed exactly on its start; the other segments are
    walked again with the plain loop from where the trusted walk really is.
    """
    parts: list[np.ndarray] = []
    expected = int(starts[0])
    wraw = raw[win.file_offset :]
    for j in range(starts.size):
        tgt = int(targets[j])
        if expected >= tgt:
            continue
        if expected == int(starts[j]):
            parts.append(grid[: counts[j], j])
            expected = int(landing[j])
        else:
            seq, expected = _walk_sequential(rec_len, expected, tgt, win.limit, wraw)
            parts.append(np.asarray(seq, dtype=np.int64))
            if expected < tgt:
                break
    return np.concatenate(parts)


def _check_stop(rec_len: _RecLen, win: _Window, raw: memoryview, nxt: int, name: str) -> None:
    """Raise if the walk stopped on a record with an impossible length (rather than at the window's end)."""
    p = win.file_offset + nxt
    if nxt + rec_len.header > win.limit:
        return
    n = rec_len.scalar(raw, p)
    if n < rec_len.minimum or n > _MAX_RECORD:
        raise CaptureFormatError(f"{name}: {rec_len.name} at file offset {p}: length {n} is not valid")


# --------------------------------------------------------------------------------------------------------------
# Files


def _open_source(path: str | os.PathLike[str] | BinaryIO) -> tuple[memoryview, object]:
    """A read-only memoryview of the whole input (memory-mapped when possible) and its owner."""
    if isinstance(path, str | os.PathLike):
        f = open(path, "rb")  # noqa: SIM115 - the mmap keeps the descriptor's pages, closed right below
        try:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return memoryview(b""), None
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                return memoryview(f.read()), None
            if hasattr(mm, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
                mm.madvise(mmap.MADV_SEQUENTIAL)
            return memoryview(mm), mm
        finally:
            f.close()
    return memoryview(path.read()), None


def iter_packet_batches(
    path: str | os.PathLike[str] | BinaryIO, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[PacketBatch]:
    """Yield the packets of a pcap or pcapng file as batches of about ``chunk_bytes`` of file each.

    A path is memory-mapped; an open binary file is read whole into memory first.
    """
    raw, owner = _open_source(path)
    name = str(path) if isinstance(path, str | os.PathLike) else "<stream>"
    try:
        if len(raw) < 4:
            raise CaptureFormatError(f"{name}: {len(raw)} bytes, too short for a pcap or pcapng header")
        magic_le = struct.unpack_from("<I", raw, 0)[0]
        if magic_le == PCAPNG_SHB:
            yield from _iter_pcapng(raw, name, chunk_bytes)
        else:
            yield from _iter_pcap(raw, name, chunk_bytes)
    finally:
        if isinstance(owner, mmap.mmap):
            # batches still referenced by the caller keep the map alive; it closes when they are collected
            with contextlib.suppress(BufferError):
                raw.release()
                owner.close()


def _iter_pcap(raw: memoryview, name: str, chunk_bytes: int) -> Iterator[PacketBatch]:
    if len(raw) < 24:
        raise CaptureFormatError(f"{name}: {len(raw)} bytes, too short for the 24-byte pcap file header")
    magic = struct.unpack_from("<I", raw, 0)[0]
    little = True
    if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED):
        magic = struct.unpack_from(">I", raw, 0)[0]
        little = False
        if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED):
            raise CaptureFormatError(
                f"{name}: offset 0: magic {bytes(raw[:4]).hex()} is neither pcap (a1b2c3d4/a1b23c4d) nor pcapng"
            )
    e = "<" if little else ">"
    _, _, _, _, snaplen, network = struct.unpack_from(e + "HHiIII", raw, 4)
    linktype = network & 0xFFFF
    nanos = magic == PCAP_MAGIC_NS
    header = 24 if magic == PCAP_MAGIC_MODIFIED else 16
    ts0 = struct.unpack_from(e + "I", raw, 24)[0] if len(raw) >= 28 else 0
    rec_len = _PcapRecLen(little, header, snaplen, nanos, ts0)
    total = len(raw)
    pos = 24
    chunk = max(chunk_bytes, 1 << 16)
    while pos + header <= total:
        wstart = pos & ~7
        win = _Window(raw, wstart, _window_end(wstart, chunk, total), total)
        offs, first8, second8, lens, nxt = _walk(win, rec_len, pos - wstart, raw)
        _check_stop(rec_len, win, raw, nxt, name)
        if offs.size == 0:
            if win.limit + wstart >= total:
                break  # a truncated last record: the capture was cut off
            chunk *= 2  # one record larger than the window
            continue
        chunk = max(chunk_bytes, 1 << 16)
        sec, frac = _halves(first8, little)
        ts = sec * 1_000_000 + (frac // 1000 if nanos else frac)
        start = offs + header
        yield PacketBatch(
            data=win.data,
            words=win.words,
            start=start,
            caplen=lens - header,
            wirelen=np.maximum(_halves(second8, little)[1], lens - header),
            ts_us=ts,
            linktype=np.full(offs.size, linktype, dtype=np.int32),
            file_offset=wstart,
        )
        pos = wstart + nxt


def _parse_idb(raw: memoryview, p: int, blen: int, e: str) -> _Interface:
    linktype = struct.unpack_from(e + "H", raw, p + 8)[0]
    iface = _Interface(linktype=linktype)
    resol = 6
    off = 0
    q = p + 16
    end = p + blen - 4
    while q + 4 <= end:
        code, olen = struct.unpack_from(e + "HH", raw, q)
        if code == 0:
            break
        val = bytes(raw[q + 4 : q + 4 + olen])
        if code == 9 and olen >= 1:
            resol = val[0]
        elif code == 14 and olen >= 8:
            off = struct.unpack_from(e + "q", val, 0)[0]
        q += 4 + ((olen + 3) & ~3)
    if resol & 0x80:
        iface.ts_shift = resol & 0x7F
    elif resol >= 6:
        iface.ts_div = 10 ** (resol - 6)
    else:
        iface.ts_mul = 10 ** (6 - resol)
    iface.ts_offset_us = off * 1_000_000
    return iface


def _iter_pcapng(raw: memoryview, name: str, chunk_bytes: int) -> Iterator[PacketBatch]:
    total = len(raw)
    st = _PcapngState()
    pos = 0
    chunk = max(chunk_bytes, 1 << 16)
    while pos + 12 <= total:
        btype_le = struct.unpack_from("<I", raw, pos)[0]
        if btype_le == PCAPNG_SHB:
            if pos + 12 > total:
                break
            bom = struct.unpack_from("<I", raw, pos + 8)[0]
            if bom == PCAPNG_BOM:
                st.little = True
            elif bom == 0x4D3C2B1A:
                st.little = False
            else:
                raise CaptureFormatError(
                    f"{name}: offset {pos}: pcapng section header with byte-order magic {bom:#x}"
                )
            st.section_base = len(st.interfaces)
        rec_len = _PcapngRecLen(st.little)
        wstart = pos & ~7
        win = _Window(raw, wstart, _window_end(wstart, chunk, total), total)
        offs, first8, _, _, nxt = _walk(win, rec_len, pos - wstart, raw)
        btype = _halves(first8, st.little)[0]
        # A later section header starts a new interface numbering and may switch the byte order (the walk
        # read its length in the old one): stop this window right at it.
        shb = np.flatnonzero(btype == PCAPNG_SHB)
        shb = shb[offs[shb] != pos - wstart]
        if shb.size:
            cut = int(shb[0])
            offs, btype, nxt = offs[:cut], btype[:cut], int(offs[cut])
        elif not (wstart + nxt + 4 <= total and struct.unpack_from("<I", raw, wstart + nxt)[0] == PCAPNG_SHB):
            _check_stop(rec_len, win, raw, nxt, name)
        if offs.size == 0:
            if win.limit + wstart >= total:
                break
            chunk *= 2
            continue
        chunk = max(chunk_bytes, 1 << 16)
        e = "<" if st.little else ">"
        for i in np.flatnonzero(btype == _PCAPNG_IDB).tolist():
            p = wstart + int(offs[i])
            st.interfaces.append(_parse_idb(raw, p, struct.unpack_from(e + "I", raw, p + 4)[0], e))
        batch = _pcapng_packets(win, offs, btype, st, name)
        if batch is not None:
            yield batch
        pos = wstart + nxt


def _pcapng_packets(
    win: _Window, offs: np.ndarray, btype: np.ndarray, st: _PcapngState, name: str
) -> PacketBatch | None:
    data = win.data
    little = st.little
    is_epb = btype == _PCAPNG_EPB
    is_pb = btype == _PCAPNG_PB
    is_spb = btype == _PCAPNG_SPB
    sel = np.flatnonzero(is_epb | is_pb | is_spb)
    if sel.size == 0:
        return None
    o = offs[sel]
    epb = is_epb[sel] | is_pb[sel]
    blen = _u32(data, o, 4, little)
    iface_raw = np.where(
        is_pb[sel],
        (
            data.take(o + 8 + (0 if little else 1)).astype(np.int64)
            | (data.take(o + 9 - (0 if little else 1)).astype(np.int64) << 8)
        ),
        _u32(data, o, 8, little),
    )
    iface = np.where(epb, iface_raw, 0) + st.section_base
    n_if = len(st.interfaces)
    if n_if == 0 or int(iface.max()) >= n_if:
        bad = int(o[np.argmax(iface >= n_if)]) + win.file_offset
        raise CaptureFormatError(
            f"{name}: pcapng packet block at offset {bad} names an interface with no description block"
        )
    orig_len = _u32(data, o, 8, little)
    caplen = np.where(epb, _u32(data, o, 20, little), np.minimum(orig_len, blen - 16))
    start = o + np.where(epb, 28, 12)
    ticks = (_u32(data, o, 12, little) << 32) | _u32(data, o, 16, little)
    ts = np.zeros(o.size, dtype=np.int64)
    linktype = np.zeros(o.size, dtype=np.int32)
    for i in np.unique(iface).tolist():
        m = iface == i
        itf = st.interfaces[i]
        t = ticks[m]
        if itf.ts_shift >= 0:
            s = itf.ts_shift
            us = (t >> s) * 1_000_000 + (((t & ((1 << s) - 1)) * 1_000_000) >> s)
        else:
            us = t * itf.ts_mul // itf.ts_div
        ts[m] = us + itf.ts_offset_us
        linktype[m] = itf.linktype
    # SPBs carry no timestamp: give them their predecessor's
    if not epb.all():
        idx = np.where(epb, np.arange(o.size), 0)
        np.maximum.accumulate(idx, out=idx)
        ts = np.where(epb, ts, ts[idx])
    return PacketBatch(
        data=data,
        words=win.words,
        start=start,
        caplen=np.minimum(caplen, np.maximum(blen - (start - o) - 4, 0)),
        wirelen=np.maximum(np.where(epb, _u32(data, o, 24, little), orig_len), caplen),
        ts_us=ts,
        linktype=linktype,
        file_offset=win.file_offset,
    )
