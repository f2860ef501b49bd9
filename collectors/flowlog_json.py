"""JSON-lines flow logs read through a field map: which source field holds which contract column.

``JsonFlowMap`` is configuration (validated, pydantic); ``JsonLinesParser`` applies it line by line (orjson),
then builds the same numpy columns as the other flow-log parsers. ``ZEEK_CONN_JSON`` is the map for Zeek's
conn.log written as JSON.

A source field path is dotted: ``id.orig_h`` is found as a literal key (Zeek's flat JSON) or by walking
nested objects (``{"id": {"orig_h": ...}}``), whichever the line has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from taishi.collectors.flowlog_columns import (
    FLOW_LOG_DTYPES,
    PROTO_ICMP,
    PROTO_ICMP6,
    PROTOCOL_NUMBERS,
    AddressCache,
    FlowBatch,
    LineReject,
    empty_columns,
    flag_letters,
    iso_to_us,
    zeek_history_flags,
)
from taishi.pipeline import contract

__all__ = ["ZEEK_CONN_JSON", "JsonFlowMap", "JsonLinesParser"]

TimestampFormat = Literal["auto", "epoch_s", "epoch_ms", "epoch_us", "iso8601"]

_TIME_TARGETS: Final = ("@timestamp", "event.end")
_ADDRESS_TARGETS: Final = ("source.ip", "destination.ip")
_INT_TARGETS: Final[dict[str, int]] = {  # column -> largest value
    "source.port": 65535,
    "destination.port": 65535,
    "network.iana_number": 255,
    "source.bytes": 2**62,
    "source.packets": 2**62,
    "destination.bytes": 2**62,
    "destination.packets": 2**62,
}
# Contract columns a map may fill. organization.id and event.dataset are the shipper's and the map's.
_TARGETS: Final = frozenset(contract.FLOW_DTYPES) - {"organization.id", "event.dataset"}
_EXTRA_TARGETS: Final = tuple(sorted(_TARGETS - set(FLOW_LOG_DTYPES) - {"network.transport"}))
_UNIT_US: Final = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_MISSING: Final = object()


class JsonFlowMap(BaseModel):
    """Where the flow columns are in a JSON-lines log, and how its times are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: dict[str, str] = Field(
        description="source field path (dotted) -> contract column, e.g. {'src': 'source.ip'}; needs "
        "@timestamp, source.ip, destination.ip and network.iana_number or network.transport"
    )
    timestamp_format: TimestampFormat = Field(
        "auto",
        description="epoch_s/epoch_ms/epoch_us: numbers or numeric strings; iso8601: strings; auto: strings "
        "that are not numbers are ISO 8601, numbers are seconds below 1e11, milliseconds below 1e14, "
        "else microseconds",
    )
    timezone: str = Field("UTC", description="zone of ISO 8601 times written without an offset")
    duration_field: str | None = Field(None, description="field with the flow duration (when no end time)")
    duration_unit: Literal["s", "ms", "us", "ns"] = "s"
    tcp_flags_format: Literal["int", "letters", "zeek_history"] = Field(
        "int", description="taishi.flow.tcp_flags as a number, letters (.AP.SF), or a Zeek history"
    )
    match: dict[str, str] = Field(
        default_factory=dict,
        description="field path -> required value; a line where the field has another value is rejected",
    )
    dataset: str = Field("json", description="event.dataset of the records")

    @field_validator("fields")
    @classmethod
    def _known_targets(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v.values()) - _TARGETS)
        if unknown:
            raise ValueError(
                f"unknown target column(s) {unknown}; expected contract columns {sorted(_TARGETS)}"
            )
        targets = list(v.values())
        doubled = sorted({t for t in targets if targets.count(t) > 1} - {"network.iana_number"})
        if doubled:
            raise ValueError(f"column(s) {doubled} mapped from more than one field")
        need = [t for t in ("@timestamp", "source.ip", "destination.ip") if t not in targets]
        if need:
            raise ValueError(f"the map must name a source field for {need}")
        if "network.iana_number" not in targets and "network.transport" not in targets:
            raise ValueError("the map must name a field for network.iana_number or network.transport")
        return v

    @model_validator(mode="after")
    def _known_zone(self) -> JsonFlowMap:
        try:
            iso_to_us("2000-01-01T00:00:00", self.timezone)
        except Exception as exc:
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA zone") from exc
        return self


