"""A bounded, append-only disk spool of encoded Kafka messages: what a collector keeps while Kafka is away.

Every message is written here before it is sent; the sender reads the spool in order and moves the
acknowledged position only past messages Kafka confirmed. A process killed at any moment restarts with
every unacknowledged message still on disk and sends it again (so Kafka may see a message twice, never zero
times, unless the spool was full and the ``drop-oldest`` policy dropped it — which is counted).

Layout of a spool directory::

    00000000000000000000.seg   segments, named by the sequence number of their first message
    state.json                 acknowledged position (every message below it reached Kafka) + lifetime counters
    lock                       flock()ed by the one process that writes the spool

A segment is a run of frames; the CRC covers the length field too, so a torn length is caught as well::

    u32 body length | u32 CRC32(length bytes + body) | body
    body = u64 seq | u32 records | i32 key length (-1: no key) | u16 header count
           | per header: u16 name length, name (UTF-8), u32 value length, value | key | value

On open every segment is checked frame by frame. The first frame that is short, fails its CRC or carries an
unexpected sequence number ends its segment: the file is truncated there with a warning (a torn write after a
crash or power loss) and the bytes are counted in ``truncated_bytes``.

Durability: each append is one ``write()`` to the file, so a SIGKILLed process loses nothing it appended.
Against power loss, ``fsync="always"`` syncs every append, ``"interval"`` at most every ``fsync_interval_s``
(and when the shipper calls ``maybe_sync`` while idle), ``"never"`` leaves it to the OS.

Memory: 12 bytes per spooled message (its offset and record count), e.g. 8 MB for a full 1 GB spool of
1.5 kB messages. Only the segment files count toward ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "FsyncPolicy",
    "FullPolicy",
    "Spool",
    "SpoolCounters",
    "SpoolFull",
    "SpoolLocked",
    "SpooledMessage",
]

log = logging.getLogger(__name__)

FullPolicy = Literal["drop-oldest", "block"]
FsyncPolicy = Literal["always", "interval", "never"]

_FRAME_HEAD: Final = struct.Struct(">II")  # body length, CRC32
_BODY_HEAD: Final = struct.Struct(">QIiH")  # seq, records, key length, header count
_HEADER_NAME: Final = struct.Struct(">H")
_HEADER_VALUE: Final = struct.Struct(">I")
_MAX_BODY: Final = (1 << 31) - 1
_SEGMENT_SUFFIX: Final = ".seg"
_STATE_FILE: Final = "state.json"
_LOCK_FILE: Final = "lock"
_STATE_VERSION: Final = 1


class SpoolFull(Exception):
    """The spool stayed full for the whole block timeout (``full_policy="block"``)."""


class SpoolLocked(RuntimeError):
    """Another process holds the spool directory."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One message read back from the spool."""

    seq: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    records: int


@dataclass(slots=True)
class SpoolCounters:
    """Lifetime counters of a spool directory (kept in ``state.json`` across restarts)."""

    appended_messages: int = 0
    appended_records: int = 0
    appended_bytes: int = 0
    acked_messages: int = 0
    acked_records: int = 0
    dropped_messages: int = 0  # unacknowledged messages deleted by drop-oldest: lost
    dropped_records: int = 0
    dropped_segments: int = 0
    blocked_appends: int = 0  # appends that had to wait for space (block policy)
    refused_appends: int = 0  # appends that gave up after the block timeout: the caller got SpoolFull
    truncated_bytes: int = 0  # torn or corrupt frames cut off when the spool was opened
    truncations: int = 0
    corrupt_reads: int = 0  # frames that failed their CRC when read back for sending (skipped)
    opens: int = 0  # times the directory was opened for writing (1 + restarts)


class _Segment:
    """One segment file and the offset and record count of each frame in it."""

    __slots__ = ("base", "offsets", "path", "read_fd", "records", "size")

    def __init__(self, base: int, path: Path) -> None:
        self.base = base
        self.path = path
        self.offsets = array("Q")
        self.records = array("I")
        self.size = 0
        self.read_fd: int | None = None

    @property
    def end(self) -> int:
        """Sequence number after the last message."""
        return self.base + len(self.offsets)

    def frame_end(self, i: int) -> int:
        return self.offsets[i + 1] if i + 1 < len(self.offsets) else self.size


