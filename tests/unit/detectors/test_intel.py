from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from taishi.detectors.intel import IntelIndicator, IntelParams, ThreatIntel, intel_score, load_catalogue
from taishi.pipeline.attacks import merge
from taishi.pipeline.attacks_ueba import indicator_contact, indicator_lookups, indicator_probe
from taishi.pipeline.config import Settings
from taishi.pipeline.enrich import Enricher, Indicator

T0 = 1_795_000_000_000  # 2026-11-18
WINDOW = 3_600_000


def _enriched(cols: dict[str, np.ndarray], indicators: dict[str, Indicator] | None = None) -> pd.DataFrame:
    return Enricher(Settings(), indicators=indicators or {}).enrich(pd.DataFrame(cols))


def _findings(det: ThreatIntel, df: pd.DataFrame) -> list:
    ws = df["@timestamp"].to_numpy() // WINDOW * WINDOW
    det.add(df, ws)
    return [f for w in sorted(set(ws.tolist())) for f in det.close(w, w + WINDOW)]


def test_intel_score_grows_with_confidence_and_volume_and_stays_in_range():
    assert intel_score(0, 100, 10**6) == 0 and intel_score(90, 0, 0) == 0
    assert intel_score(100, 1, 0) == 70  # one tiny contact: 70 % of the confidence
    assert intel_score(100, 10**4, 10**9) == 100
    assert intel_score(50, 10, 1000) < intel_score(90, 10, 1000)
    assert intel_score(90, 10, 1000) < intel_score(90, 100, 1000) < intel_score(90, 100, 10**6)
    assert 0 <= intel_score(100, 10**9, 10**15) <= 100


def test_catalogue_reads_feed_files_with_expiry_and_inline_entries(tmp_path):
    feed = tmp_path / "isac.csv"
    feed.write_text(
        "indicator,type,source,confidence,expires\n"
        "198.51.100.23,ip,isac,90,\n"
        "198.51.100.31,ip,isac,95,2026-01-31\n"
        "Evil.Example.,domain,isac,70,2027-01-01T00:00:00Z\n"
    )
    plain = tmp_path / "blocklist.txt"
    plain.write_text("# one a line\n203.0.113.9\n")
    cat = load_catalogue([feed, plain], [IntelIndicator(value="198.51.100.23", source="mine", confidence=40)])
    assert cat["198.51.100.23"].source == "mine" and cat["198.51.100.23"].confidence == 40  # inline wins
    assert cat["198.51.100.31"].expires_ms == int(datetime(2026, 1, 31, tzinfo=UTC).timestamp() * 1000)
    assert cat["evil.example"].kind == "domain" and cat["evil.example"].confidence == 70
    assert cat["203.0.113.9"].source == "blocklist" and cat["203.0.113.9"].confidence == 50
    bad = tmp_path / "bad.csv"
    bad.write_text("indicator,type,source,confidence,expires\n1.2.3.4,ip,x,50,next tuesday\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: expires"):
        load_catalogue([bad], [])


def test_outbound_contact_names_the_internal_host_feed_confidence_and_volume():
    cols, label = indicator_contact("bank-a", "10.0.3.7", "198.51.100.23", T0, contacts=30)
    det = ThreatIntel(
        IntelParams(indicators=[IntelIndicator(value="198.51.100.23", source="isac", confidence=90)])
    )
    (f,) = _findings(det, _enriched(cols))
    assert (f.rule_id, f.org, f.entity_ip, f.technique) == ("intel", "bank-a", "10.0.3.7", "T1071")
    ev = f.evidence
    assert ev["kind"] == "outbound" and ev["direction"] == "outbound" and ev["matched_on"] == "destination.ip"
    assert (ev["feed"], ev["confidence"], ev["flows"], ev["ports"]) == ("isac", 90, 30, [443])
    assert ev["bytes_out"] == int(cols["source.bytes"].sum()) and ev["bytes_in"] == int(
        cols["destination.bytes"].sum()
    )
    assert f.score == intel_score(90, 30, ev["bytes_out"] + ev["bytes_in"])
    assert f.destination_ip == "198.51.100.23" and label.entity == f.entity_ip


