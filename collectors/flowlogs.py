"""Flow-log files -> columnar flow batches in the record contract's names.

Formats (``FORMATS``; ``detect_format(path)`` picks one from the first lines, or name it yourself):

* ``zeek-tsv``  — Zeek conn.log as written by its ASCII writer: ``#separator``/``#fields`` header lines,
  ``-`` for unset and ``(empty)`` for empty fields, ``#close`` at the end; the header may repeat (logs joined
  end to end) and is re-read each time;
* ``zeek-json`` — Zeek conn.log with ``LogAscii::use_json``: one object per line, ``ts`` as epoch seconds or
  an ISO 8601 string (``json_timestamps``), dotted (``id.orig_h``) or nested (``id: {orig_h}``) keys;
* ``argus``     — Argus ``ra -c ,`` binetflow CSV (the CTU-13 layout: StartTime,Dur,Proto,SrcAddr,Sport,Dir,
  DstAddr,Dport,State,sTos,dTos,TotPkts,TotBytes,SrcBytes,Label), or with SrcPkts/DstPkts/DstBytes columns;
* ``nfdump``    — ``nfdump -o csv`` (ts,te,td,sa,da,sp,dp,pr,flg,...,ipkt,ibyt,opkt,obyt,...), summary ignored;
* ``json``      — any JSON-lines flow log, read through a ``JsonFlowMap`` (field paths -> contract columns).

Every parser returns a ``FlowBatch``: numpy columns (``FLOW_LOG_DTYPES``: ``@timestamp``/``event.end`` int64
epoch ms, addresses as object arrays of ``str``, ports int32, ``network.iana_number`` int16, counters int64)
and the rejected lines with the field at fault and what was expected. A bad line never stops the rest.

Conventions kept across formats so that one flow seen by several sensors looks the same:

* bytes are IP bytes (headers included), like NetFlow and the packet collector: Zeek's ``orig_ip_bytes`` /
  ``resp_ip_bytes``, not its payload ``orig_bytes``;
* ICMP puts the message type in ``source.port`` and, in ``destination.port``, the counterpart type of a
  request/reply pair or else the code (Zeek's ``id.orig_p``/``id.resp_p``; Community ID accepts both);
* Argus binetflow has ``SrcBytes`` and ``TotBytes`` only: ``destination.bytes`` = TotBytes - SrcBytes. Its
  packets are not split by direction, so ``source.packets`` = TotPkts and ``destination.packets`` = 0 (the
  same is done for any CSV that has only a total). Argus prints an ICMP "source port" as the two bytes
  type, code read little-endian (``0x0303`` port unreachable, ``0x0008`` echo request) and an ICMP id as
  destination port, which is dropped;
* nfdump puts ICMP as type * 256 + code in the destination port (or ``type.code`` text);
* Argus and nfdump print wall-clock times without a zone: pass ``timezone`` (an IANA name) when the tool
  did not run in UTC. Zeek and JSON epochs are UTC by definition.

The parsers are stateful only in what a header taught them (``state()``/``restore()``), so a tailer can
checkpoint them with its file offset. Only the standard library, numpy, orjson and pydantic are imported.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import orjson

from taishi.collectors.flowlog_columns import (
    FLOW_LOG_DTYPES,
    PROTO_ICMP,
    PROTO_ICMP6,
    PROTO_TCP,
    AddressCache,
    FieldTable,
    FlowBatch,
    LineReject,
    concat_columns,
    empty_columns,
    equals,
    flag_letters,
    icmp_responder_port,
    iso_to_us,
    line_bounds,
    local_to_utc,
    map_unique,
    parse_datetime,
    parse_ipv4,
    parse_seconds,
    parse_uint,
    protocol_number,
    texts,
    with_padding,
    zeek_history_flags,
)
from taishi.collectors.flowlog_json import ZEEK_CONN_JSON, JsonFlowMap, JsonLinesParser
from taishi.collectors.netflow_columns import AddressText

__all__ = [
    "FLOW_LOG_DTYPES",
    "FORMATS",
    "ZEEK_CONN_JSON",
    "AutoParser",
    "CsvFlowParser",
    "FlowBatch",
    "FlowLogParser",
    "JsonFlowMap",
    "JsonLinesParser",
    "LineReject",
    "ZeekTsvParser",
    "detect_format",
    "detect_format_bytes",
    "make_parser",
    "parse_file",
]

FORMATS: Final = ("zeek-tsv", "zeek-json", "argus", "nfdump", "json")
_MAX_ROWS: Final = 65_536  # rows decoded at once: bounds the temporary (rows x field width) arrays
_DETECT_BYTES: Final = 64 * 1024


class FlowLogParser(Protocol):
    """What the tailer needs from a parser."""

    @property
    def dataset(self) -> str: ...

    def parse(self, data: bytes, first_line: int = 1) -> FlowBatch:
        """Parse a block of complete lines; ``first_line`` is the 1-based number of its first line."""
        ...

    def learn_header(self, data: bytes) -> None:
        """Read only the header lines at the start of ``data`` (to resume in the middle of a file)."""
        ...

    def reset(self) -> None:
        """Forget the header (a new file starts)."""
        ...

    def state(self) -> dict[str, Any]:
        """What the header taught, as JSON-able values."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a ``state()``."""
        ...


