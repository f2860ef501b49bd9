from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa

from taishi.pipeline import contract, wire


def test_arrow_roundtrip_keeps_types_and_values(sector_small):
    cols = {k: v[:500] for k, v in sector_small.items()}
    d = wire.decode(wire.encode_arrow(cols), wire.headers(wire.ARROW, 500, "s1"))
    assert not d.rejects and d.count == 500
    df = d.table.to_pandas()
    assert str(df["@timestamp"].dtype) == "datetime64[ms, UTC]"
    assert df["@timestamp"].astype("int64").tolist() == cols["@timestamp"].astype("int64").tolist()
    assert df["source.ip"].tolist() == cols["source.ip"].tolist()
    assert df["destination.port"].dtype == np.int32


def test_ndjson_lines_flat_and_nested_and_bad_lines():
    good_flat = {"@timestamp": 1, "source.ip": "10.0.0.1"}
    good_nested = {"source": {"ip": "10.0.0.2", "port": 5}, "organization": {"id": "bank-a"}}
    value = b"\n".join(
        [orjson.dumps(good_flat), b'{"trunc', b"\xff\xfe{}", b"[1,2]", orjson.dumps(good_nested)]
    )
    d = wire.decode(value, wire.headers(wire.NDJSON, 5, "s"))
    assert [r["source.ip"] for r in d.rows] == ["10.0.0.1", "10.0.0.2"]
    assert d.rows[1]["organization.id"] == "bank-a" and d.rows[1]["source.port"] == 5
    reasons = [r.reason for r in d.rejects]
    assert [r.index for r in d.rejects] == [1, 2, 3]
    assert reasons[0].startswith("invalid JSON") and "expected a JSON object" in reasons[2]
    assert d.rejects[0].raw == b'{"trunc'


def test_single_json_record_without_headers_is_accepted():
    d = wire.decode(b'{"source.ip": "1.2.3.4"}', None)
    assert d.count == 1 and not d.rejects


def test_truncated_arrow_and_unknown_schema_are_rejected_whole():
    cols = {"@timestamp": np.array([1, 2]), "source.ip": np.array(["1.1.1.1", "2.2.2.2"], dtype=object)}
    blob = wire.encode_arrow(cols)
    d = wire.decode(blob[: len(blob) // 2], wire.headers(wire.ARROW, 2, "s"))
    assert d.count == 0 and len(d.rejects) == 1 and "arrow batch unreadable" in d.rejects[0].reason
    d = wire.decode(blob, [(contract.HEADER_SCHEMA, b"flow/99")])
    assert "unsupported schema" in d.rejects[0].reason


def test_sensor_batches_keys_counts_and_order(sector_small):
    cols = sector_small
    seen: dict[bytes, list[int]] = {}
    total = 0
    for key, value, hdrs in wire.sensor_batches(cols, 1000):
        h = dict(hdrs)
        t = pa.ipc.open_stream(value).read_all()
        assert int(h[contract.HEADER_COUNT]) == t.num_rows <= 1000
        org, sensor = key.decode().split("|")
        assert set(t.column("organization.id").to_pylist()) == {org}
        assert h[contract.HEADER_SENSOR].decode() == sensor
        seen.setdefault(key, []).extend(t.column("@timestamp").cast(pa.int64()).to_pylist())
        total += t.num_rows
    assert total == len(cols["@timestamp"])
    for ts in seen.values():  # each sensor's records stay in time order
        assert ts == sorted(ts)
