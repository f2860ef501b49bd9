"""The batched wire format on Kafka.

One Kafka message carries many records, so the pipeline is not capped by kafka-python's per-message
cost (~31k messages/s here). Two encodings, named in the ``taishi-encoding`` header:

* ``arrow``  — an Arrow IPC stream of the flow columns (the default: see tests/benchmarks/bench_wire.py);
* ``ndjson`` — newline-delimited JSON objects, flat (``"source.ip"``) or nested ECS.

A message without our headers holding one JSON object (or JSON lines) is accepted too, so third-party
shippers (Vector, Filebeat, Zeek's Kafka writer) can feed the topic. Kafka compresses either on top.
This module needs pyarrow and numpy, not pandas, so collector hosts can encode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from taishi.pipeline import contract

ARROW = "arrow"
NDJSON = "ndjson"

Headers = list[tuple[str, bytes]]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "datetime64[ms, UTC]": pa.timestamp("ms", tz="UTC"),
    "str": pa.string(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
}


_DISTINCT_STRINGS = frozenset({"network.community_id", "url.original"})  # nearly unique per record


def arrow_schema(columns: Iterable[str]) -> pa.Schema:
    """Arrow schema for the given contract columns (unknown columns are strings)."""
    return pa.schema([(c, _ARROW_TYPES[contract.FLOW_DTYPES.get(c, "str")]) for c in columns])


def encode_arrow(columns: Mapping[str, Any]) -> bytes:
    """Encode a columnar batch (column -> numpy array / list / Arrow array) as an Arrow IPC stream.

    Timestamps may be given as int64 epoch milliseconds or datetime64 values.
    """
    arrays = []
    names = []
    for name, values in columns.items():
        typ = _ARROW_TYPES[contract.FLOW_DTYPES.get(name, "str")]
        if isinstance(values, pa.Array | pa.ChunkedArray):
            arr = values.cast(typ) if values.type != typ else values
        elif pa.types.is_timestamp(typ):
            v = np.asarray(values)
            arr = pa.array(v.astype("int64") if v.dtype.kind in "iu" else v.astype("datetime64[ms]"))
            arr = arr.cast(pa.int64()).cast(typ) if v.dtype.kind in "iu" else arr.cast(typ)
        else:
            arr = pa.array(values, type=typ, from_pandas=True)
        if pa.types.is_string(arr.type) and name not in _DISTINCT_STRINGS:
            # Addresses, institutions, sensors, names repeat: dictionary-encode them once at the source.
            # Smaller messages, and the pipeline reads them as categoricals without hashing every string.
            arr = arr.dictionary_encode()
        arrays.append(arr)
        names.append(name)
    table = pa.Table.from_arrays(arrays, names=names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def encode_ndjson(records: Iterable[Mapping[str, Any]]) -> bytes:
    """Encode records as newline-delimited JSON."""
    return b"\n".join(orjson.dumps(r) for r in records)


def headers(encoding: str, count: int, sensor: str) -> Headers:
    """Kafka headers naming schema version, encoding, record count and producing sensor."""
    return [
        (contract.HEADER_SCHEMA, f"flow/{contract.SCHEMA_VERSION}".encode()),
        (contract.HEADER_ENCODING, encoding.encode()),
        (contract.HEADER_COUNT, str(count).encode()),
        (contract.HEADER_SENSOR, sensor.encode()),
    ]


def message_key(org_id: str, sensor: str) -> bytes:
    """Message key: institution + sensor, so one sensor's batches stay in order on one partition."""
    return f"{org_id}|{sensor}".encode()


@dataclass(slots=True)
class Reject:
    """A record (or a whole message) that could not be used, with the bytes it came as."""

    raw: bytes
    reason: str
    index: int = -1  # record index inside its message; -1 for the whole message


@dataclass(slots=True)
class Decoded:
    """What one message decoded into: either an Arrow table or JSON rows, plus rejects."""

    table: pa.Table | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_raw: list[bytes] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def count(self) -> int:
        return (self.table.num_rows if self.table is not None else 0) + len(self.rows)


