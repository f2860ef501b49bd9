from __future__ import annotations

import tomllib
from pathlib import Path

from taishi.detectors.scan import scan_score
from tests.scenarios.harness import HERE, run


def test_scan_score_is_monotone_and_explainable():
    assert scan_score(49, 50, 1.0) == 0
    assert scan_score(50, 50, 1.0) == 60
    assert scan_score(100, 50, 1.0) == 70
    assert scan_score(800, 50, 1.0) == 100
    assert scan_score(100, 50, 0.0) < scan_score(100, 50, 1.0)


def test_the_allowlist_is_what_silences_the_known_scanner(tmp_path):
    src = HERE / "scan_allowlisted_scanner"
    spec = (src / "scenario.toml").read_text()
    assert "10.0.9.250/32" in spec
    folder = tmp_path / "no_allowlist"
    folder.mkdir()
    (folder / "scenario.toml").write_text(spec.split("[[detection.allowlist]]")[0])
    alerts, _ = run(folder)
    assert {a["taishi"]["entity"]["ip"] for a in alerts} == {"10.0.9.250"}
    # Expired entries no longer apply.
    expired = spec.replace("2027-01-01", "2020-01-01")
    (folder / "scenario.toml").write_text(expired)
    alerts, _ = run(folder)
    assert {a["taishi"]["entity"]["ip"] for a in alerts} == {"10.0.9.250"}
    assert tomllib.loads(expired)["detection"]["allowlist"][0]["rule"] == "scan"


def test_an_ongoing_scan_is_one_incident_whose_count_grows(tmp_path):
    folder = tmp_path / "long_scan"
    folder.mkdir()
    (folder / "scenario.toml").write_text(
        '[window]\nsize_s = 60\n[[inject]]\nkind = "vertical_scan"\norg = "bank-a"\nsrc = "203.0.113.5"\n'
        'dst = "10.0.0.5"\nports = 3000\nrate_per_s = 10\n'
    )
    alerts, _ = run(folder)
    assert len(alerts) == 1, "one incident, not one alert per window"
    assert alerts[0]["taishi"]["alert"]["count"] >= 4
    assert Path(folder).exists()


def test_one_way_udp_records_and_service_replies_are_not_probes(tmp_path):
    import numpy as np

    from taishi.detectors.scan import PortScan
    from taishi.pipeline import attacks
    from taishi.pipeline.config import Settings
    from taishi.pipeline.enrich import Enricher
    from taishi.pipeline.validate import validate_flows

    def findings(**kw):
        ts = 1_795_000_000_000 + np.arange(300) * 100
        cols = attacks.flows(ts, "bank-a", kw.pop("src"), "10.0.0.9", np.arange(2000, 2300), proto=17, **kw)
        import pandas as pd

        df = Enricher(Settings(), indicators={}).enrich(validate_flows(pd.DataFrame(cols)).frame)
        det = PortScan()
        det.add(df, np.full(len(df), 1_795_000_000_000 // 300_000 * 300_000))
        return det.close(1_795_000_000_000 // 300_000 * 300_000, 0)

    assert findings(src="10.0.0.7", sport=40000), "bidirectional records, no answers: probes"
    assert not findings(src="10.0.0.53", sport=53), "a DNS server's replies to many client ports"
    assert not findings(src="10.0.0.7", sport=40000, event__dataset="netflow"), "one-way export: no verdict"