def _int32(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int32)


class _DelimitedParser:
    """Shared walk over a block: header ("control") lines change the schema, data lines between them are
    decoded column-wise in chunks of at most ``_MAX_ROWS`` lines."""

    dataset = ""

    def __init__(self) -> None:
        self._addresses = AddressCache()
        self._ipv4_text = AddressText()

    # Subclasses: which lines are headers, what a header line does, and how data lines become columns.
    def _control_mask(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _control_line(self, line: bytes, number: int, rejects: list[LineReject]) -> None:
        raise NotImplementedError

    def _data(
        self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> tuple[dict[str, np.ndarray] | None, FieldTable | None, str | None]:
        """Columns of all lines (bad ones included) and the table that marks the bad ones; or no columns and
        a reason for every line (None: skip the lines silently)."""
        raise NotImplementedError

    def parse(self, data: bytes, first_line: int = 1) -> FlowBatch:
        """Parse a block of lines (a last line without newline counts)."""
        buf = with_padding(data)
        starts, ends = line_bounds(buf, len(data))
        n = len(starts)
        if n == 0:
            return FlowBatch(empty_columns(), [], 0)
        empty = ends == starts
        control = self._control_mask(buf, starts, ends) & ~empty
        rejects: list[LineReject] = []
        parts: list[dict[str, np.ndarray]] = []
        marks = [-1, *np.flatnonzero(control).tolist(), n]
        for a, b in itertools.pairwise(marks):
            if a >= 0:
                self._control_line(bytes(buf[starts[a] : ends[a]]), first_line + a, rejects)
            if b - a <= 1:
                continue
            rows = np.arange(a + 1, b)
            rows = rows[~empty[rows]]
            for lo in range(0, len(rows), _MAX_ROWS):
                chunk = rows[lo : lo + _MAX_ROWS]
                self._decode(buf, starts[chunk], ends[chunk], first_line + chunk, parts, rejects)
        return FlowBatch(concat_columns(parts), rejects, n)

    def _decode(
        self,
        buf: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        numbers: np.ndarray,
        parts: list[dict[str, np.ndarray]],
        rejects: list[LineReject],
    ) -> None:
        columns, table, reason = self._data(buf, starts, ends)
        if columns is None or table is None:
            if reason is not None:
                for s, e, number in zip(starts.tolist(), ends.tolist(), numbers.tolist(), strict=True):
                    rejects.append(LineReject(number, reason, bytes(buf[s:e])))
            return
        if table.bad.any():
            for i in np.flatnonzero(table.bad).tolist():
                raw = bytes(buf[int(starts[i]) : int(ends[i])])
                rejects.append(LineReject(int(numbers[i]), str(table.reason[i]), raw))
            keep = ~table.bad
            columns = {name: values[keep] for name, values in columns.items()}
        parts.append(columns)

    def learn_header(self, data: bytes) -> None:
        """Read the header lines at the start of ``data``; stop at the first data line."""
        buf = with_padding(data)
        starts, ends = line_bounds(buf, len(data))
        control = self._control_mask(buf, starts, ends)
        ignored: list[LineReject] = []
        for i in range(len(starts)):
            if ends[i] == starts[i]:
                continue
            if not control[i]:
                break
            self._control_line(bytes(buf[starts[i] : ends[i]]), i + 1, ignored)

    # Conversions shared by the subclasses.
    def _addresses_of(self, t: FieldTable, j: int, label: str) -> tuple[np.ndarray, np.ndarray]:
        """Address column -> (text per line, is IPv6); dotted quads are decoded without Python objects."""
        s, e = t.span(j)
        v4, ok = parse_ipv4(t.buf, s, e)
        values = np.empty(t.n, dtype=object)
        v6 = np.zeros(t.n, dtype=bool)
        if ok.any():
            values[ok] = self._ipv4_text.ipv4(v4[ok])
        rest = np.flatnonzero(~ok)
        if len(rest):
            unique, inverse, fits = texts(t.buf, s[rest], e[rest])
            text, good, is6 = self._addresses.column(unique, inverse)
            values[rest] = text
            v6[rest] = is6
            ok[rest] = good & fits
        t.fail(~ok, j, f"{label}: expected an IPv4 or IPv6 address")
        return values, v6

    @staticmethod
    def _count(t: FieldTable, j: int | None, label: str, unset: bytes | None = None) -> np.ndarray:
        if j is None:
            return np.zeros(t.n, dtype=np.int64)
        s, e = t.span(j)
        values, ok = parse_uint(t.buf, s, e)
        if unset is not None:
            ok |= equals(t.buf, s, e, unset)
        t.fail(~ok, j, f"{label}: expected a non-negative integer")
        return values


def _unescape(value: bytes) -> bytes:
    """Zeek's ``\\xNN`` escapes in header values."""
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), value)