def encode_frame(
    seq: int, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]], records: int
) -> bytes:
    """One frame, ready to be appended to a segment."""
    parts = [_BODY_HEAD.pack(seq, records, -1 if key is None else len(key), len(headers))]
    for name, hval in headers:
        raw = name.encode()
        parts += [_HEADER_NAME.pack(len(raw)), raw, _HEADER_VALUE.pack(len(hval)), hval]
    if key is not None:
        parts.append(key)
    parts.append(value)
    body = b"".join(parts)
    if len(body) > _MAX_BODY:
        raise ValueError(f"message of {len(body)} bytes is larger than a spool frame can hold ({_MAX_BODY})")
    length = len(body).to_bytes(4, "big")
    return _FRAME_HEAD.pack(len(body), zlib.crc32(body, zlib.crc32(length))) + body


def decode_body(body: bytes | memoryview) -> SpooledMessage:
    """Parse a frame body (CRC already checked)."""
    seq, records, key_len, n_headers = _BODY_HEAD.unpack_from(body, 0)
    pos = _BODY_HEAD.size
    hdrs: list[tuple[str, bytes]] = []
    for _ in range(n_headers):
        (nlen,) = _HEADER_NAME.unpack_from(body, pos)
        pos += _HEADER_NAME.size
        name = bytes(body[pos : pos + nlen]).decode()
        pos += nlen
        (vlen,) = _HEADER_VALUE.unpack_from(body, pos)
        pos += _HEADER_VALUE.size
        hdrs.append((name, bytes(body[pos : pos + vlen])))
        pos += vlen
    key = None
    if key_len >= 0:
        key = bytes(body[pos : pos + key_len])
        pos += key_len
    return SpooledMessage(seq, key, bytes(body[pos:]), hdrs, records)


def _check_frame(buf: memoryview, pos: int) -> tuple[int, int, int] | str:
    """``(frame length, seq, records)`` of the frame at ``pos``, or why it is not a whole valid frame."""
    if len(buf) - pos < _FRAME_HEAD.size:
        return f"{len(buf) - pos} bytes are too short for a frame header"
    body_len, crc = _FRAME_HEAD.unpack_from(buf, pos)
    start = pos + _FRAME_HEAD.size
    if body_len < _BODY_HEAD.size:
        return f"body length {body_len} is shorter than the {_BODY_HEAD.size}-byte body header"
    if len(buf) - start < body_len:
        return f"frame of {body_len} bytes ends past the end of the file ({len(buf) - start} bytes left)"
    body = buf[start : start + body_len]
    if zlib.crc32(body, zlib.crc32(buf[pos : pos + 4])) != crc:
        return "CRC32 mismatch"
    seq, records, _, _ = _BODY_HEAD.unpack_from(body, 0)
    return _FRAME_HEAD.size + body_len, seq, records


