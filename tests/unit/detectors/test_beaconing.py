from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from taishi.detectors.beaconing import Beaconing, BeaconingParams, beacon_score, service_codes
from taishi.pipeline.attacks import merge
from taishi.pipeline.attacks_c2 import beacon, ntp_sync, update_checks, web_browsing

T0 = 1_795_000_000_000
MIN = 60_000


def _periodic(n: int, period_ms: float, jitter: float, seed: int = 0, missed: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(period_ms * (1 + rng.uniform(-jitter, jitter, n))).astype(np.int64)
    return ts[rng.random(n) >= missed]


def _alike(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1300, 1400, n)


def _varied(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(30_000), 1.2, n).astype(np.int64)


def test_a_perfect_beacon_scores_near_the_top():
    ts = T0 + np.arange(120) * MIN
    score, parts = beacon_score(ts, np.full(120, 400))
    assert score >= 95
    assert parts["period_s"] == 60 and parts["fit"] == 1 and parts["size"] == 1


@pytest.mark.parametrize("seed", range(5))
def test_jitter_and_missed_beats_are_tolerated(seed):
    ts = _periodic(150, MIN, 0.3, seed)
    score, parts = beacon_score(ts, _alike(len(ts), seed))
    assert score >= 75, parts
    assert 55 <= parts["period_s"] <= 65
    lossy = _periodic(200, MIN, 0.3, seed, missed=0.2)
    score, parts = beacon_score(lossy, _alike(len(lossy), seed))
    assert score >= 70, parts
    assert 55 <= parts["period_s"] <= 65, "missed beats must not double the period"


@pytest.mark.parametrize("seed", range(5))
def test_random_arrivals_do_not_look_periodic_even_with_alike_sizes(seed):
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.exponential(MIN, 120)).astype(np.int64)
    score, parts = beacon_score(ts, _alike(120, seed))
    assert score < 40, parts


@pytest.mark.parametrize("seed", range(5))
def test_bursty_human_browsing_is_not_a_beacon(seed):
    cols, _ = web_browsing("bank-a", "10.1.3.30", T0, duration_s=4 * 3600, seed=seed)
    ts = cols["@timestamp"]
    score, parts = beacon_score(ts, cols["source.bytes"] + cols["destination.bytes"])
    assert score < 40, parts
    score, parts = beacon_score(ts, np.full(len(ts), 400))  # even if every request had the same size
    assert score < 50, parts


def test_timing_alone_cannot_reach_the_threshold():
    """A regular poll with varied payloads (update checks, monitoring) tops out near 60."""
    ts = _periodic(48, 3_600_000, 0.1)
    score, parts = beacon_score(ts, _varied(48))
    assert parts["timing"] > 0.9 and parts["size"] < 0.2
    assert score < BeaconingParams().threshold
    cols, _ = update_checks("bank-a", "10.1.3.21", "203.0.113.80", T0, duration_s=2 * 86_400)
    score, _ = beacon_score(cols["@timestamp"], cols["source.bytes"] + cols["destination.bytes"])
    assert score < BeaconingParams().threshold


def test_few_intervals_prove_little():
    ts = T0 + np.arange(40) * MIN
    few, _ = beacon_score(ts[:12], np.full(12, 400))
    many, _ = beacon_score(ts, np.full(40, 400))
    assert few < many
    assert beacon_score(ts[:3], np.full(3, 400)) == (0.0, {"events": 3})
    assert beacon_score([], []) == (0.0, {"events": 0})