# Zeek conn.log as JSON (LogAscii::use_json=T): same fields as the TSV log.
ZEEK_CONN_JSON: Final = JsonFlowMap(
    fields={
        "ts": "@timestamp",
        "id.orig_h": "source.ip",
        "id.orig_p": "source.port",
        "id.resp_h": "destination.ip",
        "id.resp_p": "destination.port",
        "proto": "network.transport",
        "ip_proto": "network.iana_number",
        "orig_ip_bytes": "source.bytes",
        "orig_pkts": "source.packets",
        "resp_ip_bytes": "destination.bytes",
        "resp_pkts": "destination.packets",
        "history": "taishi.flow.tcp_flags",
    },
    timestamp_format="auto",
    duration_field="duration",
    tcp_flags_format="zeek_history",
    match={"_path": "conn"},
    dataset="zeek.conn",
)


def _lookup(obj: Mapping[str, Any], path: str) -> Any:
    """Value at a dotted path: a literal key first, then nested objects; ``_MISSING`` when absent."""
    if path in obj:
        return obj[path]
    head, dot, rest = path.partition(".")
    while dot:
        sub = obj.get(head)
        if isinstance(sub, Mapping):
            found = _lookup(sub, rest)
            if found is not _MISSING:
                return found
        nxt, dot, rest = rest.partition(".")
        head = f"{head}.{nxt}"
    return _MISSING


def _number(value: Any) -> float | int:
    if isinstance(value, bool):
        raise ValueError("a boolean")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    raise ValueError(f"a {type(value).__name__}")


def _time_us(value: Any, fmt: TimestampFormat, zone: str) -> int:
    if fmt == "iso8601" or (fmt == "auto" and isinstance(value, str)):
        if not isinstance(value, str):
            raise ValueError("expected an ISO 8601 string")
        try:
            number = _number(value)
        except ValueError:
            return iso_to_us(value, zone)
        if fmt == "iso8601":
            raise ValueError("expected an ISO 8601 string")
    else:
        number = _number(value)
    if fmt == "auto":
        magnitude = abs(number)
        fmt = "epoch_s" if magnitude < 1e11 else "epoch_ms" if magnitude < 1e14 else "epoch_us"
    factor = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1}[fmt]
    return int(number * factor) if isinstance(number, int) else round(number * factor)