# conn.log fields: required ones, and optional counters (0 when the column or the value is absent).
_ZEEK_REQUIRED: Final = ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")
_ZEEK_COUNTERS: Final = {
    "orig_ip_bytes": "source.bytes",
    "orig_pkts": "source.packets",
    "resp_ip_bytes": "destination.bytes",
    "resp_pkts": "destination.packets",
}


class ZeekTsvParser(_DelimitedParser):
    """Zeek conn.log in the ASCII (TSV) format; the ``#fields`` header says where each column is."""

    dataset = "zeek.conn"

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self._sep = b"\t"
        self._unset = b"-"
        self._empty = b"(empty)"
        self._path: str | None = None
        self._fields: list[str] | None = None
        self._problem: str | None = None

    def state(self) -> dict[str, Any]:
        return {
            "separator": self._sep.hex(),
            "unset": self._unset.hex(),
            "empty": self._empty.hex(),
            "path": self._path,
            "fields": self._fields,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self._sep = bytes.fromhex(state.get("separator", "09"))
        self._unset = bytes.fromhex(state.get("unset", "2d"))
        self._empty = bytes.fromhex(state.get("empty", b"(empty)".hex()))
        self._path = state.get("path")
        fields = state.get("fields")
        if fields is not None:
            self._set_fields([str(f) for f in fields])

    def _control_mask(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return buf[starts] == ord("#")

    def _control_line(self, line: bytes, number: int, rejects: list[LineReject]) -> None:
        if line.startswith(b"#separator"):
            # A new header begins (also when logs were joined end to end); its value is separated by a space.
            value = _unescape(line[len(b"#separator") :].strip(b" "))
            self.reset()
            if len(value) != 1:
                self._problem = f"#separator {value!r} on line {number} is not a single byte"
            else:
                self._sep = value
            return
        parts = line.split(self._sep)
        key = parts[0][1:].decode("ascii", "replace")
        values = parts[1:]
        if key == "unset_field" and values:
            self._unset = _unescape(values[0])
        elif key == "empty_field" and values:
            self._empty = _unescape(values[0])
        elif key == "path" and values:
            self._path = values[0].decode("utf-8", "replace")
            self._check()
        elif key == "fields":
            self._set_fields([v.decode("utf-8", "replace") for v in values])
        # #set_separator, #types, #open, #close and comments change nothing we read.

    def _set_fields(self, fields: list[str]) -> None:
        self._fields = fields
        self._index = {name: i for i, name in enumerate(fields)}
        self._check()

    def _check(self) -> None:
        self._problem = None
        if self._path is not None and self._path != "conn":
            self._problem = f"this is a Zeek {self._path!r} log, expected a conn log (#path conn)"
        elif self._fields is not None:
            missing = [f for f in _ZEEK_REQUIRED if f not in self._index]
            if missing:
                self._problem = f"#fields header lacks {', '.join(missing)} (needed for a flow record)"

    def _data(
        self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> tuple[dict[str, np.ndarray] | None, FieldTable | None, str | None]:
        if self._problem is not None:
            return None, None, self._problem
        if self._fields is None:
            return None, None, "data line before any #fields header line"
        ix = self._index
        t = FieldTable(buf, starts, ends, self._sep[0], len(self._fields))
        unset = self._unset

        s, e = t.span(ix["ts"])
        ts_us, ok = parse_seconds(buf, s, e)
        t.fail(~ok, ix["ts"], "field ts: expected epoch seconds such as 1300475167.096535")
        src, src_v6 = self._addresses_of(t, ix["id.orig_h"], "field id.orig_h")
        dst, _ = self._addresses_of(t, ix["id.resp_h"], "field id.resp_h")
        ports = []
        for name in ("id.orig_p", "id.resp_p"):
            s, e = t.span(ix[name])
            port, ok = parse_uint(buf, s, e)
            t.fail(~ok | (port > 65535), ix[name], f"field {name}: expected a port number 0-65535")
            ports.append(port)

        s, e = t.span(ix["proto"])
        unique, inverse, fits = texts(buf, s, e, cap=32)
        iana, named = map_unique(unique, inverse, protocol_number)
        named &= fits
        iana = np.where(named & (iana == PROTO_ICMP) & src_v6, PROTO_ICMP6, iana)
        if "ip_proto" in ix:  # Zeek >= 6.1 logs the IP protocol number itself
            s, e = t.span(ix["ip_proto"])
            number, given = parse_uint(buf, s, e)
            is_unset = equals(buf, s, e, unset)
            t.fail(~given & ~is_unset, ix["ip_proto"], "field ip_proto: expected an IP protocol number")
            t.fail(given & (number > 255), ix["ip_proto"], "field ip_proto: expected 0-255")
            iana = np.where(given, number, iana)
            named |= given
        t.fail(~named, ix["proto"], "field proto: expected tcp, udp or icmp (or an ip_proto column)")

        duration = np.zeros(t.n, dtype=np.int64)
        if "duration" in ix:
            s, e = t.span(ix["duration"])
            duration, ok = parse_seconds(buf, s, e)
            t.fail(~ok & ~equals(buf, s, e, unset), ix["duration"], "field duration: expected seconds")
        flags = np.zeros(t.n, dtype=np.int64)
        if "history" in ix:
            s, e = t.span(ix["history"])
            unique, inverse, _ = texts(buf, s, e)
            letters, _ = map_unique(unique, inverse, zeek_history_flags)
            flags = np.where((iana == PROTO_TCP) & ~equals(buf, s, e, self._empty), letters, 0)

        columns: dict[str, np.ndarray] = {
            "@timestamp": ts_us // 1000,
            "event.end": (ts_us + duration) // 1000,
            "event.dataset": np.full(t.n, self.dataset, dtype=object),
            "source.ip": src,
            "source.port": _int32(ports[0]),
            "destination.ip": dst,
            "destination.port": _int32(ports[1]),
            "network.iana_number": iana.astype(np.int16),
        }
        for field, column in _ZEEK_COUNTERS.items():
            columns[column] = self._count(t, ix.get(field), f"field {field}", unset)
        columns["taishi.flow.tcp_flags"] = flags.astype(np.int16)
        return columns, t, None


# CSV header names (lower-cased) per role; Argus ra names first, then nfdump's.
_CSV_ROLES: Final[dict[str, tuple[str, ...]]] = {
    "start": ("starttime", "stime", "ts", "firstseen"),
    "end": ("lasttime", "ltime", "te", "lastseen"),
    "duration": ("dur", "td", "duration"),
    "proto": ("proto", "pr"),
    "saddr": ("srcaddr", "saddr", "sa"),
    "daddr": ("dstaddr", "daddr", "da"),
    "sport": ("sport", "sp", "srcport"),
    "dport": ("dport", "dp", "dstport"),
    "sbytes": ("srcbytes", "sbytes", "ibyt"),
    "dbytes": ("dstbytes", "dbytes", "obyt"),
    "bytes": ("totbytes", "bytes", "byt"),
    "spkts": ("srcpkts", "spkts", "ipkt"),
    "dpkts": ("dstpkts", "dpkts", "opkt"),
    "pkts": ("totpkts", "pkts", "pkt"),
    "flags": ("flg",),
    "state": ("state",),
}
_CSV_REQUIRED: Final = ("start", "proto", "saddr", "daddr")
_CSV_DIALECTS: Final = ("argus", "nfdump")


def _csv_roles(names: list[str]) -> dict[str, int]:
    lower = [n.strip().lower() for n in names]
    roles: dict[str, int] = {}
    for role, aliases in _CSV_ROLES.items():
        for alias in aliases:
            if alias in lower:
                roles[role] = lower.index(alias)
                break
    return roles


def _port_text(text: str) -> int:
    """A port as Argus/nfdump may print it: decimal, ``0x0303`` hex, ``8.0`` (ICMP type.code), or empty."""
    text = text.strip()
    if not text:
        return 0
    if text.lower().startswith("0x"):
        return int(text, 16)
    if "." in text:
        icmp_type, _, code = text.partition(".")
        return int(icmp_type) * 256 + int(code)
    return int(text)


class CsvFlowParser(_DelimitedParser):
    """Argus binetflow or nfdump CSV; columns are found by their header names (``_CSV_ROLES``).

    ``dialect`` ("argus" or "nfdump") names the dataset and how ICMP type and code are packed into the
    ports; ``timezone`` is the zone of the wall-clock times the tool printed."""

    def __init__(self, dialect: str, timezone: str = "UTC") -> None:
        if dialect not in _CSV_DIALECTS:
            raise ValueError(f"CSV dialect {dialect!r} unknown, expected one of {', '.join(_CSV_DIALECTS)}")
        super().__init__()
        local_to_utc(np.zeros(1, dtype=np.int64), timezone)  # an unknown zone fails here, not per line
        self.dialect = dialect
        self.dataset = dialect
        self.timezone = timezone
        self.reset()

    def reset(self) -> None:
        self._names: list[str] | None = None
        self._roles: dict[str, int] = {}
        self._summary = False

    def state(self) -> dict[str, Any]:
        return {"names": self._names, "summary": self._summary}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.reset()
        names = state.get("names")
        if names is not None:
            self._names = [str(n) for n in names]
            self._roles = _csv_roles(self._names)
        self._summary = bool(state.get("summary", False))

    def _control_mask(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        first = buf[starts] | 0x20  # ASCII letters to lower case
        return ((first >= ord("a")) & (first <= ord("z"))) | (buf[starts] == ord("#"))

    def _control_line(self, line: bytes, number: int, rejects: list[LineReject]) -> None:
        text = line.decode("utf-8", "replace").strip()
        if text.startswith("#"):
            return
        names = [n.strip() for n in text.split(",")]
        roles = _csv_roles(names)
        if all(r in roles for r in _CSV_REQUIRED):
            self._names, self._roles, self._summary = names, roles, False
        elif text == "Summary" or text.startswith("No matched flows"):
            self._names, self._roles, self._summary = None, {}, True  # nfdump's totals follow
        elif not self._summary:
            missing = ", ".join(r for r in _CSV_REQUIRED if r not in roles)
            rejects.append(
                LineReject(number, f"not a data line and not a flow CSV header (it lacks {missing})", line)
            )

    def _times(self, t: FieldTable, j: int, label: str) -> np.ndarray:
        """Wall-clock date-times (in ``timezone``) or epoch seconds -> UTC microseconds."""
        s, e = t.span(j)
        wall, ok_wall = parse_datetime(t.buf, s, e)
        out = local_to_utc(wall, self.timezone) if ok_wall.any() else wall
        epoch, ok_epoch = parse_seconds(t.buf, s, e)
        out = np.where(ok_wall, out, epoch)
        ok = ok_wall | ok_epoch
        for i in np.flatnonzero(~ok & ~t.bad).tolist():
            try:
                out[i] = iso_to_us(t.text(i, j), self.timezone)
                ok[i] = True
            except ValueError:
                pass
        t.fail(~ok, j, f"{label}: expected a date-time like 2011/08/10 09:46:53.047277 or epoch seconds")
        return out

    def _number(self, t: FieldTable, role: str, label: str, port: bool = False) -> np.ndarray:
        j = self._roles.get(role)
        if j is None:
            return np.zeros(t.n, dtype=np.int64)
        s, e = t.span(j)
        values, ok = parse_uint(t.buf, s, e)
        if port:
            more, rescued = t.retry(ok, j, _port_text)
            values = np.where(rescued & ~ok, more, values)
            ok = rescued
            t.fail(~ok | (values > 65535), j, f"{label}: expected a port number 0-65535 (decimal or 0x hex)")
        else:
            t.fail(~ok, j, f"{label}: expected a non-negative integer")
        return values

    def _data(
        self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> tuple[dict[str, np.ndarray] | None, FieldTable | None, str | None]:
        if self._names is None:
            return None, None, None if self._summary else "data line before the CSV header line"
        roles = self._roles
        names = self._names
        t = FieldTable(buf, starts, ends, ord(","), len(names))

        def label(role: str) -> str:
            return f"column {names[roles[role]]}"

        start = self._times(t, roles["start"], label("start"))
        if "end" in roles:
            end = self._times(t, roles["end"], label("end"))
        elif "duration" in roles:
            s, e = t.span(roles["duration"])
            duration, ok = parse_seconds(buf, s, e)
            t.fail(~ok, roles["duration"], f"{label('duration')}: expected seconds")
            end = start + duration
        else:
            end = start
        s, e = t.span(roles["proto"])
        unique, inverse, fits = texts(buf, s, e, cap=32)
        iana, known = map_unique(unique, inverse, protocol_number)
        t.fail(
            ~(known & fits),
            roles["proto"],
            f"{label('proto')}: expected an IP protocol name or number (ARP and other link-layer records are no IP flows)",
        )
        src, src_v6 = self._addresses_of(t, roles["saddr"], label("saddr"))
        dst, _ = self._addresses_of(t, roles["daddr"], label("daddr"))
        iana = np.where((iana == PROTO_ICMP) & src_v6, PROTO_ICMP6, iana)

        sport = self._number(t, "sport", label("sport") if "sport" in roles else "", port=True)
        dport = self._number(t, "dport", label("dport") if "dport" in roles else "", port=True)
        icmp = (iana == PROTO_ICMP) | (iana == PROTO_ICMP6)
        if icmp.any():
            if self.dialect == "argus":
                icmp_type, code = sport & 0xFF, sport >> 8
            else:
                icmp_type, code = dport >> 8, dport & 0xFF
            sport = np.where(icmp, icmp_type, sport)
            dport = np.where(icmp, icmp_responder_port(iana, icmp_type, code), dport)

        src_bytes = self._number(t, "sbytes", label("sbytes") if "sbytes" in roles else "")
        if "dbytes" in roles:
            dst_bytes = self._number(t, "dbytes", label("dbytes"))
        elif "bytes" in roles:
            total = self._number(t, "bytes", label("bytes"))
            if "sbytes" in roles:
                dst_bytes = total - src_bytes
                t.fail(
                    dst_bytes < 0, roles["bytes"], f"{label('bytes')}: expected at least {label('sbytes')}"
                )
            else:
                src_bytes, dst_bytes = total, np.zeros(t.n, dtype=np.int64)
        else:
            dst_bytes = np.zeros(t.n, dtype=np.int64)
        if "spkts" in roles:
            src_pkts = self._number(t, "spkts", label("spkts"))
            dst_pkts = self._number(t, "dpkts", label("dpkts") if "dpkts" in roles else "")
        else:
            # Only a total: its split by direction is unknown, so it all goes to the source (see module doc).
            src_pkts = self._number(t, "pkts", label("pkts") if "pkts" in roles else "")
            dst_pkts = np.zeros(t.n, dtype=np.int64)

        flags = np.zeros(t.n, dtype=np.int64)
        role = "flags" if "flags" in roles else "state" if "state" in roles else None
        if role is not None:
            s, e = t.span(roles[role])
            unique, inverse, _ = texts(buf, s, e)
            # Argus' State holds TCP flags per direction ("SRPA_SPA") only with the '_'; else a state name.
            convert = flag_letters if role == "flags" else lambda r: flag_letters(r) if b"_" in r else 0
            letters, known = map_unique(unique, inverse, convert)
            flags = np.where((iana == PROTO_TCP) & known, letters, 0)

        columns = {
            "@timestamp": start // 1000,
            "event.end": end // 1000,
            "event.dataset": np.full(t.n, self.dataset, dtype=object),
            "source.ip": src,
            "source.port": _int32(sport),
            "destination.ip": dst,
            "destination.port": _int32(dport),
            "network.iana_number": iana.astype(np.int16),
            "source.bytes": src_bytes,
            "source.packets": src_pkts,
            "destination.bytes": dst_bytes,
            "destination.packets": dst_pkts,
            "taishi.flow.tcp_flags": flags.astype(np.int16),
        }
        return columns, t, None


def detect_format_bytes(head: bytes, source: str = "data") -> str:
    """The format (one of ``FORMATS``) of a log from its first lines; ValueError naming ``source`` if unknown."""
    seen = b""
    for line in head.splitlines()[:64]:
        text = line.strip()
        if not text:
            continue
        if text.startswith((b"#separator", b"#fields")):
            return "zeek-tsv"
        if text.startswith(b"#"):
            continue
        seen = text
        if text.startswith(b"{"):
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue  # the head may end inside a line
            if (
                isinstance(obj, dict)
                and "ts" in obj
                and ("id.orig_h" in obj or (isinstance(obj.get("id"), dict) and "orig_h" in obj["id"]))
            ):
                return "zeek-json"
            return "json"
        names = {n.strip().lower() for n in text.decode("utf-8", "replace").split(",")}
        if {"starttime", "srcaddr", "dstaddr"} <= names:
            return "argus"
        if {"ts", "te", "sa", "da", "pr"} <= names:
            return "nfdump"
        break
    raise ValueError(
        f"{source}: cannot tell the flow-log format from its first lines (expected a Zeek #separator/#fields "
        f"header, a JSON object per line, or an Argus/nfdump CSV header); first line: {seen[:100]!r}"
    )


def detect_format(path: str | Path) -> str:
    """The format (one of ``FORMATS``) of the log at ``path``, from its first 64 KiB."""
    with open(path, "rb") as f:
        head = f.read(_DETECT_BYTES)
    return detect_format_bytes(head, str(path))


def make_parser(fmt: str, *, field_map: JsonFlowMap | None = None, timezone: str = "UTC") -> FlowLogParser:
    """A parser for ``fmt`` (see ``FORMATS``); "json" needs ``field_map``; ``timezone`` is for Argus/nfdump."""
    if fmt == "zeek-tsv":
        return ZeekTsvParser()
    if fmt == "zeek-json":
        return JsonLinesParser(field_map or ZEEK_CONN_JSON)
    if fmt in _CSV_DIALECTS:
        return CsvFlowParser(fmt, timezone)
    if fmt == "json":
        if field_map is None:
            raise ValueError("format 'json' needs a field map (JsonFlowMap) naming where each column is")
        return JsonLinesParser(field_map)
    raise ValueError(f"flow-log format {fmt!r} unknown, expected one of {', '.join(FORMATS)}")


class AutoParser:
    """A parser that picks its format from the first lines it is given (``detect_format_bytes``)."""

    def __init__(self, *, field_map: JsonFlowMap | None = None, timezone: str = "UTC") -> None:
        self._field_map = field_map
        self._timezone = timezone
        self.format: str | None = None
        self._inner: FlowLogParser | None = None

    @property
    def dataset(self) -> str:
        return self._inner.dataset if self._inner is not None else ""

    def _choose(self, data: bytes) -> FlowLogParser | None:
        if self._inner is None:
            try:
                fmt = detect_format_bytes(data[:_DETECT_BYTES])
            except ValueError:
                return None
            if fmt == "json" and self._field_map is None:
                return None
            self._inner = make_parser(fmt, field_map=self._field_map, timezone=self._timezone)
            self.format = fmt
        return self._inner

    def parse(self, data: bytes, first_line: int = 1) -> FlowBatch:
        inner = self._choose(data)
        if inner is not None:
            return inner.parse(data, first_line)
        reason = (
            "JSON lines need a field map (JsonFlowMap)"
            if data.lstrip().startswith(b"{")
            else "cannot tell the flow-log format from the first lines"
        )
        lines = data.splitlines()
        rejects = [LineReject(first_line + i, reason, raw) for i, raw in enumerate(lines) if raw.strip()]
        return FlowBatch(empty_columns(), rejects, len(lines))

    def learn_header(self, data: bytes) -> None:
        inner = self._choose(data)
        if inner is not None:
            inner.learn_header(data)

    def reset(self) -> None:
        if self._inner is not None:
            self._inner.reset()

    def state(self) -> dict[str, Any]:
        return {"format": self.format, "inner": self._inner.state() if self._inner is not None else None}

    def restore(self, state: Mapping[str, Any]) -> None:
        fmt = state.get("format")
        if fmt is None:
            return
        self._inner = make_parser(str(fmt), field_map=self._field_map, timezone=self._timezone)
        self.format = str(fmt)
        if state.get("inner") is not None:
            self._inner.restore(state["inner"])


def parse_file(
    path: str | Path,
    fmt: str | None = None,
    *,
    field_map: JsonFlowMap | None = None,
    timezone: str = "UTC",
    block_bytes: int = 8 << 20,
) -> FlowBatch:
    """Parse a whole flow-log file (format detected unless given) in blocks of about ``block_bytes``."""
    parser = make_parser(fmt or detect_format(path), field_map=field_map, timezone=timezone)
    columns: list[dict[str, np.ndarray]] = []
    rejects: list[LineReject] = []
    lines = 0
    with open(path, "rb") as f:
        rest = b""
        while True:
            chunk = f.read(block_bytes)
            data = rest + chunk
            if not chunk:
                cut = len(data)
            else:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
            if cut:
                batch = parser.parse(data[:cut], lines + 1)
                columns.append(batch.columns)
                rejects.extend(batch.rejects)
                lines += batch.lines
            rest = data[cut:]
            if not chunk:
                break
    return FlowBatch(concat_columns([c for c in columns if len(c["@timestamp"])]), rejects, lines)
