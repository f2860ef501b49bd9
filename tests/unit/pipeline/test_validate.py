from __future__ import annotations

import pandas as pd
from communityid import CommunityID, FlowTuple

from taishi.pipeline import contract
from taishi.pipeline.validate import validate_flows

GOOD = {
    "@timestamp": "2026-11-25T08:00:00Z",
    "organization.id": "bank-a",
    "source.ip": "2001:db8::a",
    "source.port": 50000,
    "destination.ip": "2001:db8::1",
    "destination.port": 443,
    "network.transport": "tcp",
    "source.bytes": 100,
    "destination.bytes": 2000,
}


def _rows(*changes: dict) -> pd.DataFrame:
    rows = []
    for ch in changes:
        r = dict(GOOD)
        for k, v in ch.items():
            if v is KeyError:
                r.pop(k)
            else:
                r[k] = v
        rows.append(r)
    return pd.DataFrame.from_records(rows)


def test_good_rows_get_contract_dtypes_and_derived_fields():
    v = validate_flows(
        _rows({}, {"@timestamp": 1764057600000, "network.iana_number": 17, "network.transport": KeyError})
    )
    assert v.rejected.empty
    df = v.frame
    assert list(df.columns) == [c.name for c in contract.FLOW_COLUMNS]
    assert df["network.iana_number"].tolist() == [6, 17]
    assert df["network.transport"].tolist() == ["tcp", "udp"]
    assert df["destination.ip"].iloc[0] == "2001:db8::1"
    assert df["event.end"].iloc[0] == df["@timestamp"].iloc[0]
    ref = CommunityID().calc(FlowTuple.make_tcp("2001:db8::a", "2001:db8::1", 50000, 443))
    assert df["network.community_id"].iloc[0] == ref
    assert df["source.bytes"].dtype == "int64" and df["source.port"].dtype == "int32"


def test_each_bad_row_gets_a_reason_and_good_rows_survive():
    raw = _rows(
        {},  # 0 good
        {"source.ip": "2001:db8::zz"},  # 1 bad ip
        {"organization.id": KeyError},  # 2 missing org -> column still exists (NaN)
        {"destination.port": "https"},  # 3 wrong type
        {"destination.port": 70000},  # 4 out of range
        {"@timestamp": "yesterday"},  # 5 bad timestamp
        {"network.transport": "carrier-pigeon"},  # 6 unknown transport
        {"organization.id": "Bank A"},  # 7 bad org id
        {"source.bytes": -5},  # 8 negative
        {"source.ip": 12345},  # 9 wrong type for ip
        {"source.ip": "10.0.0.1"},  # 10 mixed families
    )
    v = validate_flows(raw)
    assert v.frame.index.tolist() == [0]
    r = v.rejected
    assert "source.ip" in r[1] and "2001:db8::zz" in r[1]
    assert r[2] == "missing required field organization.id"
    assert r[3].startswith("wrong type for destination.port")
    assert "destination.port out of range" in r[4]
    assert "@timestamp is not a timestamp" in r[5]
    assert "network.transport not one of" in r[6]
    assert "organization.id does not match" in r[7]
    assert "source.bytes out of range" in r[8]
    assert "wrong type for source.ip" in r[9]
    assert "different address families" in r[10]


def test_missing_required_column_rejects_all_rows_with_reason():
    raw = _rows({}, {}).drop(columns=["destination.ip"])
    v = validate_flows(raw)
    assert v.frame.empty
    assert set(v.rejected) == {"missing required field destination.ip"}


def test_given_community_id_is_kept_and_missing_one_is_computed():
    raw = _rows({"network.community_id": "1:abc="}, {})
    v = validate_flows(raw)
    assert v.frame["network.community_id"].tolist()[0] == "1:abc="
    assert v.frame["network.community_id"].tolist()[1].startswith("1:")