def test_connections_within_merge_ms_are_one_beat():
    ts = T0 + np.arange(60) * MIN
    doubled = np.sort(np.concatenate([ts, ts + 200]))
    score, parts = beacon_score(doubled, np.full(120, 200))
    assert parts["events"] == 60 and parts["median_bytes"] == 400
    assert score == beacon_score(ts, np.full(60, 400))[0]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="sizes"):
        beacon_score([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="udp/123"):
        service_codes(["ntp"])
    assert service_codes(["udp/123", "TCP/443", "6/80"]).tolist() == [
        17 * 65536 + 123,
        6 * 65536 + 443,
        6 * 65536 + 80,
    ]


# The detector on flows -------------------------------------------------------------------------------


def _enriched(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    df = pd.DataFrame(cols)
    df["taishi.source.internal"] = df["source.ip"].str.startswith("10.")
    df["taishi.destination.internal"] = df["destination.ip"].str.startswith("10.")
    df["network.bytes"] = df["source.bytes"] + df["destination.bytes"]
    return df


def _run(det: Beaconing, cols: dict[str, np.ndarray], size_ms: int = 300_000, batch: int = 500) -> list:
    df = _enriched(cols)
    ts = df["@timestamp"].to_numpy()
    wstart = ts - ts % size_ms
    out = []
    open_: set[int] = set()
    for i in range(0, len(df), batch):
        det.add(df.iloc[i : i + batch], wstart[i : i + batch])
        open_.update(int(w) for w in np.unique(wstart[i : i + batch]))
        for w in sorted(w for w in open_ if w + size_ms < ts[min(i + batch, len(df)) - 1]):
            out.extend(det.close(w, w + size_ms))
            open_.discard(w)
    for w in sorted(open_):
        out.extend(det.close(w, w + size_ms))
    return out


def test_a_tls_beacon_fires_once_per_realert_period_as_t1573():
    cols, _ = beacon("bank-a", "10.1.3.77", "203.0.113.50", T0, duration_s=3 * 3600)
    found = _run(Beaconing(), cols)
    assert [f.technique for f in found] == ["T1573"] * 3
    f = found[0]
    assert (f.org, f.entity_ip, f.destination_ip) == ("bank-a", "10.1.3.77", "203.0.113.50")
    assert f.evidence["server_name"] == "static-cdn-assets.example"
    assert f.evidence["service"] == "tcp/443" and 55 <= f.evidence["period_s"] <= 65
    assert f.last_seen_ms - f.first_seen_ms >= 1800_000, "fires only after min_span_s"
    plain, _ = beacon("bank-a", "10.1.3.78", "203.0.113.51", T0, dport=8080, duration_s=3600)
    assert [f.technique for f in _run(Beaconing(), plain)] == ["T1071"]


def test_ntp_is_exempt_by_service_and_would_otherwise_fire():
    cols, _ = ntp_sync("bank-a", "10.1.3.5", "192.0.2.123", T0, duration_s=2 * 3600)
    assert _run(Beaconing(), cols) == []
    found = _run(Beaconing(BeaconingParams(exempt_services=[])), cols)
    assert found and found[0].technique == "T1071" and found[0].evidence["service"] == "udp/123"


def test_state_is_bounded_and_survives_a_restart():
    cols, _ = beacon("bank-a", "10.1.3.77", "203.0.113.50", T0, duration_s=3 * 3600)
    others = [
        beacon("bank-a", f"10.1.4.{i}", "198.51.100.7", T0, duration_s=600, seed=i)[0] for i in range(30)
    ]
    allcols = merge(cols, *others)
    params = BeaconingParams(history=64, max_pairs=10)
    det = Beaconing(params)
    found = _run(det, allcols)
    assert len(det._pairs) <= 10 and "bank-a|10.1.3.77|203.0.113.50|6/443" in det._pairs
    assert all(len(p["ts"]) <= 64 for p in det._pairs.values())
    assert {f.entity_ip for f in found} == {"10.1.3.77"}

    # Halfway through, checkpoint and restore into a new instance: the same findings follow.
    half = int(np.searchsorted(cols["@timestamp"], T0 + 5400_000))
    first = {k: v[:half] for k, v in cols.items()}
    second = {k: v[half:] for k, v in cols.items()}
    a = Beaconing()
    _run(a, first)
    b = Beaconing()
    b.restore(orjson.loads(orjson.dumps(a.snapshot())))
    assert orjson.dumps(b.snapshot()) == orjson.dumps(a.snapshot())
    got_a = [(f.score, f.evidence) for f in _run(a, second)]
    got_b = [(f.score, f.evidence) for f in _run(b, second)]
    assert got_a == got_b


def test_forgotten_after_the_ttl():
    cols, _ = beacon("bank-a", "10.1.3.77", "203.0.113.50", T0, duration_s=600)
    det = Beaconing(BeaconingParams(pair_ttl_s=600))
    _run(det, cols)
    assert det._pairs
    later, _ = beacon("bank-a", "10.1.3.9", "203.0.113.9", T0 + 3 * 3600_000, duration_s=60)
    _run(det, later)
    assert list(det._pairs) == ["bank-a|10.1.3.9|203.0.113.9|6/443"]
