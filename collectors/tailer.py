"""Follow growing flow-log files: new complete lines in batches, resumed from a checkpoint after a restart.

``FileTailer(path, parser, state_dir)`` reads the lines appended since the last acknowledged position and
parses them (``collectors/flowlogs.py`` parsers); ``read_batch()`` returns at most ``max_lines`` lines or
``max_bytes`` bytes, waiting at most ``max_wait_s`` for them. The caller ships the batch and then calls
``ack(batch)``; only then is the checkpoint file written (atomically: temporary file, fsync, rename). The
checkpoint names the file by device and inode, the byte offset and line number after the batch, a
fingerprint (SHA-256 of the first bytes, up to 1 KiB — not only the first line, because every Zeek log starts
with the same ``#separator`` line) and what the parser learnt from the header.

Delivery: at-least-once from the file to whoever acknowledges. A batch read but not acknowledged before a
crash is read again after the restart; an acknowledged line is never read again.

Files change under a tailer in three ways, all handled:

* rotation by rename (logrotate ``create``, Zeek's own rotation): the renamed file is finished through the
  descriptor still open (waiting ``rotate_grace_s`` for a writer that has not reopened yet; a last line
  without newline is taken as it is), then the new file at ``path`` is read from its start. If the process
  was down during the rotation, the renamed file is looked for in the same directory by device and inode;
  found, it is finished first; not found (compressed or moved away), what it held after the checkpoint is
  lost and a warning says so;
* truncation in place (logrotate ``copytruncate``): the size drops below the read position, reading starts
  again at 0. Lines written between the last read and the truncation are lost — that mode cannot avoid it;
* a file replaced in place (same inode, different first bytes): read again from 0.

A last line without its newline is left until the newline arrives. A line longer than ``max_line_bytes`` is
rejected and skipped up to its newline, so a runaway writer cannot exhaust memory.

``GlobTailer(pattern, parser_factory, state_dir)`` follows every file a glob pattern matches, each with its
own ``FileTailer`` and checkpoint. The pattern should match the live files, not their rotated names.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import orjson

from taishi.collectors.flowlog_columns import FlowBatch, LineReject, concat_columns, empty_columns
from taishi.collectors.flowlogs import FlowLogParser

__all__ = ["Checkpoint", "FileTailer", "GlobTailer", "TailBatch", "TailCounters"]

log = logging.getLogger(__name__)

_FINGERPRINT_BYTES: Final = 1024
_CHECKPOINT_VERSION: Final = 1
_READ_CHUNK: Final = 1 << 20
_HEAD_BYTES: Final = 64 * 1024  # where a header is looked for when starting at the end of a file

StartAt = Literal["beginning", "end"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where reading resumes: the file (device, inode, fingerprint), byte offset, line number, parser state."""

    path: str  # the path followed
    file: str  # the name the file had when read (a rotated name while a rotated file is finished)
    dev: int
    ino: int
    offset: int  # first byte not yet acknowledged
    line: int  # 1-based number of the line starting at ``offset``
    fingerprint: str  # SHA-256 (hex) of the file's first ``fingerprint_len`` bytes
    fingerprint_len: int
    parser: dict[str, Any] = field(default_factory=dict)
    skipping: bool = False  # ``offset`` lies inside an overlong line being skipped
    version: int = _CHECKPOINT_VERSION


@dataclass(slots=True)
class TailBatch:
    """Lines read by one ``read_batch``: their parsed columns and rejects, and the checkpoint after them."""

    path: str
    first_line: int
    lines: int
    columns: dict[str, np.ndarray]
    rejects: list[LineReject]
    checkpoint: Checkpoint | None

    @property
    def count(self) -> int:
        return len(self.columns["@timestamp"])


@dataclass(slots=True)
class TailCounters:
    """What a tailer did in this process."""

    lines: int = 0
    records: int = 0
    rejected_lines: int = 0
    bytes: int = 0
    rotations: int = 0
    truncations: int = 0
    overlong_lines: int = 0
    lost_rotated_files: int = 0  # rotated while stopped and not found again


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _state_file(state_dir: Path, path: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:64]
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:12]
    return state_dir / f"tail-{name}-{digest}.json"