class Spool:
    """Bounded append-only disk spool of ``(key, value, headers)`` messages, drained in order.

    ``max_bytes``: the segment files never grow past this. When an append does not fit, fully acknowledged
    segments are deleted first; then ``full_policy`` decides: ``drop-oldest`` deletes the oldest segment
    (its unacknowledged messages and records are counted as dropped), ``block`` waits up to
    ``block_timeout_s`` for the sender to free space and then raises ``SpoolFull``.
    ``segment_bytes``: a segment is closed once it reaches this size (the unit that drop-oldest drops and
    acknowledgement frees); default ``max_bytes / 16`` capped to 64 MiB.
    ``readonly=True`` opens a spool another process may be writing, for status only: nothing is truncated,
    deleted or locked.

    Thread-safe: one thread may append while another reads and acknowledges.
    """

    def __init__(
        self,
        path: Path | str,
        max_bytes: int = 1 << 30,
        full_policy: FullPolicy = "drop-oldest",
        block_timeout_s: float = 30.0,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
        segment_bytes: int | None = None,
        readonly: bool = False,
    ) -> None:
        if max_bytes < 1024:
            raise ValueError(f"spool max_bytes {max_bytes} is too small (expected at least 1024)")
        if full_policy not in ("drop-oldest", "block"):
            raise ValueError(f"spool full_policy {full_policy!r}: expected 'drop-oldest' or 'block'")
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"spool fsync {fsync!r}: expected 'always', 'interval' or 'never'")
        if block_timeout_s < 0 or fsync_interval_s < 0:
            raise ValueError("spool block_timeout_s and fsync_interval_s must be >= 0")
        if segment_bytes is None:
            segment_bytes = min(64 << 20, max_bytes, max(max_bytes // 16, 4096))
        if not 0 < segment_bytes <= max_bytes:
            raise ValueError(f"spool segment_bytes {segment_bytes} must be in 1..max_bytes ({max_bytes})")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.full_policy: FullPolicy = full_policy
        self.block_timeout_s = block_timeout_s
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval_s = fsync_interval_s
        self.segment_bytes = segment_bytes
        self.readonly = readonly
        self.counters = SpoolCounters()
        self.torn_tail_bytes = 0  # read-only opens: bytes that a writable open would truncate

        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._space = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._write_fd: int | None = None  # the last segment, open for appending
        self._disk_bytes = 0
        self._pending_records = 0
        self._acked = 0  # every seq below this reached Kafka
        self._next_seq = 0
        self._read_seq = 0
        self._last_sync = time.monotonic()
        self._unsynced = False
        self._closed = False
        self._lock_fd: int | None = None

        if readonly:
            if not self.path.is_dir():
                raise FileNotFoundError(f"spool directory {self.path} does not exist")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise SpoolLocked(f"spool {self.path} is in use by another process") from None
        try:
            self._recover()
        except BaseException:
            self._release()
            raise

    # ---------------------------------------------------------------- opening

    def _recover(self) -> None:
        acked, saved = self._load_state()
        self.counters = saved
        bases = sorted(
            int(p.name[: -len(_SEGMENT_SUFFIX)])
            for p in self.path.iterdir()
            if p.name.endswith(_SEGMENT_SUFFIX) and p.name[: -len(_SEGMENT_SUFFIX)].isdigit()
        )
        for i, base in enumerate(bases):
            seg = self._scan(base, last=i == len(bases) - 1)
            if seg is not None:
                self._segments.append(seg)
        last_end = self._segments[-1].end if self._segments else 0
        self._next_seq = max(acked, last_end)
        head = self._segments[0].base if self._segments else self._next_seq
        self._acked = min(max(acked, head), self._next_seq)
        self._disk_bytes = sum(s.size for s in self._segments)
        self._pending_records = sum(sum(s.records[max(0, self._acked - s.base) :]) for s in self._segments)
        self._read_seq = self._acked
        if not self.readonly:
            self.counters.opens += 1
            self._free_acked(include_last=False)
            last = self._segments[-1] if self._segments else None
            if last is not None and last.end == self._next_seq and last.size < self.segment_bytes:
                self._write_fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
            self._save_state()

    def _load_state(self) -> tuple[int, SpoolCounters]:
        p = self.path / _STATE_FILE
        try:
            data = json.loads(p.read_bytes())
            counters = SpoolCounters(
                **{k: int(v) for k, v in data.get("counters", {}).items() if k in SpoolCounters.__slots__}
            )
            if self.readonly:  # report the limits the writing process uses, not this object's defaults
                cfg = data.get("config", {})
                self.max_bytes = int(cfg.get("max_bytes", self.max_bytes))
                self.full_policy = cfg.get("full_policy", self.full_policy)
                self.fsync = cfg.get("fsync", self.fsync)
            return int(data["acked"]), counters
        except FileNotFoundError:
            return 0, SpoolCounters()
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("spool %s: %s unreadable (%s); resending everything spooled", self.path, p, exc)
            return 0, SpoolCounters()

    def _scan(self, base: int, last: bool) -> _Segment | None:
        seg = _Segment(base, self.path / f"{base:020d}{_SEGMENT_SUFFIX}")
        data = memoryview(seg.path.read_bytes())
        pos = 0
        problem = ""
        while pos < len(data):
            got = _check_frame(data, pos)
            if isinstance(got, str):
                problem = got
                break
            length, seq, records = got
            if seq != seg.end:
                problem = f"sequence number {seq}, expected {seg.end}"
                break
            seg.offsets.append(pos)
            seg.records.append(records)
            pos += length
        seg.size = pos
        if pos < len(data):
            cut = len(data) - pos
            if self.readonly:
                self.torn_tail_bytes += cut
            else:
                report = log.warning if last else log.error
                report(
                    "spool %s: %s at offset %d (%s); truncating %d bytes%s",
                    self.path,
                    seg.path.name,
                    pos,
                    problem,
                    cut,
                    " (a write torn by a crash)" if last else " of a sealed segment (disk corruption?)",
                )
                with open(seg.path, "r+b") as f:
                    f.truncate(pos)
                    os.fsync(f.fileno())
                self.counters.truncated_bytes += cut
                self.counters.truncations += 1
        if not seg.offsets and not self.readonly:
            seg.path.unlink()
            return None
        return seg

    # ---------------------------------------------------------------- writing

    def append(
        self,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        records: int = 1,
    ) -> int:
        """Write one message (``records``: how many records it carries, for the counters); returns its seq.

        Raises ``SpoolFull`` under the block policy when no space freed up within ``block_timeout_s``, and
        ``ValueError`` for a message larger than ``max_bytes``.
        """
        if self.readonly:
            raise RuntimeError(f"spool {self.path} was opened read-only")
        frame_len = _FRAME_HEAD.size + _BODY_HEAD.size + len(value) + (len(key) if key else 0)
        frame_len += sum(
            _HEADER_NAME.size + len(n.encode()) + _HEADER_VALUE.size + len(v) for n, v in headers
        )
        if frame_len > self.max_bytes:
            raise ValueError(
                f"message of {frame_len} bytes does not fit a spool of max_bytes {self.max_bytes}"
            )
        with self._lock:
            if self._closed:
                raise RuntimeError(f"spool {self.path} is closed")
            self._make_room(frame_len)
            seq = self._next_seq
            frame = encode_frame(seq, value, key, headers, records)
            last = self._segments[-1] if self._segments else None
            if last is None or self._write_fd is None or last.size + len(frame) > self.segment_bytes:
                last = self._roll()
            assert self._write_fd is not None
            try:
                _write_all(self._write_fd, frame)
            except OSError:
                # A partial frame would read as torn on restart; cut it off now so later frames stay valid.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._write_fd, last.size)
                raise
            last.offsets.append(last.size)
            last.records.append(records)
            last.size += len(frame)
            self._disk_bytes += len(frame)
            self._pending_records += records
            self._next_seq += 1
            c = self.counters
            c.appended_messages += 1
            c.appended_records += records
            c.appended_bytes += len(frame)
            self._unsynced = True
            if self.fsync == "always" or (
                self.fsync == "interval" and time.monotonic() - self._last_sync >= self.fsync_interval_s
            ):
                self._sync_locked()
            self._readable.notify_all()
            return seq

    def _roll(self) -> _Segment:
        """Close the segment being written and start a new one at the next seq."""
        if self._write_fd is not None:
            if self.fsync != "never":
                os.fsync(self._write_fd)
            os.close(self._write_fd)
            self._write_fd = None
        seg = _Segment(self._next_seq, self.path / f"{self._next_seq:020d}{_SEGMENT_SUFFIX}")
        self._write_fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        if self.fsync == "always":
            _sync_dir(self.path)
        self._segments.append(seg)
        return seg

    def _make_room(self, need: int) -> None:
        deadline: float | None = None
        while self._disk_bytes + need > self.max_bytes:
            if self._free_acked(include_last=True):
                continue
            if not self._segments:  # cannot happen: need <= max_bytes
                return
            if self.full_policy == "drop-oldest":
                self._drop_head()
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.block_timeout_s
                self.counters.blocked_appends += 1
            if now >= deadline or self._closed:
                self.counters.refused_appends += 1
                raise SpoolFull(
                    f"spool {self.path} full ({self._disk_bytes} of {self.max_bytes} bytes, "
                    f"{self._next_seq - self._acked} messages unacknowledged) for {self.block_timeout_s:g}s"
                )
            self._space.wait(deadline - now)

    def _drop_head(self) -> None:
        seg = self._segments[0]
        first = max(0, self._acked - seg.base)
        lost_msgs = len(seg.offsets) - first
        lost_recs = sum(seg.records[first:])
        self._delete_head()
        c = self.counters
        c.dropped_messages += lost_msgs
        c.dropped_records += lost_recs
        c.dropped_segments += 1
        self._pending_records -= lost_recs
        new_head = self._segments[0].base if self._segments else self._next_seq
        self._acked = max(self._acked, new_head)
        self._read_seq = max(self._read_seq, self._acked)
        log.warning(
            "spool %s full: dropped %d unacknowledged messages (%d records) of segment %s",
            self.path,
            lost_msgs,
            lost_recs,
            seg.path.name,
        )
        self._save_state()

    def _delete_head(self) -> None:
        seg = self._segments.pop(0)
        if not self._segments and self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        if seg.read_fd is not None:
            os.close(seg.read_fd)
            seg.read_fd = None
        seg.path.unlink(missing_ok=True)
        self._disk_bytes -= seg.size

    def _free_acked(self, include_last: bool) -> bool:
        """Delete fully acknowledged segments from the head; the one being written only if asked."""
        freed = False
        while self._segments and self._segments[0].end <= self._acked:
            if len(self._segments) == 1 and not include_last:
                break
            self._delete_head()
            freed = True
        return freed

    # ---------------------------------------------------------------- reading and acknowledging

    def read(self, max_messages: int = 64, max_bytes: int = 8 << 20) -> list[SpooledMessage]:
        """Messages after the read cursor, in order, without waiting (at least one if any, even if large)."""
        out: list[SpooledMessage] = []
        with self._lock:
            budget = max_bytes
            while len(out) < max_messages and self._read_seq < self._next_seq:
                seg = self._segment_of(self._read_seq)
                if seg is None:
                    break
                i = self._read_seq - seg.base
                j = i
                stop = seg.offsets[i]
                while j < len(seg.offsets) and len(out) + (j - i) < max_messages:
                    end = seg.frame_end(j)
                    if j > i and end - seg.offsets[i] > budget:
                        break
                    stop = end
                    j += 1
                if seg.read_fd is None:
                    seg.read_fd = os.open(seg.path, os.O_RDONLY)
                chunk = memoryview(os.pread(seg.read_fd, stop - seg.offsets[i], seg.offsets[i]))
                pos = 0
                for k in range(i, j):
                    got = _check_frame(chunk, pos)
                    if isinstance(got, str) or got[1] != seg.base + k:
                        self.counters.corrupt_reads += 1
                        log.error(
                            "spool %s: %s frame %d unreadable (%s); skipped",
                            self.path,
                            seg.path.name,
                            seg.base + k,
                            got if isinstance(got, str) else f"sequence number {got[1]}",
                        )
                    else:
                        start = pos + _FRAME_HEAD.size
                        out.append(decode_body(chunk[start : pos + got[0]]))
                    pos = seg.frame_end(k) - seg.offsets[i]
                budget -= stop - seg.offsets[i]
                self._read_seq = seg.base + j
                if budget <= 0:
                    break
        return out

    def _segment_of(self, seq: int) -> _Segment | None:
        """The segment holding ``seq``, moving the read cursor over gaps (dropped or truncated messages)."""
        for seg in self._segments:
            if seq < seg.end:
                if seq < seg.base:
                    self._read_seq = seg.base
                return seg
        return None

    def wait(self, timeout: float) -> bool:
        """Wait until there is something after the read cursor; True if there is."""
        with self._lock:
            if self._read_seq >= self._next_seq and not self._closed:
                self._readable.wait(timeout)
            return self._read_seq < self._next_seq

    def rewind(self, seq: int | None = None) -> None:
        """Move the read cursor back to ``seq`` (default: the first unacknowledged message)."""
        with self._lock:
            self._read_seq = self._acked if seq is None else min(max(seq, self._acked), self._next_seq)

    def ack(self, next_seq: int) -> None:
        """Every message below ``next_seq`` reached Kafka: free its space and persist the position."""
        with self._lock:
            next_seq = min(next_seq, self._next_seq)
            if next_seq <= self._acked:
                return
            msgs = recs = 0
            for seg in self._segments:
                if seg.end <= self._acked:
                    continue
                if seg.base >= next_seq:
                    break
                lo, hi = max(self._acked, seg.base) - seg.base, min(next_seq, seg.end) - seg.base
                msgs += hi - lo
                recs += sum(seg.records[lo:hi])
            self._acked = next_seq
            self._read_seq = max(self._read_seq, next_seq)
            self._pending_records -= recs
            self.counters.acked_messages += msgs
            self.counters.acked_records += recs
            # The segment being written stays unless it is full: deleting it would cost a new file per ack.
            self._free_acked(include_last=False)
            only = self._segments[0] if len(self._segments) == 1 else None
            if only is not None and only.end <= self._acked and only.size >= self.segment_bytes:
                self._delete_head()
            self._save_state()
            self._space.notify_all()

    # ---------------------------------------------------------------- syncing, status, closing

    def maybe_sync(self) -> None:
        """fsync unsynced appends when the interval has passed (call while idle under ``fsync="interval"``)."""
        with self._lock:
            if (
                self._unsynced
                and self.fsync == "interval"
                and time.monotonic() - self._last_sync >= self.fsync_interval_s
            ):
                self._sync_locked()

    def sync(self) -> None:
        """fsync every append so far."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._write_fd is not None and self._unsynced:
            os.fsync(self._write_fd)
        self._unsynced = False
        self._last_sync = time.monotonic()

    def _save_state(self) -> None:
        if self.readonly:
            return
        p = self.path / _STATE_FILE
        tmp = p.with_suffix(".tmp")
        data = json.dumps(
            {
                "version": _STATE_VERSION,
                "acked": self._acked,
                "config": {"max_bytes": self.max_bytes, "full_policy": self.full_policy, "fsync": self.fsync},
                "counters": asdict(self.counters),
            }
        )
        with open(tmp, "w") as f:
            f.write(data)
            if self.fsync == "always":
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)

    @property
    def acked(self) -> int:
        """Sequence number of the first unacknowledged message."""
        return self._acked

    @property
    def next_seq(self) -> int:
        """Sequence number the next append gets."""
        return self._next_seq

    @property
    def pending_messages(self) -> int:
        """Messages spooled and not yet acknowledged by Kafka."""
        with self._lock:
            return self._pending_messages()

    def _pending_messages(self) -> int:
        return sum(len(s.offsets) - min(len(s.offsets), max(0, self._acked - s.base)) for s in self._segments)

    def status(self) -> dict[str, Any]:
        """Gauges and lifetime counters, JSON-ready."""
        with self._lock:
            head = self._segments[0] if self._segments else None
            acked_bytes = 0
            if head is not None and self._acked > head.base:
                i = self._acked - head.base
                acked_bytes = head.offsets[i] if i < len(head.offsets) else head.size
            out: dict[str, Any] = {
                "path": str(self.path),
                "max_bytes": self.max_bytes,
                "full_policy": self.full_policy,
                "fsync": self.fsync,
                "segments": len(self._segments),
                "disk_bytes": self._disk_bytes,
                "pending_messages": self._pending_messages(),
                "pending_records": self._pending_records,
                "pending_bytes": self._disk_bytes - acked_bytes,
                "acked_seq": self._acked,
                "next_seq": self._next_seq,
                "counters": asdict(self.counters),
            }
            if self.readonly:
                out["torn_tail_bytes"] = self.torn_tail_bytes
            return out

    def close(self) -> None:
        """Sync, persist the acknowledged position and release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self.readonly:
                if self._write_fd is not None and self.fsync != "never":
                    os.fsync(self._write_fd)
                self._save_state()
            self._readable.notify_all()
            self._space.notify_all()
        self._release()

    def _release(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        for seg in self._segments:
            if seg.read_fd is not None:
                os.close(seg.read_fd)
                seg.read_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
