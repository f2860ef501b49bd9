from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from taishi.detectors.base import Finding
from taishi.detectors.brute_force import (
    BruteForce,
    BruteForceParams,
    _alike_counts,
    brute_force_score,
    size_band_share,
    size_bin,
)
from taishi.pipeline import attacks_access as aa
from taishi.pipeline.attacks import merge
from taishi.pipeline.config import Settings
from taishi.pipeline.enrich import Enricher
from taishi.pipeline.validate import validate_flows

T0 = 1_795_000_200_000  # a window boundary (5-minute windows)
W = 300_000


def enriched(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    return Enricher(Settings()).enrich(validate_flows(pd.DataFrame(cols)).frame)


def run(det: BruteForce, cols: dict[str, np.ndarray], until_ms: int | None = None) -> list[Finding]:
    """Feed records window by window (batches of 1,000) and close every window up to ``until_ms``."""
    df = enriched(cols)
    ts = df["@timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    wstart = ts - ts % W
    for i in range(0, len(df), 1000):
        det.add(df.iloc[i : i + 1000], wstart[i : i + 1000])
    last = int(wstart.max()) if until_ms is None else until_ms
    return [f for w in range(int(wstart.min()), last + 1, W) for f in det.close(w, w + W)]


def test_score_is_monotone_and_explainable():
    assert brute_force_score(29, 30, 1.0, 1.0) == 0
    assert brute_force_score(30, 30, 1.0, 1.0) == 60
    assert brute_force_score(60, 30, 1.0, 1.0) == 70
    assert brute_force_score(30 * 64, 30, 1.0, 1.0) == 100
    assert brute_force_score(60, 30, 0.6, 0.5) < brute_force_score(60, 30, 1.0, 1.0)


def test_size_bands():
    a, b, c = size_bin(np.array([5_400, 5_700, 8_000]))
    assert abs(b - a) <= 1 < c - a
    assert size_band_share(np.array([100, 101, 120]), np.array([8, 1, 1])) == 0.9
    assert size_band_share(np.array([100, 105]), np.array([1, 1])) == 0.5
    assert size_band_share(np.array([], int), np.array([], int)) == 0.0
    # A tool's identical failures are one band; lognormal sessions are not.
    rng = np.random.default_rng(0)
    tool = size_bin(np.round(5_400 * (1 + rng.uniform(-0.04, 0.04, 200))))
    sessions = size_bin(np.round(5_000 * rng.lognormal(0, 1.0, 200)))
    one = np.ones(200, int)
    assert size_band_share(tool, one) == 1.0
    assert size_band_share(sessions, one) < 0.3


def test_the_window_similarity_is_the_size_band_share():
    bins = np.array([300, 301, 302, 310, 300])
    counts = np.array([5, 3, 2, 4, 1])
    g = pd.DataFrame({"k": ["a"] * 5, "bin": bins, "answered": counts})
    assert _alike_counts(g, ["k"]) == {("a",): round(size_band_share(bins, counts) * counts.sum())}


def test_password_guessing_fires_with_evidence():
    cols, label = aa.password_guessing("bank-a", "185.220.101.33", "10.0.2.20", T0 + 10_000, attempts=60)
    found = run(BruteForce(), cols)
    assert {(f.entity_ip, f.technique, f.evidence["kind"]) for f in found} == {
        (label.entity, "T1110.001", "password_guessing")
    }
    ev = found[-1].evidence
    assert ev["service"] == "ssh" and ev["target_host"] == "10.0.2.20" and ev["attempts"] >= 30
    assert ev["size_similarity"] == 1.0 and 60 <= found[-1].score <= 100


def test_attempts_add_up_across_windows_and_restarts():
    """Zeek's semantics: 30 in 30 minutes, however the windows (and a restart) cut them."""
    cols, _ = aa.password_guessing(
        "bank-a", "203.0.113.9", "10.0.2.20", T0, attempts=48, rate_per_s=48 / 1200
    )  # 48 attempts over 20 minutes: about 12 per window, never 30 in one
    first = {k: v[:24] for k, v in cols.items()}
    rest = {k: v[24:] for k, v in cols.items()}
    det = BruteForce()
    assert run(det, first) == []
    again = BruteForce()
    again.restore(orjson.loads(orjson.dumps(det.snapshot())))
    found = run(again, rest)
    assert found and found[-1].evidence["attempts"] >= 30
    assert max(f.evidence["attempts_window"] for f in found) < 30


def test_ftp_threshold_is_lower():
    cols, _ = aa.password_guessing("bank-a", "203.0.113.9", "10.0.2.21", T0, attempts=24, port=21)
    assert [f.evidence["service"] for f in run(BruteForce(), cols)] == ["ftp"]
    cols, _ = aa.password_guessing("bank-a", "203.0.113.9", "10.0.2.21", T0, attempts=24, port=22)
    assert run(BruteForce(), cols) == []


def test_the_rate_is_what_silences_minutely_health_checks():
    cols, _ = aa.ssh_health_checks("bank-a", "10.0.9.20", "10.0.2.20", T0, duration_s=3600)
    assert run(BruteForce(), cols) == []
    loose = BruteForce(BruteForceParams(min_rate_per_min=0))
    assert {f.entity_ip for f in run(loose, cols)} == {"10.0.9.20"}


def test_sessions_are_not_attempts():
    pool, _ = aa.db_connection_pool("bank-a", "10.0.3.15", "10.0.1.10", T0, duration_s=1800)
    backup, _ = aa.backup_smb_session("bank-a", "10.0.9.30", "10.0.1.11", T0, duration_s=1800)
    assert run(BruteForce(), merge(pool, backup)) == []


def test_a_dead_service_is_not_guessed_at():
    cols, _ = aa.password_guessing("bank-a", "10.0.3.3", "10.0.1.10", T0, attempts=100, port=1433)
    cols["destination.bytes"][:] = 0
    cols["destination.packets"][:] = 0
    assert run(BruteForce(), cols) == []


def test_web_login_needs_a_login_uri():
    cols, _ = aa.web_login_guessing("bank-a", "77.83.12.9", "10.0.1.80", T0)
    found = run(BruteForce(), cols)
    assert [(f.evidence["service"], f.evidence["target_port"]) for f in found] == [("web-login", 80)]
    cols["url.original"] = np.full(len(cols["@timestamp"]), "/static/app.js", dtype=object)
    assert run(BruteForce(), cols) == []


def test_distributed_guessing_names_the_target():
    cols, label = aa.distributed_guessing("bank-a", "10.0.1.33", T0)
    found = run(BruteForce(), cols)
    assert {(f.entity_ip, f.technique) for f in found} == {(label.entity, "T1110")}
    assert found[-1].evidence["sources"] >= 20
    # Internal sources all talking to one server are its ordinary clients unless configured otherwise.
    outside, which = np.unique(cols["source.ip"].astype(str), return_inverse=True)
    cols["source.ip"] = np.array([f"10.1.0.{10 + i}" for i in range(len(outside))], dtype=object)[which]
    assert run(BruteForce(), cols) == []


def test_memory_is_bounded():
    det = BruteForce(BruteForceParams(max_keys=10, attempts=1000))
    parts = [
        aa.password_guessing("bank-a", f"203.0.113.{i}", "10.0.2.20", T0, attempts=20, seed=i)[0]
        for i in range(30)
    ]
    run(det, merge(*parts))
    assert len(det.snapshot()["pairs"]) <= 10