def test_inbound_probe_from_an_indicator_is_active_scanning_about_the_target():
    cols, _ = indicator_probe("bank-b", "192.0.2.66", "10.0.1.10", T0, ports=8)
    det = ThreatIntel(IntelParams(indicators=[IntelIndicator(value="192.0.2.66", confidence=70)]))
    (f,) = _findings(det, _enriched(cols))
    assert (f.entity_ip, f.technique, f.evidence["kind"], f.evidence["matched_on"]) == (
        "10.0.1.10",
        "T1595",
        "inbound",
        "source.ip",
    )
    assert f.evidence["answered_flows"] == int((cols["destination.bytes"] > 0).sum())
    assert f.source_ip == "192.0.2.66"


def test_enrichment_hits_alert_without_a_catalogue_and_a_known_weak_indicator_stays_silent():
    cols, _ = indicator_contact("bank-a", "10.0.3.7", "198.51.100.23", T0, contacts=5)
    df = _enriched(cols, {"198.51.100.23": Indicator("198.51.100.23", "ip", "feed-x", 90)})
    assert set(df["taishi.threat.indicator"]) == {"198.51.100.23"}
    (f,) = _findings(ThreatIntel(), df)
    assert (
        f.evidence["feed"] == "feed-x" and f.evidence["confidence"] == 50
    )  # the default: confidence not on flows
    weak = ThreatIntel(IntelParams(indicators=[IntelIndicator(value="198.51.100.23", confidence=20)]))
    assert _findings(weak, df) == []
    assert _findings(ThreatIntel(IntelParams(default_confidence=40)), df) == []


def test_expiry_is_judged_at_each_flows_event_time():
    cols, _ = indicator_contact("bank-a", "10.0.3.7", "198.51.100.31", T0, contacts=30, interval_s=60)
    half = datetime.fromtimestamp((T0 + 15 * 60_000 + 5_000) / 1000, UTC)
    det = ThreatIntel(
        IntelParams(indicators=[IntelIndicator(value="198.51.100.31", confidence=95, expires=half)])
    )
    found = _findings(det, _enriched(cols))
    assert sum(f.evidence["flows"] for f in found) == 16  # the contacts before the expiry only
    gone = datetime(2026, 1, 31, tzinfo=UTC)
    det = ThreatIntel(
        IntelParams(indicators=[IntelIndicator(value="198.51.100.31", confidence=95, expires=gone)])
    )
    assert _findings(det, _enriched(cols)) == []


def test_domains_match_themselves_and_subdomains_but_not_look_alikes():
    names = [
        "a.b.Update-Check.example.",
        "update-check.example",
        "notupdate-check.example",
        "update-check.example.org",
    ]
    parts = [
        indicator_lookups("bank-a", f"10.0.3.{10 + i}", [n], T0, lookups=3)[0] for i, n in enumerate(names)
    ]
    det = ThreatIntel(IntelParams(indicators=[IntelIndicator(value="update-check.example", confidence=80)]))
    found = _findings(det, _enriched(merge(*parts)))
    assert sorted(f.entity_ip for f in found) == ["10.0.3.10", "10.0.3.11"]
    assert {f.technique for f in found} == {"T1071.004"}
    assert all(f.evidence["indicator"] == "update-check.example" for f in found)


def test_several_indicators_of_one_host_are_one_finding_led_by_the_strongest():
    a, _ = indicator_contact("bank-a", "10.0.3.7", "198.51.100.23", T0, contacts=5)
    b, _ = indicator_contact("bank-a", "10.0.3.7", "198.51.100.40", T0, contacts=50, interval_s=10)
    det = ThreatIntel(
        IntelParams(
            indicators=[
                IntelIndicator(value="198.51.100.23", confidence=60),
                IntelIndicator(value="198.51.100.40", confidence=90),
            ]
        )
    )
    (f,) = _findings(det, _enriched(merge(a, b)))
    assert f.evidence["indicator"] == "198.51.100.40" and f.evidence["indicators_in_window"] == 2
    assert f.evidence["other_hits"][0]["indicator"] == "198.51.100.23"


def test_no_catalogue_and_no_enrichment_hits_costs_nothing_and_finds_nothing(sector_small):
    df = _enriched(sector_small)
    assert _findings(ThreatIntel(), df) == []