def decode(value: bytes | None, hdrs: Sequence[tuple[str, bytes]] | None) -> Decoded:
    """Decode one Kafka message value; never raises for bad input — bad parts become rejects."""
    if not value:
        return Decoded(rejects=[Reject(value or b"", "empty message")])
    h = dict(hdrs or ())
    schema = h.get(contract.HEADER_SCHEMA)
    if schema is not None and schema != f"flow/{contract.SCHEMA_VERSION}".encode():
        return Decoded(
            rejects=[Reject(value, f"unsupported schema {schema!r}, expected flow/{contract.SCHEMA_VERSION}")]
        )
    encoding = h.get(contract.HEADER_ENCODING, b"").decode("ascii", "replace")
    if encoding == ARROW or (not encoding and value[:4] == b"\xff\xff\xff\xff"):
        return _decode_arrow(value)
    if encoding in (NDJSON, ""):
        return _decode_json_lines(value)
    return Decoded(rejects=[Reject(value, f"unknown encoding {encoding!r}, expected arrow or ndjson")])


def _decode_arrow(value: bytes) -> Decoded:
    try:
        table = pa.ipc.open_stream(value).read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        return Decoded(rejects=[Reject(value, f"arrow batch unreadable: {exc}")])
    return Decoded(table=table)


def _decode_json_lines(value: bytes) -> Decoded:
    out = Decoded()
    for i, line in enumerate(value.split(b"\n")):
        line = line.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            reason = "not UTF-8" if "utf-8" in str(exc).lower() else f"invalid JSON: {exc}"
            out.rejects.append(Reject(line, reason, i))
            continue
        if not isinstance(obj, dict):
            out.rejects.append(Reject(line, f"expected a JSON object, got {type(obj).__name__}", i))
            continue
        out.rows.append(flatten(obj))
        out.row_raw.append(line)
    return out


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested ECS objects to dotted keys (``{"source": {"ip": x}}`` -> ``{"source.ip": x}``)."""
    if not prefix and not any(isinstance(v, dict) for v in obj.values()):
        return dict(obj)
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def sensor_batches(
    columns: Mapping[str, Any], batch_records: int, encoding: str = ARROW, max_span_ms: int = 5_000
) -> Iterable[tuple[bytes, bytes, Headers]]:
    """Cut a time-ordered columnar batch into messages of at most ``batch_records`` per (institution, sensor).

    The stream is cut into consecutive slices of at most ``batch_records`` rows and ``max_span_ms`` of event
    time, and each slice split by sensor, the way live collectors flush every few seconds; so messages of
    different sensors sharing a partition stay within a few seconds of event-time order.
    Yields ``(key, value, headers)`` ready for a producer; row order within a sensor is kept.
    """
    org = np.asarray(columns["organization.id"], dtype=object)
    n = len(org)
    sensor = np.asarray(columns.get("observer.name", np.full(n, "", dtype=object)), dtype=object)
    keys = np.char.add(np.char.add(org.astype(str), "|"), sensor.astype(str))
    uniq, inverse = np.unique(keys, return_inverse=True)
    ts = np.asarray(columns["@timestamp"])
    ts = ts.astype("datetime64[ms]").astype(np.int64) if ts.dtype.kind == "M" else ts.astype(np.int64)
    start = 0
    while start < n:
        stop = min(n, start + batch_records, int(np.searchsorted(ts, ts[start] + max_span_ms, side="left")))
        stop = max(stop, start + 1)
        inv = inverse[start:stop]
        for gi in np.unique(inv):
            sel = start + np.flatnonzero(inv == gi)
            o, s = str(uniq[gi]).split("|", 1)
            part = {name: _take(values, sel) for name, values in columns.items()}
            value = encode_arrow(part) if encoding == ARROW else encode_ndjson(_records(part, len(sel)))
            yield message_key(o, s), value, headers(encoding, len(sel), s)
        start = stop


def _take(values: Any, sel: np.ndarray) -> Any:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.take(pa.array(sel))
    return np.asarray(values)[sel]


def _records(part: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    cols = {k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in part.items()}
    return [{k: cols[k][i] for k in cols} for i in range(n)]
