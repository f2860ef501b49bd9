from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from taishi.detectors.exfiltration import Exfiltration, ExfiltrationParams, exfil_score
from taishi.pipeline.attacks import flows, merge
from taishi.pipeline.attacks_c2 import beacon

T0 = 1_795_000_200_000  # a window boundary (5 minutes)
W = 300_000
MB = 1_000_000
HISTORY = [1 * MB, 1.2 * MB, 0.8 * MB, 1.1 * MB, 0.9 * MB, 1 * MB]
PEERS = [0.5 * MB, 2 * MB, 3 * MB, 1 * MB, 0.2 * MB, 4 * MB]


def test_a_sudden_haul_to_somewhere_new_scores_high():
    score, parts = exfil_score(2_000 * MB, 2_000 * MB, HISTORY, PEERS)
    assert score == 100
    assert parts["baseline_median"] == 1 * MB and parts["new_share"] == 1
    assert parts["excess"] >= 1


def test_each_condition_is_necessary():
    assert exfil_score(2_000 * MB, 2_000 * MB, HISTORY[:5], PEERS)[0] == 0, "too little history"
    assert exfil_score(2_000 * MB, 0.4 * 2_000 * MB, HISTORY, PEERS)[0] == 0, "mostly familiar destinations"
    usual = [1_800 * MB, 2_200 * MB, 1_500 * MB, 2_000 * MB, 1_900 * MB, 2_100 * MB]
    assert exfil_score(2_000 * MB, 2_000 * MB, usual, PEERS)[0] == 0, "no more than it always sends"
    busy_peers = [500 * MB, 300 * MB, 400 * MB, 200 * MB, 600 * MB]
    assert exfil_score(2_000 * MB, 2_000 * MB, HISTORY, busy_peers)[0] == 0, "the whole institution uploads"
    # Too few peers to compare with: the peer test is skipped, the others decide.
    score, parts = exfil_score(2_000 * MB, 2_000 * MB, HISTORY, PEERS[:4])
    assert score == 100 and "peer_bound" not in parts


def test_score_is_60_at_the_bound_and_grows_per_doubling():
    hist = [1 * MB] * 10  # MAD 0: the bound is own_factor x median = 10 MB
    at, parts = exfil_score(10 * MB, 10 * MB, hist, [])
    assert parts["own_bound"] == 10 * MB and at == 60
    assert exfil_score(20 * MB, 20 * MB, hist, [])[0] == 70
    assert exfil_score(9.9 * MB, 9.9 * MB, hist, [])[0] == 0
    assert exfil_score(20 * MB, 12 * MB, hist, [])[0] < 70  # partly familiar: scaled by the unfamiliar share


# The detector on flows -------------------------------------------------------------------------------


