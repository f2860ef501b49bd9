"""Enrichment of validated batches: internal ranges, assets, threat intel, GeoIP and ASN.

The GeoIP and ASN databases are written by ``mmdb_writer`` (no network here); the writer is itself
checked against the ``maxminddb`` reader at the end of this module.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import maxminddb
import numpy as np
import pandas as pd
import pytest

from taishi.pipeline import contract
from taishi.pipeline.config import EnrichSettings, Institution, Settings
from taishi.pipeline.enrich import Enricher, Indicator, load_indicators
from taishi.pipeline.validate import validate_flows
from tests.unit.pipeline.mmdb_writer import (
    DATA_SECTION_SEPARATOR,
    METADATA_MARKER,
    UInt,
    build_mmdb,
    encode,
    write_mmdb,
)

# bank-a and bank-b have different internal ranges; 10.2.0.5 is internal to bank-b only, and 172.20.0.0/16
# is internal to both. bank-c is not configured and gets the default ranges.
INSTITUTIONS = [
    Institution(id="bank-a", internal_cidrs=["10.1.0.0/16", "172.20.0.0/16", "2001:db8:a::/48"]),
    Institution(
        id="bank-b", internal_cidrs=["10.2.0.0/16", "172.20.0.0/16", "192.0.2.0/24", "2001:db8:b::/48"]
    ),
]
GEO_COLUMNS = [
    f"{side}.{field}"
    for side in ("source", "destination")
    for field in ("geo.country_iso_code", "as.number", "as.organization.name")
]


def _settings(**enrich: Any) -> Settings:
    return Settings(institutions=INSTITUTIONS, enrich=EnrichSettings(**enrich))


def _batch(*flows: tuple[str, str, str]) -> pd.DataFrame:
    """A validated batch of (organization.id, source.ip, destination.ip) flows."""
    raw = pd.DataFrame.from_records(
        [
            {
                "@timestamp": "2026-11-25T08:00:00Z",
                "organization.id": org,
                "source.ip": src,
                "source.port": 50000 + i,
                "destination.ip": dst,
                "destination.port": 443,
                "network.transport": "tcp",
                "source.bytes": 100 * (i + 1),
                "source.packets": i + 1,
                "destination.bytes": 1000,
                "destination.packets": 2,
            }
            for i, (org, src, dst) in enumerate(flows)
        ]
    )
    v = validate_flows(raw)
    assert v.rejected.empty, v.rejected.tolist()
    return v.frame


def _col(df: pd.DataFrame, name: str) -> list[Any]:
    return df[name].tolist()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# Internal/external and network.direction -------------------------------------------------------------


def test_direction_follows_each_institutions_own_ranges():
    # (org, source, destination) -> direction; all in one batch so institutions share distinct addresses.
    table = [
        ("bank-a", "10.1.0.5", "10.1.0.6", "internal"),
        ("bank-a", "10.1.0.5", "198.51.100.7", "outbound"),
        ("bank-a", "198.51.100.7", "10.1.0.5", "inbound"),
        ("bank-a", "10.2.0.5", "198.51.100.7", "external"),  # bank-b's range means nothing to bank-a
        ("bank-b", "10.2.0.5", "198.51.100.7", "outbound"),  # ... and the same address is bank-b's own
        ("bank-b", "10.1.0.5", "10.2.0.5", "inbound"),
        ("bank-a", "172.20.0.1", "172.20.9.9", "internal"),  # a range both institutions use
        ("bank-b", "172.20.0.1", "172.20.9.9", "internal"),
        ("bank-b", "192.0.2.200", "203.0.113.9", "outbound"),  # high-bit IPv4 range
        ("bank-a", "192.168.1.5", "10.9.9.9", "external"),  # configured: no default ranges
        ("bank-a", "2001:db8:a::5", "2001:db8:b::5", "outbound"),
        ("bank-b", "2001:db8:a::5", "2001:db8:b::5", "inbound"),
        ("bank-b", "2001:db8:b:1::1", "2001:db8:b:ffff::2", "internal"),
        ("bank-a", "2001:db8:ff::1", "2001:db8:ff::2", "external"),
    ]
    out = Enricher(_settings()).enrich(_batch(*(row[:3] for row in table)))
    assert _col(out, "network.direction") == [row[3] for row in table]
    assert out["taishi.source.internal"].dtype == bool
    assert _col(out, "taishi.source.internal") == [row[3] in ("internal", "outbound") for row in table]
    assert _col(out, "taishi.destination.internal") == [row[3] in ("internal", "inbound") for row in table]


@pytest.mark.parametrize(
    ("address", "internal"),
    [
        ("10.1.0.0", True),
        ("10.1.255.255", True),
        ("10.0.255.255", False),
        ("10.2.0.0", False),
        ("2001:db8:a::", True),
        ("2001:db8:a:ffff:ffff:ffff:ffff:ffff", True),
        ("2001:db8:9:ffff:ffff:ffff:ffff:ffff", False),
        ("2001:db8:b::", False),
        ("2001:DB8:A:0::7", True),  # any text form of an internal address
    ],
)
def test_range_edges_of_ipv4_and_ipv6_networks(address: str, internal: bool):
    peer = "198.51.100.7" if "." in address else "2001:db8:ff::7"
    out = Enricher(_settings()).enrich(_batch(("bank-a", address, peer)))
    assert _col(out, "taishi.source.internal") == [internal]
    assert _col(out, "network.direction") == ["outbound" if internal else "external"]


def test_unconfigured_institution_gets_the_default_ranges():
    table = [
        ("bank-c", "192.168.1.5", "10.9.9.9", "internal"),
        ("bank-c", "172.16.0.1", "8.8.8.8", "outbound"),
        ("bank-c", "172.32.0.1", "192.168.0.1", "inbound"),  # just past 172.16.0.0/12
        ("bank-c", "fd00::1", "2001:db8:a::5", "outbound"),  # fc00::/7
        ("bank-c", "fe80::1", "fbff:ffff::1", "external"),
    ]
    out = Enricher(_settings()).enrich(_batch(*(row[:3] for row in table)))
    assert _col(out, "network.direction") == [row[3] for row in table]


def test_unconfigured_institution_follows_configured_default_ranges():
    settings = Settings(institutions=INSTITUTIONS, default_internal_cidrs=["100.64.0.0/10"])
    out = Enricher(settings).enrich(
        _batch(("bank-c", "100.64.0.1", "10.9.9.9"), ("bank-a", "100.64.0.1", "10.1.0.1"))
    )
    assert _col(out, "network.direction") == ["outbound", "inbound"]


def test_batch_keeps_its_index_and_the_input_is_not_modified():
    raw = pd.DataFrame.from_records(
        [
            {
                "@timestamp": 1764057600000,
                "organization.id": "bank-a",
                "source.ip": src,
                "destination.ip": dst,
            }
            | {"network.transport": "udp", "source.bytes": 10, "destination.bytes": 5}
            for src, dst in [
                ("10.1.0.1", "198.51.100.1"),
                ("not-an-ip", "10.1.0.1"),
                ("198.51.100.2", "10.1.0.2"),
            ]
        ]
    )
    v = validate_flows(raw)
    assert v.rejected.index.tolist() == [1]
    before = v.frame.copy()
    out = Enricher(_settings()).enrich(v.frame)
    pd.testing.assert_frame_equal(v.frame, before)
    assert out.index.tolist() == [0, 2]
    assert out.loc[2, "network.direction"] == "inbound"
    assert _col(out, "network.bytes") == [15, 15]


def test_network_totals_add_both_directions():
    out = Enricher(_settings()).enrich(
        _batch(("bank-a", "10.1.0.1", "198.51.100.1"), ("bank-a", "10.1.0.1", "198.51.100.2"))
    )
    assert _col(out, "network.bytes") == [1100, 1200]
    assert _col(out, "network.packets") == [3, 4]
    assert out["network.bytes"].dtype == np.int64


def test_empty_batch_gets_the_columns():
    empty = _batch(("bank-a", "10.1.0.1", "198.51.100.1")).iloc[:0]
    out = Enricher(_settings()).enrich(empty)
    assert len(out) == 0
    for name in ("network.bytes", "network.direction", "taishi.source.internal", "taishi.threat.indicator"):
        assert name in out.columns


def test_every_enrichment_column_has_its_contract_dtype(tmp_path: Path, geo_dbs: dict[str, Path]):
    assets = _write(
        tmp_path / "assets.csv", "organization.id,ip,owner,criticality\nbank-a,10.1.0.1,ops,high\n"
    )
    feed = _write(tmp_path / "feed.txt", "203.0.113.7\n")
    settings = _settings(
        asset_inventory=assets,
        intel_files=[feed],
        geoip_country_db=geo_dbs["country"],
        geoip_asn_db=geo_dbs["asn"],
    )
    out = Enricher(settings).enrich(_batch(("bank-a", "10.1.0.1", "203.0.113.7")))
    kinds = {"str": "O", "int64": "i", "bool": "b"}
    for column in contract.ENRICHED_COLUMNS:
        assert out[column.name].dtype.kind == kinds[column.dtype], column.name
    known = {c.name for c in contract.FLOW_COLUMNS} | {c.name for c in contract.ENRICHED_COLUMNS}
    assert set(out.columns) <= known


# Asset inventory -------------------------------------------------------------------------------------

ASSETS = """organization.id,ip,owner,criticality
bank-a,10.1.0.5,payments,high
bank-a,198.51.100.7,cloud-vendor,low
bank-a,172.20.0.9,a-branch,medium
bank-b,172.20.0.9,b-datacentre,critical
bank-b,10.2.0.5,core-banking,critical
bank-a,172.20.0.10,a-only,low
bank-b,2001:DB8:B:0::10,hsm,critical
bank-b,10.2.0.6,printers,
"""


def test_assets_annotate_internal_addresses_of_their_own_institution(tmp_path: Path):
    enricher = Enricher(_settings(asset_inventory=_write(tmp_path / "assets.csv", ASSETS)))
    out = enricher.enrich(
        _batch(
            ("bank-a", "10.1.0.5", "198.51.100.7"),  # external hosts get nothing even when listed
            ("bank-b", "10.1.0.5", "10.2.0.5"),  # 10.1.0.5 is bank-a's asset, external to bank-b
            ("bank-a", "10.2.0.5", "10.1.0.5"),  # 10.2.0.5 is bank-b's asset, external to bank-a
            ("bank-a", "172.20.0.9", "172.20.0.10"),  # internal to both: each institution's own entry
            ("bank-b", "172.20.0.9", "172.20.0.10"),
            ("bank-b", "2001:db8:b::10", "2001:db8:b::11"),  # inventory text form differs
            ("bank-b", "10.2.0.6", "10.2.0.7"),  # empty criticality; unlisted internal host
        )
    )
    assert _col(out, "taishi.source.asset.owner") == [
        "payments",
        "",
        "",
        "a-branch",
        "b-datacentre",
        "hsm",
        "printers",
    ]
    assert _col(out, "taishi.source.asset.criticality") == [
        "high",
        "",
        "",
        "medium",
        "critical",
        "critical",
        "",
    ]
    assert _col(out, "taishi.destination.asset.owner") == [
        "",
        "core-banking",
        "payments",
        "a-only",
        "",
        "",
        "",
    ]
    assert _col(out, "taishi.destination.asset.criticality") == ["", "critical", "high", "low", "", "", ""]


def test_assets_without_a_criticality_column(tmp_path: Path):
    path = _write(tmp_path / "assets.csv", "organization.id,ip,owner\nbank-a,10.1.0.5,payments\n")
    out = Enricher(_settings(asset_inventory=path)).enrich(_batch(("bank-a", "10.1.0.5", "10.1.0.6")))
    assert _col(out, "taishi.source.asset.owner") == ["payments"]
    assert _col(out, "taishi.source.asset.criticality") == [""]


def test_assets_header_missing_a_column_names_the_file_and_the_column(tmp_path: Path):
    path = _write(tmp_path / "assets.csv", "organization.id,address,owner\nbank-a,10.1.0.5,payments\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: header must contain .*'ip'"):
        Enricher(_settings(asset_inventory=path))


def test_assets_bad_ip_names_the_file_and_line(tmp_path: Path):
    path = _write(
        tmp_path / "assets.csv", "organization.id,ip,owner\nbank-a,10.1.0.5,a\nbank-a,10.1.0.300,b\n"
    )
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: '10.1.0.300' is not an IP address"):
        Enricher(_settings(asset_inventory=path))


def test_assets_bad_ip_line_counts_blank_lines(tmp_path: Path):
    path = _write(
        tmp_path / "assets.csv", "organization.id,ip,owner\nbank-a,10.1.0.5,a\n\nbank-a,10.1.0.300,b\n"
    )
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:4: "):
        Enricher(_settings(asset_inventory=path))


def test_assets_short_row_names_the_file_and_line(tmp_path: Path):
    path = _write(tmp_path / "assets.csv", "organization.id,ip,owner\nbank-a,10.1.0.5,a\nbank-a\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: "):
        Enricher(_settings(asset_inventory=path))


# Threat intel ------------------------------------------------------------------------------------------

FEED_CSV = """indicator,type,source,confidence
198.51.100.66,ip,abuse-feed,90
Evil.Example.,domain,abuse-feed,70
2001:DB8:FF::66,ip,,
203.0.113.66,ip,c2-tracker,40
"""
FEED_PLAIN = """# a blocklist, one indicator per line
203.0.113.99