def _integer(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower().startswith("0x"):
        return int(value.strip(), 16)
    number = _number(value)
    if isinstance(number, float):
        if not number.is_integer():
            raise ValueError("a fraction")
        number = int(number)
    return number


class _Reject(Exception):
    pass


class JsonLinesParser:
    """One JSON object per line -> flow columns, as ``JsonFlowMap`` says."""

    def __init__(self, field_map: JsonFlowMap) -> None:
        self.map = field_map
        self.dataset = field_map.dataset
        self._addresses = AddressCache()
        by_target: dict[str, list[str]] = {}
        for path, target in field_map.fields.items():
            by_target.setdefault(target, []).append(path)
        self._paths = by_target
        self._extra = tuple(t for t in _EXTRA_TARGETS if t in by_target)

    def reset(self) -> None:
        """Nothing to forget: JSON lines carry no header."""

    def learn_header(self, data: bytes) -> None:
        """Nothing to learn: JSON lines carry no header."""

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Nothing to take back."""

    def _get(self, obj: Mapping[str, Any], target: str) -> tuple[str, Any]:
        for path in self._paths.get(target, ()):
            value = _lookup(obj, path)
            if value is not _MISSING and value is not None:
                return path, value
        return (self._paths[target][0] if target in self._paths else ""), _MISSING

    def _row(self, obj: Mapping[str, Any]) -> tuple[Any, ...]:
        m = self.map
        for path, expected in m.match.items():
            value = _lookup(obj, path)
            if value is not _MISSING and str(value) != expected:
                raise _Reject(f"field {path} is {value!r}, expected {expected!r}")

        def need(target: str) -> tuple[str, Any]:
            path, value = self._get(obj, target)
            if value is _MISSING:
                raise _Reject(f"field {path} (-> {target}) is missing")
            return path, value

        def bad(path: str, target: str, value: Any, expected: str) -> _Reject:
            return _Reject(f"field {path} (-> {target}): expected {expected}, got {value!r:.80}")

        times: list[int | None] = []
        for target in _TIME_TARGETS:
            path, value = need(target) if target == "@timestamp" else self._get(obj, target)
            if value is _MISSING:
                times.append(None)
                continue
            try:
                times.append(_time_us(value, m.timestamp_format, m.timezone))
            except (ValueError, OverflowError):
                raise bad(path, target, value, f"a time ({m.timestamp_format})") from None
        start, end = times
        assert start is not None  # need() raised otherwise
        if end is None:
            end = start
            if m.duration_field is not None:
                value = _lookup(obj, m.duration_field)
                if value is not _MISSING and value is not None:
                    try:
                        end = start + round(float(_number(value)) * _UNIT_US[m.duration_unit])
                    except (ValueError, OverflowError):
                        raise bad(m.duration_field, "duration", value, "a number") from None

        addresses = []
        for target in _ADDRESS_TARGETS:
            path, value = need(target)
            text = self._addresses.get(value.encode()) if isinstance(value, str) else None
            if text is None:
                raise bad(path, target, value, "an IPv4 or IPv6 address")
            addresses.append(text)

        ints = []
        for target, high in _INT_TARGETS.items():
            path, value = self._get(obj, target)
            if value is _MISSING:
                ints.append(None if target == "network.iana_number" else 0)
                continue
            try:
                number = _integer(value)
            except (ValueError, OverflowError):
                raise bad(path, target, value, f"an integer 0-{high}") from None
            if not 0 <= number <= high:
                raise bad(path, target, value, f"an integer 0-{high}")
            ints.append(number)
        iana = ints[2]
        if iana is None:
            path, value = self._get(obj, "network.transport")
            if value is _MISSING:
                names = " or ".join(
                    p for t in ("network.iana_number", "network.transport") for p in self._paths.get(t, ())
                )
                raise _Reject(f"field {names} (-> network.iana_number) is missing")
            known = PROTOCOL_NUMBERS.get(str(value).strip().lower()) if isinstance(value, str) else None
            if known is None:
                raise bad(path, "network.transport", value, "a protocol name such as tcp, udp or icmp")
            iana = PROTO_ICMP6 if known == PROTO_ICMP and ":" in addresses[0] else known
            ints[2] = iana

        flags = 0
        path, value = self._get(obj, "taishi.flow.tcp_flags")
        if value is not _MISSING:
            try:
                if m.tcp_flags_format == "int":
                    flags = _integer(value)
                elif not isinstance(value, str):
                    raise ValueError(value)
                elif m.tcp_flags_format == "letters":
                    converted = flag_letters(value.encode())
                    if converted is None:
                        raise ValueError(value)
                    flags = converted
                else:
                    flags = zeek_history_flags(value.encode()) or 0
            except (ValueError, OverflowError):
                raise bad(path, "taishi.flow.tcp_flags", value, f"TCP flags ({m.tcp_flags_format})") from None
            if not 0 <= flags <= 0xFFF:
                raise bad(path, "taishi.flow.tcp_flags", value, "TCP flags 0-0xFFF")
            if iana != 6:
                flags = 0
        extra = []
        for target in self._extra:
            _, value = self._get(obj, target)
            extra.append("" if value is _MISSING else str(value))
        return (start, end, *addresses, *ints, flags, *extra)

    def parse(self, data: bytes, first_line: int = 1) -> FlowBatch:
        """Parse a block of JSON lines (a last line without newline counts)."""
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        rows: list[tuple[Any, ...]] = []
        rejects: list[LineReject] = []
        for i, raw in enumerate(lines):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                rejects.append(LineReject(first_line + i, f"invalid JSON: {exc}", raw.rstrip(b"\r")))
                continue
            if not isinstance(obj, dict):
                reason = f"expected a JSON object, got {type(obj).__name__}"
                rejects.append(LineReject(first_line + i, reason, raw.rstrip(b"\r")))
                continue
            try:
                rows.append(self._row(obj))
            except _Reject as exc:
                rejects.append(LineReject(first_line + i, str(exc), raw.rstrip(b"\r")))
        return FlowBatch(self._columns(rows), rejects, len(lines))

    def _columns(self, rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
        if not rows:
            return empty_columns(self._extra)
        cols = list(zip(*rows, strict=True))
        n = len(rows)

        def text(values: tuple[Any, ...]) -> np.ndarray:
            out = np.empty(n, dtype=object)
            out[:] = values
            return out

        start = np.array(cols[0], dtype=np.int64)
        out: dict[str, np.ndarray] = {
            "@timestamp": start // 1000,
            "event.end": np.array(cols[1], dtype=np.int64) // 1000,
            "event.dataset": np.full(n, self.dataset, dtype=object),
            "source.ip": text(cols[2]),
            "source.port": np.array(cols[4], dtype=np.int32),
            "destination.ip": text(cols[3]),
            "destination.port": np.array(cols[5], dtype=np.int32),
            "network.iana_number": np.array(cols[6], dtype=np.int16),
            "source.bytes": np.array(cols[7], dtype=np.int64),
            "source.packets": np.array(cols[8], dtype=np.int64),
            "destination.bytes": np.array(cols[9], dtype=np.int64),
            "destination.packets": np.array(cols[10], dtype=np.int64),
            "taishi.flow.tcp_flags": np.array(cols[11], dtype=np.int16),
        }
        for k, target in enumerate(self._extra):
            out[target] = text(cols[12 + k])
        return out