def _enriched(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    df = pd.DataFrame(cols)
    df["taishi.source.internal"] = df["source.ip"].str.startswith("10.")
    df["taishi.destination.internal"] = df["destination.ip"].str.startswith("10.")
    df["network.bytes"] = df["source.bytes"] + df["destination.bytes"]
    return df


def _run(det: Exfiltration, cols: dict[str, np.ndarray]) -> list:
    df = _enriched(cols)
    ts = df["@timestamp"].to_numpy()
    wstart = ts - ts % W
    out = []
    for w in np.unique(wstart):
        det.add(df[wstart == w], wstart[wstart == w])
        out.extend(det.close(int(w), int(w) + W))
    return out


def _office(windows: int, hosts: int = 8, per_window: float = 1 * MB) -> dict[str, np.ndarray]:
    """Every host uploads about ``per_window`` to its usual services each window."""
    rng = np.random.default_rng(1)
    parts = []
    for h in range(hosts):
        n = windows * 4
        ts = T0 + np.sort(rng.integers(0, windows * W, n))
        dst = np.array(["192.0.2.20", "192.0.2.21", "192.0.2.22"], dtype=object)[rng.integers(0, 3, n)]
        parts.append(flows(ts, "bank-a", f"10.1.3.{h}", dst, 443, sbytes=int(per_window / 4), seed=h))
    return merge(*parts)


def _haul(src: str, dst: str, at_ms: int, total: float, n: int = 10) -> dict[str, np.ndarray]:
    ts = at_ms + np.arange(n) * 10_000
    return flows(ts, "bank-a", src, dst, 443, sbytes=int(total / n), dbytes=10_000)


def test_fires_on_a_new_destination_as_t1048_and_only_once():
    cols = merge(_office(12), _haul("10.1.3.1", "198.51.100.200", T0 + 10 * W + 1000, 2e9))
    found = _run(Exfiltration(), cols)
    assert len(found) == 1
    f = found[0]
    assert (f.entity_ip, f.destination_ip, f.technique) == ("10.1.3.1", "198.51.100.200", "T1048")
    assert f.evidence["kind"] == "new_destination" and f.evidence["bytes_out"] >= 2e9
    assert f.evidence["peers"] == 7 and f.score == 100


def test_the_same_haul_to_a_familiar_destination_is_silent():
    cols = merge(_office(12), _haul("10.1.3.1", "192.0.2.21", T0 + 10 * W + 1000, 2e9))
    assert _run(Exfiltration(), cols) == []


def test_earlier_small_talk_does_not_make_a_destination_familiar():
    probe = _haul("10.1.3.1", "198.51.100.200", T0 + 5 * W + 1000, 20_000, n=2)  # <= c2_max_bytes
    haul = _haul("10.1.3.1", "198.51.100.200", T0 + 10 * W + 1000, 2e9)
    found = _run(Exfiltration(), merge(_office(12), probe, haul))
    assert [(f.technique, f.evidence["kind"]) for f in found] == [("T1048", "rare_destination")]
    real = _haul("10.1.3.1", "198.51.100.200", T0 + 5 * W + 1000, 50 * MB, n=2)  # a real earlier transfer
    assert _run(Exfiltration(), merge(_office(12), real, haul)) == []


def test_a_haul_up_a_quiet_c2_channel_is_t1041():
    polls, _ = beacon("bank-a", "10.1.3.1", "203.0.113.66", T0, duration_s=10 * 300)
    cols = merge(_office(12), polls, _haul("10.1.3.1", "203.0.113.66", T0 + 10 * W + 1000, 8e8))
    found = _run(Exfiltration(), cols)
    assert [(f.technique, f.evidence["kind"]) for f in found] == [("T1041", "c2_channel")]
    # A destination seen only a few times, in small amounts, is rare, not yet a C2 channel.
    found = _run(Exfiltration(ExfiltrationParams(c2_min_windows=50)), cols)
    assert [(f.technique, f.evidence["kind"]) for f in found] == [("T1048", "rare_destination")]


def test_state_is_bounded_and_survives_a_restart():
    params = ExfiltrationParams(max_destinations=8, baseline_windows=5, max_hosts=10)
    det = Exfiltration(params)
    ts = T0 + 11 * W + np.arange(30) * 9_000  # the most recent host of all
    surfer = flows(ts, "bank-a", "10.1.3.99", [f"198.51.100.{i}" for i in range(30)], 443, sbytes=5000)
    _run(det, merge(_office(12, hosts=14), surfer))
    assert len(det._hosts) == 10
    assert all(len(h["vols"]) <= 5 and len(h["dsts"]) <= 8 for h in det._hosts.values())
    assert set(det._hosts["bank-a|10.1.3.99"]["dsts"]) == {f"198.51.100.{i}" for i in range(22, 30)}

    a = Exfiltration()
    _run(a, _office(12))
    b = Exfiltration()
    b.restore(orjson.loads(orjson.dumps(a.snapshot())))
    assert orjson.dumps(b.snapshot()) == orjson.dumps(a.snapshot())
    haul = _haul("10.1.3.1", "198.51.100.200", T0 + 12 * W + 1000, 2e9)
    office = {k: v for k, v in _office(14).items()}
    later = office["@timestamp"] >= T0 + 12 * W
    more = merge({k: v[later] for k, v in office.items()}, haul)
    assert [(f.score, f.evidence) for f in _run(a, more)] == [(f.score, f.evidence) for f in _run(b, more)]