192.0.2.99   # trailing words are ignored
"""


@pytest.fixture
def feeds(tmp_path: Path) -> list[Path]:
    return [_write(tmp_path / "partner.csv", FEED_CSV), _write(tmp_path / "blocklist.txt", FEED_PLAIN)]


def test_load_indicators_reads_csv_and_plain_feeds(feeds: list[Path]):
    got = load_indicators(feeds)
    assert got == {
        "198.51.100.66": Indicator("198.51.100.66", "ip", "abuse-feed", 90),
        "evil.example": Indicator("evil.example", "domain", "abuse-feed", 70),
        "2001:db8:ff::66": Indicator("2001:db8:ff::66", "ip", "partner", 50),  # source: file name
        "203.0.113.66": Indicator("203.0.113.66", "ip", "c2-tracker", 40),
        "203.0.113.99": Indicator("203.0.113.99", "ip", "blocklist"),
        "192.0.2.99": Indicator("192.0.2.99", "ip", "blocklist"),
    }


def test_ip_matches_prefer_the_destination(feeds: list[Path]):
    enricher = Enricher(_settings(intel_files=feeds))
    out = enricher.enrich(
        _batch(
            ("bank-a", "10.1.0.5", "198.51.100.66"),
            ("bank-a", "198.51.100.66", "10.1.0.5"),
            ("bank-a", "203.0.113.99", "203.0.113.66"),  # both listed: the destination wins
            ("bank-b", "2001:db8:b::5", "2001:db8:ff::66"),
            ("bank-b", "192.0.2.99", "10.2.0.1"),  # internal addresses match too
            ("bank-a", "10.1.0.5", "198.51.100.67"),
        )
    )
    assert _col(out, "taishi.threat.indicator") == [
        "198.51.100.66",
        "198.51.100.66",
        "203.0.113.66",
        "2001:db8:ff::66",
        "192.0.2.99",
        "",
    ]
    assert _col(out, "taishi.threat.source") == [
        "abuse-feed",
        "abuse-feed",
        "c2-tracker",
        "partner",
        "blocklist",
        "",
    ]


def test_indicators_passed_in_replace_the_configured_feeds(feeds: list[Path]):
    mine = {
        "198.51.100.67": Indicator("198.51.100.67", "ip", "analyst", 100),
        "evil.example": Indicator("evil.example", "domain", "analyst"),
    }
    out = Enricher(_settings(intel_files=feeds), indicators=mine).enrich(
        _batch(("bank-a", "10.1.0.5", "198.51.100.66"), ("bank-a", "10.1.0.5", "198.51.100.67"))
    )
    assert _col(out, "taishi.threat.indicator") == ["", "198.51.100.67"]
    assert _col(out, "taishi.threat.source") == ["", "analyst"]


def test_no_feeds_leaves_threat_fields_empty():
    out = Enricher(_settings()).enrich(_batch(("bank-a", "10.1.0.5", "198.51.100.66")))
    assert _col(out, "taishi.threat.indicator") == [""]
    assert _col(out, "taishi.threat.source") == [""]


def test_bad_confidence_names_the_file_and_line(tmp_path: Path):
    path = _write(
        tmp_path / "feed.csv",
        "indicator,type,source,confidence\n198.51.100.1,ip,x,10\n198.51.100.2,ip,x,high\n",
    )
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: confidence 'high' is not an integer"):
        load_indicators([path])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: "):
        Enricher(_settings(intel_files=[path]))


def test_empty_indicator_names_the_file_and_line(tmp_path: Path):
    path = _write(tmp_path / "feed.csv", "indicator,type,source,confidence\n,ip,x,10\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: empty indicator"):
        load_indicators([path])


def test_bad_confidence_line_counts_comments_and_blank_lines(tmp_path: Path):
    text = "# exported 2026-11-25\nindicator,type,source,confidence\n198.51.100.1,ip,x,10\n\n198.51.100.2,ip,x,high\n"
    path = _write(tmp_path / "feed.csv", text)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:5: "):
        load_indicators([path])


# GeoIP and ASN ----------------------------------------------------------------------------------------

COUNTRY_NETWORKS = {
    "203.0.113.0/24": {"country": {"iso_code": "CN", "names": {"en": "China"}}},
    "198.51.100.0/24": {"registered_country": {"iso_code": "DE"}},  # no country: the registered one
    "2001:db8:ff::/48": {"country": {"iso_code": "JP"}},
    "10.0.0.0/8": {"country": {"iso_code": "ZZ"}},  # internal to some institutions only
}
ASN_NETWORKS = {
    "203.0.113.0/24": {"autonomous_system_number": 4134, "autonomous_system_organization": "CHINANET"},
    "2001:db8:ff::/48": {"autonomous_system_number": 2497, "autonomous_system_organization": "IIJ"},
    "10.0.0.0/8": {"autonomous_system_number": 64512, "autonomous_system_organization": "PRIVATE"},
}
GEO_FLOWS = [
    ("bank-a", "10.1.0.5", "203.0.113.7"),
    ("bank-a", "203.0.113.7", "10.1.0.5"),
    ("bank-a", "10.1.0.5", "198.51.100.7"),
    ("bank-a", "10.1.0.5", "192.0.2.1"),  # external, in neither database
    ("bank-a", "10.2.0.5", "10.1.0.5"),  # external to bank-a: looked up
    ("bank-b", "10.2.0.5", "203.0.113.7"),  # internal to bank-b: not looked up
    ("bank-a", "2001:db8:a::5", "2001:db8:ff::9"),
]


@pytest.fixture(scope="module")
def geo_dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("geoip")
    return {
        "country": write_mmdb(d / "country.mmdb", COUNTRY_NETWORKS, database_type="Taishi-Test-Country"),
        "asn": write_mmdb(d / "asn.mmdb", ASN_NETWORKS, database_type="Taishi-Test-ASN", record_size=24),
    }


def test_no_geoip_database_leaves_geo_fields_absent_or_empty():
    out = Enricher(_settings()).enrich(_batch(*GEO_FLOWS))
    for name in GEO_COLUMNS:
        if name in out.columns:
            assert set(out[name].tolist()) <= {"", 0}, name


def test_geoip_and_asn_for_external_addresses_only(geo_dbs: dict[str, Path]):
    settings = _settings(geoip_country_db=geo_dbs["country"], geoip_asn_db=geo_dbs["asn"])
    out = Enricher(settings).enrich(_batch(*GEO_FLOWS))
    assert _col(out, "source.geo.country_iso_code") == ["", "CN", "", "", "ZZ", "", ""]
    assert _col(out, "source.as.number") == [0, 4134, 0, 0, 64512, 0, 0]
    assert _col(out, "source.as.organization.name") == ["", "CHINANET", "", "", "PRIVATE", "", ""]
    assert _col(out, "destination.geo.country_iso_code") == ["CN", "", "DE", "", "", "CN", "JP"]
    assert _col(out, "destination.as.number") == [4134, 0, 0, 0, 0, 4134, 2497]
    assert _col(out, "destination.as.organization.name") == ["CHINANET", "", "", "", "", "CHINANET", "IIJ"]
    assert out["destination.as.number"].dtype == np.int64


def test_asn_database_alone_leaves_countries_empty(geo_dbs: dict[str, Path]):
    out = Enricher(_settings(geoip_asn_db=geo_dbs["asn"])).enrich(_batch(*GEO_FLOWS[:2]))
    assert _col(out, "destination.geo.country_iso_code") == ["", ""]
    assert _col(out, "destination.as.number") == [4134, 0]
    assert _col(out, "source.as.organization.name") == ["", "CHINANET"]


def _truncated(data: bytes) -> bytes:
    return data[: data.rfind(METADATA_MARKER) + len(METADATA_MARKER) + 3]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"country,iso_code\n203.0.113.0/24,CN\n", id="csv-not-mmdb"),
        pytest.param(bytes(range(256)) * 8, id="garbage"),
        pytest.param(_truncated(build_mmdb(COUNTRY_NETWORKS)), id="truncated-metadata"),
        pytest.param(build_mmdb(COUNTRY_NETWORKS)[:100], id="truncated-tree"),
        pytest.param(None, id="missing-file"),
    ],
)
@pytest.mark.parametrize("setting", ["geoip_country_db", "geoip_asn_db"])
def test_corrupt_database_names_the_file(tmp_path: Path, setting: str, content: bytes | None):
    path = tmp_path / "broken.mmdb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"GeoIP database {re.escape(str(path))}"):
        Enricher(_settings(**{setting: path}))


def test_corrupt_data_section_names_the_file(tmp_path: Path):
    data = bytearray(build_mmdb(ASN_NETWORKS))
    start = data.find(DATA_SECTION_SEPARATOR) + len(DATA_SECTION_SEPARATOR)
    data[start : start + 2] = b"\xff\xff"  # no such type: the reader fails at lookup, not at open
    path = tmp_path / "asn.mmdb"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"GeoIP database {re.escape(str(path))}"):
        Enricher(_settings(geoip_asn_db=path)).enrich(_batch(("bank-a", "10.1.0.5", "203.0.113.7")))


def test_ipv4_only_database_leaves_ipv6_addresses_empty(tmp_path: Path):
    path = write_mmdb(
        tmp_path / "country4.mmdb", {"203.0.113.0/24": {"country": {"iso_code": "CN"}}}, ip_version=4
    )
    out = Enricher(_settings(geoip_country_db=path)).enrich(
        _batch(("bank-a", "10.1.0.5", "203.0.113.7"), ("bank-a", "2001:db8:a::5", "2001:db8:ff::9"))
    )
    assert _col(out, "destination.geo.country_iso_code") == ["CN", ""]


# The test database writer, checked against the maxminddb reader -----------------------------------------

READER_MODES = [
    pytest.param(
        maxminddb.MODE_MMAP_EXT,
        id="c-extension",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("maxminddb.extension") is None,
            reason="maxminddb built without its C extension",
        ),
    ),
    pytest.param(maxminddb.MODE_MMAP, id="pure-python"),
]
WRITER_NETWORKS = {
    "203.0.113.0/24": {"country": {"iso_code": "CN"}},
    "203.0.113.128/25": {"country": {"iso_code": "HK"}},  # more specific, inserted later: splits the /24
    "198.51.100.0/24": {"autonomous_system_number": 4134, "autonomous_system_organization": "CHINANET"},
    "0.0.0.0/8": {"country": {"iso_code": "ZZ"}},  # the low end of the IPv4 space under ::/96
    "255.255.255.255/32": {"country": {"iso_code": "BC"}},
    "2001:db8::/32": {"country": {"iso_code": "JP"}},
    "2001:db8:1::/48": {"country": {"iso_code": "KR"}},
    "ffff::/16": {"country": {"iso_code": "TOP"}},
}
WRITER_LOOKUPS = [
    ("203.0.113.1", {"country": {"iso_code": "CN"}}, 25),  # the tree holds the /24's remainder as a /25
    ("203.0.113.127", {"country": {"iso_code": "CN"}}, 25),
    ("203.0.113.128", {"country": {"iso_code": "HK"}}, 25),
    ("203.0.112.255", None, None),
    ("203.0.114.0", None, None),
    ("198.51.100.200", {"autonomous_system_number": 4134, "autonomous_system_organization": "CHINANET"}, 24),
    ("0.255.255.255", {"country": {"iso_code": "ZZ"}}, 8),
    ("1.0.0.0", None, None),
    ("255.255.255.255", {"country": {"iso_code": "BC"}}, 32),
    ("255.255.255.254", None, None),
    ("2001:db8::1", {"country": {"iso_code": "JP"}}, 48),  # the /32's remainder beside the /48
    ("2001:db8:1:ffff::1", {"country": {"iso_code": "KR"}}, 48),
    ("2001:db8:2::1", {"country": {"iso_code": "JP"}}, 47),
    ("2001:db9::1", None, None),
    ("2001:db7:ffff::1", None, None),
    ("ffff:1::1", {"country": {"iso_code": "TOP"}}, 16),
    ("::ffff:203.0.113.1", None, None),  # IPv4-mapped addresses are not aliased to the IPv4 subtree
]


@pytest.mark.parametrize("mode", READER_MODES)
@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_writer_lookups_inside_and_outside_each_network(tmp_path: Path, record_size: int, mode: int):
    path = write_mmdb(tmp_path / "test.mmdb", WRITER_NETWORKS, record_size=record_size)
    with maxminddb.open_database(str(path), mode) as reader:
        for address, record, prefix in WRITER_LOOKUPS:
            got, got_prefix = reader.get_with_prefix_len(address)
            assert got == record, address
            if prefix is not None:
                assert got_prefix == prefix, address
        meta = reader.metadata()
        assert (meta.ip_version, meta.record_size) == (6, record_size)
        assert (meta.binary_format_major_version, meta.binary_format_minor_version) == (2, 0)
        assert meta.database_type == "Taishi-Test"
        assert meta.languages == ["en"]
        assert set(meta.description) == {"en"}
        assert meta.build_epoch > 0
        tree_size = meta.node_count * record_size * 2 // 8
    assert path.read_bytes()[tree_size : tree_size + 16] == DATA_SECTION_SEPARATOR


@pytest.mark.parametrize("mode", READER_MODES)
def test_writer_ipv4_tree(tmp_path: Path, mode: int):
    path = write_mmdb(
        tmp_path / "v4.mmdb", [("128.0.0.0/1", "UPPER"), ("203.0.113.0/24", "CN")], ip_version=4
    )
    with maxminddb.open_database(str(path), mode) as reader:
        assert reader.metadata().ip_version == 4
        assert reader.get_with_prefix_len("203.0.113.9") == ("CN", 24)
        assert reader.get("203.0.114.9") == "UPPER"
        assert reader.get("127.255.255.255") is None


@pytest.mark.parametrize("mode", READER_MODES)
def test_writer_round_trips_each_data_type(tmp_path: Path, mode: int):
    record = {
        "strings": ["", "a" * 28, "b" * 29, "c" * 284, "d" * 285, "e" * 65_820, "f" * 65_821, "上海"],
        "uints": [0, 1, 255, 256, 2**32 - 1, 2**32, 2**64 - 1, 2**64, 2**128 - 1],
        "typed": [UInt(0, 16), UInt(65_535, 16), UInt(7, 64), UInt(2**100, 128)],
        "int32": [-1, -(2**31)],
        "double": 2.5,
        "bools": [True, False],
        "bytes": b"\x00\xff",
        "nested": {"empty": {}, "list": [], "deep": {"x": [{"y": "z"}]}},
    }
    path = write_mmdb(tmp_path / "types.mmdb", {"192.0.2.0/24": record})
    with maxminddb.open_database(str(path), mode) as reader:
        got = reader.get("192.0.2.1")
    assert isinstance(got, dict)
    assert bytes(got.pop("bytes")) == b"\x00\xff"  # the C extension returns a bytearray
    expected = dict(record)
    expected.pop("bytes")
    expected["typed"] = [u.value for u in record["typed"]]
    assert got == expected


def test_writer_encodes_the_specs_examples():
    assert encode("ab") == b"\x42ab"  # 010 00010: UTF-8 string, 2 bytes
    assert encode("x" * 80)[:2] == b"\x5d\x33"  # size 29 + 51
    assert encode("x" * 13_392)[:3] == b"\x5e\x33\x33"  # size 285 + 13,107
    assert encode("x" * 3_421_264)[:4] == b"\x5f\x33\x33\x33"  # size 65,821 + 3,355,443
    assert encode(UInt(0x010203, 128)) == b"\x03\x03\x01\x02\x03"  # extended type 10 - 7, 3 bytes
    assert encode(UInt(1, 32)) == b"\xc1\x01"
    assert encode(0) == b"\xc0"  # a zero-length integer is 0
    assert encode({"k": True}) == b"\xe1\x41k\x01\x07"  # map of 1; boolean: extended type 14 - 7, size 1
    assert encode([]) == b"\x00\x04"  # array: extended type 11 - 7


@pytest.mark.parametrize("mode", READER_MODES)
def test_writer_28_bit_records_carry_their_high_nibble(tmp_path: Path, mode: int):
    # A data section past 2**24 bytes needs record values wider than 24 bits.
    networks = [("192.0.2.0/25", b"\x00" * 2**24), ("192.0.2.128/25", "past 16 MiB"), ("2001:db8::/32", "v6")]
    with pytest.raises(ValueError, match="does not fit 24-bit records"):
        build_mmdb(networks, record_size=24)
    path = write_mmdb(tmp_path / "big.mmdb", networks, record_size=28)
    with maxminddb.open_database(str(path), mode) as reader:
        assert reader.get("192.0.2.200") == "past 16 MiB"
        assert reader.get("2001:db8::1") == "v6"


def test_writer_later_wider_network_replaces_narrower_ones(tmp_path: Path):
    path = write_mmdb(tmp_path / "order.mmdb", [("192.0.2.0/25", "narrow"), ("192.0.2.0/24", "wide")])
    with maxminddb.open_database(str(path), maxminddb.MODE_MMAP) as reader:
        assert reader.get_with_prefix_len("192.0.2.1") == ("wide", 24)


def test_writer_rejects_what_it_cannot_write():
    with pytest.raises(ValueError, match="record_size"):
        build_mmdb({"192.0.2.0/24": "x"}, record_size=20)
    with pytest.raises(ValueError, match="prefix length"):
        build_mmdb({"::/0": "x"})
    with pytest.raises(ValueError, match="IPv6 network does not fit an IPv4 database"):
        build_mmdb({"2001:db8::/32": "x"}, ip_version=4)
    with pytest.raises(ValueError, match="host bits"):
        build_mmdb({"192.0.2.1/24": "x"})
    with pytest.raises(TypeError, match="map keys must be strings"):
        encode({1: "x"})
    with pytest.raises(TypeError, match="no MaxMind DB type"):
        encode(None)
    with pytest.raises(ValueError, match="unsigned 16-bit"):
        UInt(65_536, 16)
