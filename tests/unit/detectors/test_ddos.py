from __future__ import annotations

import math

import numpy as np
import orjson
import pandas as pd

from taishi.detectors.base import Finding
from taishi.detectors.ddos import (
    Ddos,
    DdosParams,
    ddos_score,
    distinct_estimate,
    robust_baseline,
    surge_threshold,
)
from taishi.pipeline import attacks_access as aa
from taishi.pipeline.attacks import flows, merge
from taishi.pipeline.config import Settings
from taishi.pipeline.enrich import Enricher
from taishi.pipeline.validate import validate_flows

T0 = 1_795_000_200_000  # a window boundary (5-minute windows)
W = 300_000


def enriched(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    return Enricher(Settings()).enrich(validate_flows(pd.DataFrame(cols)).frame)


def run(det: Ddos, cols: dict[str, np.ndarray]) -> list[Finding]:
    df = enriched(cols)
    ts = df["@timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    wstart = ts - ts % W
    for i in range(0, len(df), 5000):
        det.add(df.iloc[i : i + 5000], wstart[i : i + 5000])
    return [f for w in range(int(wstart.min()), int(wstart.max()) + 1, W) for f in det.close(w, w + W)]


def one_way(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same exchanges exported the way NetFlow v5/v9 does: one record per direction."""
    fwd = {k: v.copy() for k, v in cols.items()}
    fwd["destination.bytes"][:] = 0
    fwd["destination.packets"][:] = 0
    back = {k: v.copy() for k, v in cols.items()}
    back["source.ip"], back["destination.ip"] = cols["destination.ip"], cols["source.ip"]
    back["source.port"], back["destination.port"] = cols["destination.port"], cols["source.port"]
    back["source.bytes"], back["source.packets"] = cols["destination.bytes"], cols["destination.packets"]
    back["destination.bytes"][:] = 0
    back["destination.packets"][:] = 0
    del back["network.community_id"], fwd["network.community_id"]
    keep = back["source.packets"] > 0
    return merge(fwd, {k: v[keep] for k, v in back.items()})


def test_distinct_estimate():
    assert distinct_estimate(0) == 0
    assert abs(distinct_estimate(100) - 100) < 3  # few items: nearly exact
    assert abs(distinct_estimate(2000) - 2_747) < 30  # linear counting corrects collisions
    assert distinct_estimate(4096) == 4096 * math.log(4096)  # saturated: a lower bound


def test_robust_baseline_ignores_one_odd_window():
    med, mad = robust_baseline([100, 110, 90, 105, 95, 10_000])
    assert 95 <= med <= 110 and mad < 20
    assert robust_baseline([]) == (0.0, 0.0)


def test_surge_threshold_and_score():
    assert surge_threshold(0, 0, 30_000, 5, 6) == 30_000  # no baseline: the floor
    assert surge_threshold(10_000, 500, 30_000, 5, 6) == 50_000  # five times the median
    assert surge_threshold(10_000, 8_000, 30_000, 5, 6) == 10_000 + 6 * 8_000  # a noisy baseline
    assert ddos_score(29_999, 30_000, 1, 200, 50) == 0
    assert ddos_score(30_000, 30_000, 1, 200, 50) == 60
    assert ddos_score(60_000, 30_000, 1, 200, 50) == 70
    assert ddos_score(60_000, 30_000, 0.5, 50, 50) < ddos_score(60_000, 30_000, 1, 200, 50)


def test_syn_flood_fires_after_a_normal_baseline():
    cols, label = aa.syn_flood("bank-a", "10.0.1.80", T0, warmup_s=1200, flows_n=30_000)
    found = run(Ddos(), cols)
    assert {(f.entity_ip, f.technique, f.evidence["kind"]) for f in found} == {
        (label.entity, "T1498.001", "syn_flood")
    }
    ev = found[0].evidence
    assert ev["baseline_windows"] >= 3 and ev["packets"] >= ev["threshold_packets"] >= 30_000
    assert ev["sources_estimate"] > 1_000 and ev["attack_share"] > 0.9


def test_amplification_fires_and_names_the_ports():
    cols, label = aa.udp_amplification("bank-a", "10.0.1.90", T0 + 10_000, flows_n=5_000)
    found = run(Ddos(), cols)
    assert [(f.entity_ip, f.technique) for f in found] == [(label.entity, "T1498.002")]
    assert set(found[0].evidence["amp_bytes_by_port"]) == {"53", "123"}
    assert found[0].evidence["sources_estimate"] >= 250


def test_flash_crowd_is_answered_both_ways_of_exporting():
    cols, _ = aa.flash_crowd("bank-a", "10.0.1.80", T0, warmup_s=1200, surge_s=300)
    assert run(Ddos(), cols) == []
    assert run(Ddos(), one_way(cols)) == []


def test_udp_flood_fires_both_ways_of_exporting():
    cols, _ = aa.udp_flood("bank-a", "10.0.1.81", T0, warmup_s=1200, flows_n=10_000)
    assert {f.evidence["kind"] for f in run(Ddos(), cols)} == {"flood"}
    assert {f.evidence["kind"] for f in run(Ddos(), one_way(cols))} == {"flood"}


def test_a_resolver_asked_for_its_answers():
    cols, _ = aa.busy_resolver("bank-a", "10.0.0.53", T0, duration_s=300, rate_per_s=40)
    low = DdosParams(min_pps=10, min_reflectors=5)  # enough volume to reach the shape checks
    assert run(Ddos(low), cols) == []
    # Without comparing answers with its own queries, the one-way answers would look reflected.
    assert {f.evidence["kind"] for f in run(Ddos(low.model_copy(update={"amp_ratio": 1.0})), cols)} == {
        "amplification"
    }


def test_a_constant_half_open_load_is_its_own_baseline():
    """A load balancer's SYN health checks from many probes: half-open every window, never a surge."""
    rng = np.random.default_rng(5)
    n = 40_000
    ts = T0 + np.sort(rng.integers(0, 6 * W, n))
    probes = np.array([f"10.9.{i // 200}.{i % 200 + 1}" for i in range(400)], dtype=object)
    cols = flows(ts, "bank-a", probes[rng.integers(0, 400, n)], "10.0.1.80", 443, spackets=1, sbytes=60)
    det = Ddos(DdosParams(min_pps=5))
    found = run(det, cols)
    assert [f.window_start_ms for f in found] == [T0, T0 + W, T0 + 2 * W]  # only before a baseline exists
    state = orjson.loads(orjson.dumps(det.snapshot()))
    other = Ddos(det.params)
    other.restore(state)
    assert orjson.dumps(other.snapshot()) == orjson.dumps(det.snapshot())
    assert len(state["baselines"]["bank-a|10.0.1.80"]) == 6