class FileTailer:
    """Follows one file; ``read_batch()`` -> ``TailBatch``, ``ack(batch)`` commits its checkpoint.

    One tailer per file and state directory. ``start_at`` applies only when there is no checkpoint yet."""

    def __init__(
        self,
        path: str | Path,
        parser: FlowLogParser,
        state_dir: str | Path,
        *,
        max_lines: int = 20_000,
        max_bytes: int = 8 << 20,
        max_wait_s: float = 1.0,
        poll_interval_s: float = 0.2,
        start_at: StartAt = "beginning",
        rotate_grace_s: float = 1.0,
        max_line_bytes: int = 1 << 20,
        fsync: bool = True,
    ) -> None:
        if max_lines < 1 or max_bytes < 1 or max_line_bytes < 1:
            raise ValueError("max_lines, max_bytes and max_line_bytes must be at least 1")
        if start_at not in ("beginning", "end"):
            raise ValueError(f"start_at {start_at!r} unknown, expected 'beginning' or 'end'")
        self.path = Path(os.path.abspath(path))
        self.parser = parser
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = _state_file(self.state_dir, self.path)
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self.poll_interval_s = poll_interval_s
        self.rotate_grace_s = rotate_grace_s
        self.max_line_bytes = max_line_bytes
        self.fsync = fsync
        self.counters = TailCounters()
        self.finished: deque[tuple[int, int]] = deque(maxlen=1024)  # (dev, inode) of files read to the end
        self._stop = threading.Event()
        self._fd: int | None = None
        self._dev = self._ino = 0
        self._file = ""
        self._pos = 0  # offset of the first byte not yet handed out
        self._buf = b""  # bytes read after _pos
        self._line = 1
        self._skipping = False
        self._draining = False  # the open file was rotated away; finish it, then switch to path
        self._rotated_at = 0.0
        self._switch_pending = False
        self._fp_len = 0
        self._fp_hash = _fingerprint(b"")
        self._last: Checkpoint | None = None
        self.acked = self._load()
        self._resume(self.acked, start_at)

    # ------------------------------------------------------------------ opening and resuming

    def _load(self) -> Checkpoint | None:
        try:
            raw = orjson.loads(self.state_file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("checkpoint %s unreadable (%s); starting without it", self.state_file, exc)
            return None
        try:
            if raw.get("version") != _CHECKPOINT_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, expected {_CHECKPOINT_VERSION}")
            return Checkpoint(**raw)
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("checkpoint %s not understood (%s); starting without it", self.state_file, exc)
            return None

    def _adopt(self, fd: int, st: os.stat_result, name: str, pos: int, line: int) -> None:
        self._close_fd()
        self._fd, self._dev, self._ino, self._file = fd, st.st_dev, st.st_ino, name
        self._pos, self._line, self._buf = pos, line, b""
        self._skipping = self._draining = self._switch_pending = False
        self._fp_len, self._fp_hash = 0, _fingerprint(b"")
        self._refresh_fingerprint()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self, name: str | Path) -> tuple[int, os.stat_result] | None:
        try:
            fd = os.open(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        return fd, os.fstat(fd)

    def _matches(self, fd: int, ck: Checkpoint) -> bool:
        head = os.pread(fd, ck.fingerprint_len, 0)
        return len(head) == ck.fingerprint_len and _fingerprint(head) == ck.fingerprint

    def _resume(self, ck: Checkpoint | None, start_at: StartAt) -> None:
        if ck is None:
            self._open_path(at_end=start_at == "end")
            return
        opened = self._open(self.path)
        if opened is not None:
            fd, st = opened
            if (st.st_dev, st.st_ino) == (ck.dev, ck.ino):
                if st.st_size >= ck.offset and self._matches(fd, ck):
                    self._adopt(fd, st, str(self.path), ck.offset, ck.line)
                    self._skipping = ck.skipping
                    self.parser.restore(ck.parser)
                else:
                    log.warning(
                        "%s was truncated or replaced while stopped; reading it from the start", self.path
                    )
                    self.counters.truncations += 1
                    self._adopt(fd, st, str(self.path), 0, 1)
                    self.parser.reset()
                return
            os.close(fd)
        rotated = self._find_rotated(ck)
        if rotated is not None:
            fd, st, name = rotated
            log.info(
                "%s was rotated while stopped; finishing %s from offset %d first", self.path, name, ck.offset
            )
            self._adopt(fd, st, name, ck.offset, ck.line)
            self._skipping = ck.skipping
            self.parser.restore(ck.parser)
            self._draining = True
            self._rotated_at = float("-inf")
            self.counters.rotations += 1
            return
        if ck.offset > 0:
            log.warning(
                "%s was rotated while stopped and the rotated file (inode %d) is not in %s any more; "
                "lines it held after offset %d are lost",
                self.path,
                ck.ino,
                self.path.parent,
                ck.offset,
            )
            self.counters.lost_rotated_files += 1
        self._open_path(at_end=False)

    def _find_rotated(self, ck: Checkpoint) -> tuple[int, os.stat_result, str] | None:
        """The checkpoint's file under another name in the same directory (by device, inode, fingerprint)."""
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return None
        for entry in entries:
            try:
                if entry.inode() != ck.ino or not entry.is_file(follow_symlinks=False):
                    continue
            except OSError:
                continue
            opened = self._open(entry.path)
            if opened is None:
                continue
            fd, st = opened
            if st.st_dev == ck.dev and st.st_size >= ck.offset and self._matches(fd, ck):
                return fd, st, entry.path
            os.close(fd)
        return None

    def _open_path(self, at_end: bool) -> bool:
        """Start reading the file at ``path`` (from its start, or after its last complete line)."""
        self._close_fd()
        self.parser.reset()
        opened = self._open(self.path)
        if opened is None:
            self._file = ""
            self._pos, self._line, self._buf = 0, 1, b""
            return False
        fd, st = opened
        pos, line = 0, 1
        if at_end and st.st_size:
            tail = os.pread(fd, min(st.st_size, _READ_CHUNK), max(0, st.st_size - _READ_CHUNK))
            pos = max(0, st.st_size - len(tail)) + tail.rfind(b"\n") + 1
            line += self._count_lines(fd, pos)
            self.parser.learn_header(os.pread(fd, _HEAD_BYTES, 0))
        self._adopt(fd, st, str(self.path), pos, line)
        return True

    @staticmethod
    def _count_lines(fd: int, end: int) -> int:
        count = offset = 0
        while offset < end:
            chunk = os.pread(fd, min(_READ_CHUNK * 8, end - offset), offset)
            if not chunk:
                break
            count += chunk.count(b"\n")
            offset += len(chunk)
        return count

    # ------------------------------------------------------------------ watching the file

    def _refresh_fingerprint(self) -> bool:
        """Extend the fingerprint while the file is shorter than 1 KiB; False if its first bytes changed."""
        if self._fd is None:
            return True
        head = os.pread(self._fd, _FINGERPRINT_BYTES, 0)
        if _fingerprint(head[: self._fp_len]) != self._fp_hash or len(head) < self._fp_len:
            return False
        if len(head) > self._fp_len:
            self._fp_len, self._fp_hash = len(head), _fingerprint(head)
        return True

    def _file_status(self) -> str:
        """'same', 'truncated', 'replaced', 'rotated' (path names another file) or 'gone' (path missing)."""
        assert self._fd is not None
        if os.fstat(self._fd).st_size < self._pos + len(self._buf):
            return "truncated"
        if not self._refresh_fingerprint():
            return "replaced"
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "gone"
        return "same" if (st.st_dev, st.st_ino) == (self._dev, self._ino) else "rotated"

    def _switch_to_path(self) -> None:
        self.finished.append((self._dev, self._ino))
        self.counters.rotations += 1
        self._open_path(at_end=False)

    def _fill(self) -> int:
        """Read more of the file into the buffer; the number of bytes read.

        Nothing is read from a file that shrank or whose first bytes changed: ``_at_eof`` deals with it
        before any of the new content is taken for a continuation of the old."""
        if self._fd is None:
            return 0
        room = max(self.max_bytes, self.max_line_bytes) + 1 - len(self._buf)
        end = self._pos + len(self._buf)
        if room <= 0 or os.fstat(self._fd).st_size <= end or not self._refresh_fingerprint():
            return 0
        data = os.pread(self._fd, min(room, _READ_CHUNK), end)
        self._buf += data
        if data and self._draining:
            self._rotated_at = max(self._rotated_at, time.monotonic())  # its writer is still at it
        return len(data)

    def _consume(self, size: int, lines: int) -> None:
        self._buf = self._buf[size:]
        self._pos += size
        self._line += lines

    def _take(
        self, max_lines: int, max_bytes: int, rejects: list[LineReject]
    ) -> tuple[int, bytes, int] | None:
        """Complete lines from the buffer (at most ``max_lines``, about ``max_bytes``) as (number of the first
        line, the lines, how many), or None when more bytes are needed. Moves the position; an overlong line
        is rejected and consumed, which gives ``(line, b"", 0)``."""
        buf = self._buf
        if self._skipping:
            nl = buf.find(b"\n")
            if nl < 0:
                self._consume(len(buf), 0)
                return None
            self._consume(nl + 1, 1)
            self._skipping = False
            return self._line - 1, b"", 0
        first = buf.find(b"\n", 0, self.max_line_bytes + 1)
        if first < 0:
            if len(buf) <= self.max_line_bytes:
                return None  # wait for the newline
            reason = f"line longer than {self.max_line_bytes} bytes (max_line_bytes); skipped to its end"
            rejects.append(LineReject(self._line, reason, buf[:200]))
            self.counters.overlong_lines += 1
            end = buf.find(b"\n")
            if end >= 0:
                self._consume(end + 1, 1)
                return self._line - 1, b"", 0
            self._consume(len(buf), 0)
            self._skipping = True
            return self._line, b"", 0
        cut = buf.rfind(b"\n", 0, max(first + 1, min(len(buf), max_bytes))) + 1
        newlines: np.ndarray | None = None
        if cut > self.max_line_bytes + 1:  # a line in there may be too long: stop before the first one
            newlines = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8, count=cut) == 10)
            long = np.flatnonzero(np.diff(newlines, prepend=-1) > self.max_line_bytes + 1)
            if len(long):
                newlines = newlines[: int(long[0])]
                cut = int(newlines[-1]) + 1
        count = len(newlines) if newlines is not None else buf.count(b"\n", 0, cut)
        if count > max_lines:
            if newlines is None:
                newlines = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8, count=cut) == 10)
            cut = int(newlines[max_lines - 1]) + 1
            count = max_lines
        start = self._line
        self._consume(cut, count)
        return start, buf[:cut], count

    def _at_eof(self, collected: bool) -> tuple[str, tuple[int, bytes, int] | None]:
        """What to do when no more bytes are there: 'idle', 'continue' (reading resumes) or 'break' (end the
        batch here), possibly with a last line of a rotated file."""
        if self._fd is None:
            if collected:
                return "idle", None
            return ("continue", None) if self._open_path(at_end=False) else ("idle", None)
        if not self._draining:
            status = self._file_status()
            if status in ("truncated", "replaced"):
                if collected:
                    return "break", None  # the batch ends with the old content; restart on the next call
                log.warning("%s was %s; reading it again from the start", self.path, status)
                self.counters.truncations += 1
                self.finished.append((self._dev, self._ino))
                self._open_path(at_end=False)
                return "continue", None
            if status == "rotated":
                log.info("%s was rotated; finishing the old file", self.path)
                self._draining = True
                self._rotated_at = time.monotonic()
                return "continue", None
            return "idle", None
        if time.monotonic() - self._rotated_at < self.rotate_grace_s:
            return "idle", None
        if self._buf and not self._skipping:
            # The rotated file's last line never got its newline, and its writer has moved on.
            last = (self._line, self._buf + b"\n", 1)
            self._pos += len(self._buf)
            self._buf = b""
            self._line += 1
            self._switch_pending = True
            return "break", last
        if collected:
            self._switch_pending = True
            return "break", None
        self._switch_to_path()
        return "continue", None

    # ------------------------------------------------------------------ the public loop

    def read_batch(self, max_wait_s: float | None = None) -> TailBatch:
        """New complete lines, parsed; waits up to ``max_wait_s`` (default ``self.max_wait_s``) for
        ``max_lines`` of them and returns what it has then (possibly nothing)."""
        deadline = time.monotonic() + (self.max_wait_s if max_wait_s is None else max_wait_s)
        if self._switch_pending:
            self._switch_to_path()
        first_line = self._line
        runs: list[list[Any]] = []  # [first line, [blocks], lines]: runs of consecutive lines
        rejects: list[LineReject] = []
        lines = size = 0

        def add(got: tuple[int, bytes, int]) -> None:
            nonlocal lines, size
            start, block, count = got
            if runs and runs[-1][0] + runs[-1][2] == start:
                runs[-1][1].append(block)
                runs[-1][2] += count
            else:
                runs.append([start, [block], count])
            lines += count
            size += len(block)

        while True:
            got = self._take(self.max_lines - lines, self.max_bytes - size, rejects)
            if got is not None and got[2]:
                add(got)
            if lines >= self.max_lines or size >= self.max_bytes:
                break
            if got is not None or self._fill():
                continue
            action, last = self._at_eof(collected=bool(runs or rejects))
            if last is not None:
                add(last)
            if action == "break":
                break
            if action == "continue":
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                break
            self._stop.wait(min(self.poll_interval_s, remaining))
        if runs:
            first_line = runs[0][0]
        elif rejects:
            first_line = rejects[0].line
        return self._batch(runs, first_line, lines, rejects)

    def _batch(
        self, runs: list[list[Any]], first_line: int, lines: int, rejects: list[LineReject]
    ) -> TailBatch:
        parts = [self.parser.parse(b"".join(blocks), start) for start, blocks, _ in runs]
        parsed = (
            parts[0]
            if len(parts) == 1
            else FlowBatch(
                concat_columns([p.columns for p in parts if p.count] or [empty_columns()]),
                [r for p in parts for r in p.rejects],
            )
        )
        all_rejects = sorted(rejects + parsed.rejects, key=lambda r: r.line) if rejects else parsed.rejects
        if self._fd is not None:
            self._refresh_fingerprint()
            self._last = Checkpoint(
                path=str(self.path),
                file=self._file,
                dev=self._dev,
                ino=self._ino,
                offset=self._pos,
                line=self._line,
                fingerprint=self._fp_hash,
                fingerprint_len=self._fp_len,
                parser=self.parser.state(),
                skipping=self._skipping,
            )
        c = self.counters
        c.lines += lines
        c.records += parsed.count
        c.rejected_lines += len(all_rejects)
        c.bytes += sum(len(b) for run in runs for b in run[1])
        return TailBatch(str(self.path), first_line, lines, parsed.columns, all_rejects, self._last)

    def ack(self, batch: TailBatch | None = None) -> None:
        """Commit the checkpoint after ``batch`` (default: the last batch read). Acknowledge in order."""
        ck = batch.checkpoint if batch is not None else self._last
        if ck is None or ck == self.acked:
            return
        data = orjson.dumps(asdict(ck))
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.state_file)
        if self.fsync:
            dir_fd = os.open(self.state_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self.acked = ck

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint after the last batch read (acknowledged or not)."""
        return self._last

    @property
    def identity(self) -> tuple[int, int] | None:
        """(device, inode) of the open file, or None."""
        return (self._dev, self._ino) if self._fd is not None else None

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing pending (the last batch read reached the end of the file)."""
        return not self._buf and not self._switch_pending and not self._draining

    def run(
        self,
        write: Callable[[Mapping[str, np.ndarray]], object],
        on_rejects: Callable[[TailBatch], object] | None = None,
    ) -> None:
        """Read, ``write(columns)``, acknowledge — until ``stop()``. Rejects go to ``on_rejects`` (default: a
        warning per batch naming the first one)."""
        while not self._stop.is_set():
            batch = self.read_batch()
            if batch.rejects:
                (on_rejects or _warn_rejects)(batch)
            if batch.count:
                write(batch.columns)
            self.ack(batch)

    def stop(self) -> None:
        """Make ``run()`` (and a waiting ``read_batch``) return soon."""
        self._stop.set()

    def close(self) -> None:
        """Close the file; the checkpoint stays as last acknowledged."""
        self._stop.set()
        self._close_fd()

    def __enter__(self) -> FileTailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warn_rejects(batch: TailBatch) -> None:
    first = batch.rejects[0]
    log.warning(
        "%s: %d line(s) rejected, first line %d: %s", batch.path, len(batch.rejects), first.line, first.reason
    )


class GlobTailer:
    """Follows every file matching ``pattern`` (rescanned every ``rescan_interval_s``), one ``FileTailer`` each.

    ``parser_factory()`` makes a parser per file; other keyword options go to each ``FileTailer``. A file
    whose inode a tailer here already finished (a rotated name the pattern also matches) is not followed."""

    def __init__(
        self,
        pattern: str,
        parser_factory: Callable[[], FlowLogParser],
        state_dir: str | Path,
        *,
        rescan_interval_s: float = 5.0,
        **tailer_options: Any,
    ) -> None:
        self.pattern = pattern
        self.parser_factory = parser_factory
        self.state_dir = Path(state_dir)
        self.rescan_interval_s = rescan_interval_s
        self.max_wait_s = float(tailer_options.get("max_wait_s", 1.0))
        self.poll_interval_s = float(tailer_options.get("poll_interval_s", 0.2))
        self._options = tailer_options
        self.tailers: dict[str, FileTailer] = {}
        self._finished: deque[tuple[int, int]] = deque(maxlen=4096)
        self._next = 0
        self._scanned_at = float("-inf")
        self._stop = threading.Event()

    def _rescan(self) -> None:
        self._scanned_at = time.monotonic()
        held = {t.identity for t in self.tailers.values() if t.identity is not None}
        for t in self.tailers.values():
            self._finished.extend(t.finished)
            t.finished.clear()
        for name in sorted(glob.glob(self.pattern)):
            path = os.path.abspath(name)
            if path in self.tailers or not os.path.isfile(path):
                continue
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in held or (st.st_dev, st.st_ino) in self._finished:
                continue
            self.tailers[path] = FileTailer(path, self.parser_factory(), self.state_dir, **self._options)
        for path, t in list(self.tailers.items()):
            # A vanished file whose lines are all acknowledged: a later file at this path resumes from the
            # checkpoint (and finds the old one by inode if it was renamed).
            if not os.path.exists(path) and t.idle and t.acked == t.last_checkpoint:
                t.close()
                del self.tailers[path]

    def read_batch(self, max_wait_s: float | None = None) -> TailBatch:
        """The next batch with lines from any followed file (files take turns)."""
        deadline = time.monotonic() + (self.max_wait_s if max_wait_s is None else max_wait_s)
        while True:
            if time.monotonic() - self._scanned_at >= self.rescan_interval_s:
                self._rescan()
            tailers = list(self.tailers.values())
            for k in range(len(tailers)):
                t = tailers[(self._next + k) % len(tailers)]
                batch = t.read_batch(max_wait_s=0)
                if batch.lines or batch.rejects or batch.checkpoint != t.acked:
                    self._next = (self._next + k + 1) % len(tailers)
                    return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                return TailBatch("", 0, 0, empty_columns(), [], None)
            self._stop.wait(min(self.poll_interval_s, remaining))

    def ack(self, batch: TailBatch) -> None:
        """Commit ``batch``'s checkpoint in the tailer of its file."""
        tailer = self.tailers.get(batch.path)
        if tailer is not None:
            tailer.ack(batch)

    def run(
        self,
        write: Callable[[Mapping[str, np.ndarray]], object],
        on_rejects: Callable[[TailBatch], object] | None = None,
    ) -> None:
        """Like ``FileTailer.run`` over every followed file."""
        while not self._stop.is_set():
            batch = self.read_batch()
            if batch.rejects:
                (on_rejects or _warn_rejects)(batch)
            if batch.count:
                write(batch.columns)
            self.ack(batch)

    def stop(self) -> None:
        self._stop.set()
        for t in self.tailers.values():
            t.stop()

    def close(self) -> None:
        self._stop.set()
        for t in self.tailers.values():
            t.close()
