"""Vectorised reading of delimited flow-log text: fields located and converted column by column, not line by line.

A block of log text becomes one ``uint8`` array. Lines are found by their newlines and the fields of a line by
its separators, so a column is a pair of offset arrays (start, end) into that buffer; numbers, timestamps and
short texts are then decoded for the whole column at once. Splitting every line into Python ``bytes`` objects
is what limits a naive parser (a few hundred thousand lines per second); this avoids creating them.

Each conversion returns its values with an ``ok`` mask; the caller turns the rows that failed into rejects
(``FieldTable.fail`` names the field, what was expected and the text found).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from taishi.collectors.pcap_decode import ICMP4_COUNTERPART, ICMP6_COUNTERPART

PAD: Final = 64  # zero bytes after the text, so every gather of up to PAD bytes stays inside the buffer
_DIGIT0: Final = 48
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# Protocol names as Zeek, Argus (/etc/protocols names) and nfdump print them, lower-cased.
PROTOCOL_NUMBERS: Final[dict[str, int]] = {
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ggp": 3,
    "ipv4": 4,
    "ipip": 4,
    "ipencap": 4,
    "st": 5,
    "tcp": 6,
    "egp": 8,
    "igp": 9,
    "udp": 17,
    "ipv6": 41,
    "ipv6-route": 43,
    "ipv6-frag": 44,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "ipv6-icmp": 58,
    "icmp6": 58,
    "icmpv6": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "eigrp": 88,
    "ospf": 89,
    "ospfigp": 89,
    "ipx-in-ip": 111,
    "pim": 103,
    "vrrp": 112,
    "l2tp": 115,
    "isis": 124,
    "sctp": 132,
    "udplite": 136,
}
PROTO_TCP: Final = 6
PROTO_ICMP: Final = 1
PROTO_ICMP6: Final = 58

# TCP flag letters as nfdump and Argus print them.
TCP_FLAG_BITS: Final[dict[str, int]] = {
    "F": 0x01,
    "S": 0x02,
    "R": 0x04,
    "P": 0x08,
    "A": 0x10,
    "U": 0x20,
    "E": 0x40,
    "C": 0x80,
}
# Zeek's conn.log history letters that show a flag (either case: upper is the originator). D/d, the data
# packets, are left out: Zeek does not record whether PSH was set.
ZEEK_HISTORY_BITS: Final[dict[str, int]] = {"s": 0x02, "h": 0x12, "a": 0x10, "f": 0x01, "r": 0x04}


# Columns of every batch a flow-log parser returns (contract names; times are int64 epoch milliseconds).
FLOW_LOG_DTYPES: Final[dict[str, np.dtype]] = {
    "@timestamp": np.dtype(np.int64),
    "event.end": np.dtype(np.int64),
    "event.dataset": np.dtype(object),
    "source.ip": np.dtype(object),
    "source.port": np.dtype(np.int32),
    "destination.ip": np.dtype(object),
    "destination.port": np.dtype(np.int32),
    "network.iana_number": np.dtype(np.int16),
    "source.bytes": np.dtype(np.int64),
    "source.packets": np.dtype(np.int64),
    "destination.bytes": np.dtype(np.int64),
    "destination.packets": np.dtype(np.int64),
    "taishi.flow.tcp_flags": np.dtype(np.int16),
}


@dataclass(slots=True)
class LineReject:
    """A line that gave no record: its 1-based number in the file, why, and the line as read."""

    line: int
    reason: str
    raw: bytes


@dataclass(slots=True)
class FlowBatch:
    """What a block of log lines parsed into: contract columns of the good lines, and the rejected lines."""

    columns: dict[str, np.ndarray]
    rejects: list[LineReject] = field(default_factory=list)
    lines: int = 0  # lines consumed, headers and blank lines included

    @property
    def count(self) -> int:
        return len(self.columns["@timestamp"])


def empty_columns(extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Zero-row columns with the batch dtypes (``extra`` columns are text)."""
    out = {name: np.empty(0, dtype=dtype) for name, dtype in FLOW_LOG_DTYPES.items()}
    out.update({name: np.empty(0, dtype=object) for name in extra})
    return out


def concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One column dict from several with the same columns (an empty one when there are none)."""
    if not parts:
        return empty_columns()
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def with_padding(data: bytes) -> np.ndarray:
    """The text as a ``uint8`` array followed by ``PAD`` zero bytes."""
    return np.frombuffer(data + bytes(PAD), dtype=np.uint8)


def line_bounds(buf: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without ``\\r\\n``) of every line in ``buf[:length]``.

    A last line without a newline counts as a line."""
    nl = np.flatnonzero(buf[:length] == 10)
    if length and (len(nl) == 0 or nl[-1] != length - 1):
        nl = np.append(nl, length)
    starts = np.empty(len(nl), dtype=np.int64)
    if len(nl):
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends[cr] -= 1
    return starts, ends


def _window(buf: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``(n, width)`` bytes from each start (the bytes past a field's end are whatever follows it)."""
    return sliding_window_view(buf, width)[starts]


def _masked(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    win = _window(buf, starts, width)
    mask = np.arange(width) < lengths[:, None]
    return np.where(mask, win, 0).astype(np.uint8), mask


def _width(lengths: np.ndarray, cap: int) -> int:
    return max(1, min(cap, int(lengths.max()) if len(lengths) else 1))


def parse_uint(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal unsigned integers (at most 18 digits) -> (int64 values, ok)."""
    lengths = ends - starts
    width = _width(lengths, 18)
    ok = (lengths > 0) & (lengths <= 18)
    win, mask = _masked(buf, starts, np.minimum(lengths, width), width)
    values = np.zeros(len(starts), dtype=np.int64)
    for c in range(width):
        digit = win[:, c].astype(np.int64) - _DIGIT0
        inside = mask[:, c]
        ok &= ~inside | ((digit >= 0) & (digit <= 9))
        values = np.where(inside, values * 10 + digit, values)
    return np.where(ok, values, 0), ok


def parse_seconds(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal seconds such as ``1300475167.096535`` or ``3.157831`` -> (int64 microseconds, ok).

    Digits past the sixth decimal are dropped (truncated toward zero)."""
    lengths = ends - starts
    width = _width(lengths, 30)
    ok = (lengths > 0) & (lengths <= 30)
    win, mask = _masked(buf, starts, np.minimum(lengths, width), width)
    is_dot = (win == 46) & mask
    ok &= is_dot.sum(axis=1) <= 1
    dot = np.where(is_dot.any(axis=1), is_dot.argmax(axis=1), lengths)
    whole = np.zeros(len(starts), dtype=np.int64)
    frac = np.zeros(len(starts), dtype=np.int64)
    digits = np.zeros(len(starts), dtype=np.int64)
    for c in range(width):
        inside = mask[:, c]
        digit = win[:, c].astype(np.int64) - _DIGIT0
        is_digit = (digit >= 0) & (digit <= 9)
        ok &= ~inside | is_digit | is_dot[:, c]
        before = inside & is_digit & (c < dot)
        after = inside & is_digit & (c > dot) & (c <= dot + 6)
        whole = np.where(before, whole * 10 + digit, whole)
        frac = np.where(after, frac * 10 + digit, frac)
        digits += inside & is_digit
    ok &= (digits > 0) & (dot <= 12)  # 12 integer digits are ~31,700 years of seconds
    places = np.clip(lengths - dot - 1, 0, 6)
    frac *= 10 ** (6 - places)
    return np.where(ok, whole * 1_000_000 + frac, 0), ok


# Fixed positions of "YYYY-MM-DD HH:MM:SS"; the date separator may be '-' or '/', the middle ' ' or 'T'.
_DATE_DIGITS: Final = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)


def parse_datetime(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``YYYY-MM-DD HH:MM:SS[.ffffff][Z]`` (also ``/`` dates, ``T``) -> (naive int64 microseconds, ok)."""
    lengths = ends - starts
    n = len(starts)
    zulu = (lengths > 19) & (buf[np.maximum(ends - 1, 0)] == ord("Z"))
    lengths = lengths - zulu
    width = 32
    ok = (lengths >= 19) & (lengths <= width)
    win, mask = _masked(buf, starts, np.minimum(np.maximum(lengths, 0), width), width)
    digit = win.astype(np.int64) - _DIGIT0
    is_digit = (digit >= 0) & (digit <= 9)
    ok &= is_digit[:, list(_DATE_DIGITS)].all(axis=1)
    sep = win[:, 4]
    ok &= ((sep == ord("-")) | (sep == ord("/"))) & (win[:, 7] == sep)
    ok &= (win[:, 10] == ord(" ")) | (win[:, 10] == ord("T"))
    ok &= (win[:, 13] == ord(":")) & (win[:, 16] == ord(":"))

    def num(*cols: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        for c in cols:
            out = out * 10 + digit[:, c]
        return out

    year, month, day = num(0, 1, 2, 3), num(5, 6), num(8, 9)
    hour, minute, second = num(11, 12), num(14, 15), num(17, 18)
    has_frac = lengths > 19
    ok &= ~has_frac | ((win[:, 19] == ord(".")) & (lengths > 20))
    frac = np.zeros(n, dtype=np.int64)
    for c in range(20, 26):
        inside = mask[:, c] & has_frac
        ok &= ~inside | is_digit[:, c]
        frac = np.where(inside, frac * 10 + digit[:, c], frac * 10)
    ok &= ~(mask[:, 26:] & has_frac[:, None] & ~is_digit[:, 26:]).any(axis=1)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(month, 0, 12)]
    month_days = month_days + ((month == 2) & leap)
    ok &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    ok &= (hour <= 23) & (minute <= 59) & (second <= 60)
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    return np.where(ok, seconds * 1_000_000 + frac, 0), ok


def local_to_utc(naive_us: np.ndarray, zone: str) -> np.ndarray:
    """Wall-clock microseconds in ``zone`` -> UTC microseconds; the offset is looked up once per distinct hour.

    Times that occur twice when clocks go back take the first (summer-time) reading."""
    if zone.upper() in ("UTC", "Z", "GMT", "ETC/UTC"):
        return naive_us
    tz = ZoneInfo(zone)
    hours = naive_us // 3_600_000_000
    unique, inverse = np.unique(hours, return_inverse=True)
    offsets = np.empty(len(unique), dtype=np.int64)
    for i, h in enumerate(unique.tolist()):
        wall = (datetime(1970, 1, 1) + timedelta(hours=h)).replace(tzinfo=tz)
        offset = wall.utcoffset()
        offsets[i] = int(offset.total_seconds() * 1_000_000) if offset is not None else 0
    return naive_us - offsets[inverse.ravel()]


def iso_to_us(text: str, zone: str = "UTC") -> int:
    """One ISO 8601 timestamp (with or without offset; without: wall clock of ``zone``) -> UTC microseconds."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC if zone.upper() in ("UTC", "Z") else ZoneInfo(zone))
    delta = parsed - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def texts(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, cap: int = PAD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct field texts -> (unique ``bytes`` values as an ``S`` array, inverse index per row, ok).

    Fields longer than ``cap`` bytes are not ok. Trailing NUL bytes are not kept (numpy ``S`` semantics)."""
    lengths = ends - starts
    width = _width(lengths, cap)
    ok = lengths <= width
    win, _ = _masked(buf, starts, np.minimum(lengths, width), width)
    if width <= 8:
        # Short texts (protocol names, histories): sort them as one integer each, far cheaper than strings.
        packed = np.zeros((len(starts), 8), dtype=np.uint8)
        packed[:, :width] = win
        keys, inverse = np.unique(packed.view(np.uint64).ravel(), return_inverse=True)
        unique = np.ascontiguousarray(keys.view(np.uint8).reshape(-1, 8)).view("S8").ravel()
        return unique, inverse.ravel(), ok
    raw = np.ascontiguousarray(win).view(f"S{width}").ravel()
    unique, inverse = np.unique(raw, return_inverse=True)
    return unique, inverse.ravel(), ok


def equals(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, token: bytes) -> np.ndarray:
    """Rows whose field is exactly ``token``."""
    if not token:
        return ends == starts
    if len(token) > PAD:
        return np.zeros(len(starts), dtype=bool)
    win = _window(buf, starts, len(token))
    return ((ends - starts) == len(token)) & (win == np.frombuffer(token, dtype=np.uint8)).all(axis=1)


def parse_ipv4(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dotted-quad text in canonical form (no leading zeros) -> (uint32 addresses, ok).

    Anything else (IPv6, padded or odd forms) is not ok here and is left to ``AddressCache``."""
    lengths = ends - starts
    width = _width(lengths, 15)
    ok = (lengths >= 7) & (lengths <= 15)
    win, mask = _masked(buf, starts, np.minimum(lengths, width), width)
    address = np.zeros(len(starts), dtype=np.int64)
    octet = np.zeros(len(starts), dtype=np.int64)
    digits = np.zeros(len(starts), dtype=np.int64)
    dots = np.zeros(len(starts), dtype=np.int64)
    for c in range(width):
        inside = mask[:, c]
        ch = win[:, c].astype(np.int64)
        is_digit = inside & (ch >= _DIGIT0) & (ch <= _DIGIT0 + 9)
        is_dot = inside & (ch == 46)
        ok &= ~inside | is_digit | is_dot
        ok &= ~(is_digit & (digits == 1) & (octet == 0))  # "01" is not canonical
        octet = np.where(is_digit, octet * 10 + ch - _DIGIT0, octet)
        digits += is_digit
        ok &= ~is_dot | ((digits >= 1) & (octet <= 255))
        ok &= digits <= 3
        address = np.where(is_dot, (address << 8) | octet, address)
        dots += is_dot
        octet = np.where(is_dot, 0, octet)
        digits = np.where(is_dot, 0, digits)
    ok &= (digits >= 1) & (octet <= 255) & (dots == 3)
    address = (address << 8) | np.where(ok, octet, 0)
    return np.where(ok, address, 0).astype(np.uint32), ok


class AddressCache:
    """Text of an IP address (bytes as logged) -> canonical text (RFC 5952 for IPv6), or None when invalid.

    Logs repeat addresses heavily, so each distinct text is checked once; the cache is cleared past ``size``."""

    def __init__(self, size: int = 1 << 17) -> None:
        self._known: dict[bytes, str | None] = {}
        self._size = size

    def get(self, raw: bytes) -> str | None:
        known = self._known.get(raw, False)
        if known is not False:
            return known  # type: ignore[return-value]
        if len(self._known) >= self._size:
            self._known.clear()
        text: str | None
        try:
            given = raw.decode("ascii").strip()
            family = socket.AF_INET6 if ":" in given else socket.AF_INET
            text = socket.inet_ntop(family, socket.inet_pton(family, given))
        except (UnicodeDecodeError, OSError, ValueError):
            text = None
        self._known[raw] = text
        return text

    def column(self, unique: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct raw texts + inverse -> per row: canonical text (object array), ok, is IPv6."""
        if not len(unique):
            return np.empty(0, dtype=object), np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
        canon = [self.get(bytes(u)) for u in unique.tolist()]
        good = np.array([c is not None for c in canon], dtype=bool)
        v6 = np.array([c is not None and ":" in c for c in canon], dtype=bool)
        values = np.empty(len(canon), dtype=object)
        values[:] = [c if c is not None else "" for c in canon]
        return values[inverse], good[inverse], v6[inverse]


def map_unique(
    unique: np.ndarray, inverse: np.ndarray, convert: Callable[[bytes], int | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``convert`` to each distinct text (None = invalid) -> (values per row, ok per row)."""
    converted = [convert(bytes(u)) for u in unique.tolist()]
    good = np.array([c is not None for c in converted] or [False], dtype=bool)
    values = np.array([c if c is not None else 0 for c in converted] or [0], dtype=np.int64)
    return values[inverse], good[inverse]


def protocol_number(raw: bytes) -> int | None:
    """Protocol name or number as logged -> IANA number; None when unknown or not IP."""
    text = raw.decode("ascii", "replace").strip().lower()
    if text.isdigit():
        number = int(text)
        return number if number <= 255 else None
    return PROTOCOL_NUMBERS.get(text)


def flag_letters(raw: bytes) -> int | None:
    """TCP flags as letters (``.AP.SF``, ``S_RA``) -> bit mask; ``0x1b`` hex is accepted too."""
    text = raw.decode("ascii", "replace").strip()
    if text.lower().startswith("0x"):
        try:
            return int(text, 16) & 0xFF
        except ValueError:
            return None
    bits = 0
    for ch in text:
        if ch in TCP_FLAG_BITS:
            bits |= TCP_FLAG_BITS[ch]
        elif ch not in "._":
            return None
    return bits


def zeek_history_flags(raw: bytes) -> int | None:
    """Zeek conn.log ``history`` -> the TCP flags it shows (SYN, SYN+ACK, ACK, FIN, RST)."""
    bits = 0
    for ch in raw.decode("ascii", "replace").lower():
        bits |= ZEEK_HISTORY_BITS.get(ch, 0)
    return bits


def icmp_responder_port(iana: np.ndarray, icmp_type: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Zeek's (and the packet collector's) ICMP responder "port": the counterpart type, or the code."""
    t = np.clip(icmp_type, 0, 255)
    counterpart = np.where(iana == PROTO_ICMP6, ICMP6_COUNTERPART[t], ICMP4_COUNTERPART[t])
    return np.where(counterpart >= 0, counterpart, code)


class FieldTable:
    """The separator-split fields of ``n`` lines that should each have ``nfields`` fields.

    ``span(j)`` gives the (start, end) offsets of field ``j`` for every line without splitting any line.
    Lines with another field count fail at once; ``fail`` records the first reason per line."""

    def __init__(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, sep: int, nfields: int) -> None:
        self.buf = buf
        self.starts = starts
        self.ends = ends
        self.n = len(starts)
        self.reason = np.full(self.n, None, dtype=object)
        self.bad = np.zeros(self.n, dtype=bool)
        lo = int(starts.min()) if self.n else 0
        hi = int(ends.max()) if self.n else 0
        seps = lo + np.flatnonzero(buf[lo:hi] == sep)
        first = np.searchsorted(seps, starts)
        found = np.searchsorted(seps, ends) - first + 1
        self._seps = seps
        self._first = first
        self._nfields = nfields
        wrong = found != nfields
        self._wrong = wrong if wrong.any() else None
        self._spans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if wrong.any():
            for i in np.flatnonzero(wrong).tolist():
                self.reason[i] = f"expected {nfields} fields separated by {chr(sep)!r}, found {int(found[i])}"
            self.bad |= wrong

    def span(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of field ``j`` (0-based) on every line; lines with the wrong field count get (s, s)."""
        if self.n == 0:
            return self.starts, self.ends
        if j in self._spans:
            return self._spans[j]
        last = len(self._seps) - 1
        if j == 0:
            s = self.starts
        else:
            s = self._seps[np.clip(self._first + j - 1, 0, max(last, 0))] + 1 if last >= 0 else self.starts
        if j == self._nfields - 1:
            e = self.ends
        else:
            e = self._seps[np.clip(self._first + j, 0, max(last, 0))] if last >= 0 else self.ends
        if self._wrong is not None:
            s = np.where(self._wrong, self.starts, s)
            e = np.where(self._wrong, self.starts, e)
        self._spans[j] = (s, e)
        return s, e

    def text(self, i: int, j: int) -> str:
        """Field ``j`` of line ``i`` as text (for messages)."""
        s, e = self.span(j)
        return bytes(self.buf[int(s[i]) : int(e[i])]).decode("utf-8", "backslashreplace")

    def fail(self, mask: np.ndarray, j: int, message: str) -> None:
        """Mark lines in ``mask`` bad with ``message``, ending in the field's text (first reason wins)."""
        new = mask & ~self.bad
        if new.any():
            s, e = self.span(j)
            for i in np.flatnonzero(new).tolist():
                value = bytes(self.buf[int(s[i]) : int(e[i])]).decode("utf-8", "backslashreplace")
                self.reason[i] = f"{message}, got {value[:80]!r}"
            self.bad |= new

    def fail_plain(self, mask: np.ndarray, message: str) -> None:
        """Mark lines in ``mask`` bad with ``message`` as given."""
        new = mask & ~self.bad
        if new.any():
            self.reason[new] = message
            self.bad |= new

    def retry(self, ok: np.ndarray, j: int, convert: Callable[[str], int]) -> tuple[np.ndarray, np.ndarray]:
        """Lines that failed a vectorised conversion, tried one by one with ``convert`` (raises ValueError).

        Returns (values for those lines, 0 elsewhere; ok mask including the rescued lines)."""
        values = np.zeros(self.n, dtype=np.int64)
        ok = ok.copy()
        for i in np.flatnonzero(~ok & ~self.bad).tolist():
            try:
                values[i] = convert(self.text(i, j))
            except (ValueError, OverflowError):
                continue
            ok[i] = True
        return values, ok
