from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from taishi.detectors.base import Finding
from taishi.detectors.lateral import LateralMovement, LateralParams, lateral_score
from taishi.pipeline import attacks_access as aa
from taishi.pipeline.attacks import horizontal_scan, merge
from taishi.pipeline.config import Settings
from taishi.pipeline.enrich import Enricher
from taishi.pipeline.validate import validate_flows

T0 = 1_795_000_200_000  # a window boundary (5-minute windows)
W = 300_000
HOUR = 3_600_000


def enriched(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    return Enricher(Settings()).enrich(validate_flows(pd.DataFrame(cols)).frame)


def run(det: LateralMovement, cols: dict[str, np.ndarray]) -> list[Finding]:
    df = enriched(cols)
    ts = df["@timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    wstart = ts - ts % W
    for i in range(0, len(df), 1000):
        det.add(df.iloc[i : i + 1000], wstart[i : i + 1000])
    return [f for w in range(int(wstart.min()), int(wstart.max()) + 1, W) for f in det.close(w, w + W)]


def history(src: str = "10.1.0.23") -> dict[str, np.ndarray]:
    """75 minutes of the host's ordinary admin sessions to two servers: after it, the institution is watched."""
    return aa.admin_routine("bank-a", src, ["10.0.1.10", "10.0.2.20"], T0, duration_s=4500)[0]


def test_score():
    assert lateral_score(9, 10, 0, 0) == 0
    assert lateral_score(10, 10, 0, 0) == 60
    assert lateral_score(20, 10, 0, 0) == 70
    assert lateral_score(20, 10, 3, 0) == 85
    assert lateral_score(20, 10, 0, 10) < lateral_score(20, 10, 0, 0)


def test_new_fanout_with_transfers_is_tool_transfer():
    attack, label = aa.lateral_fanout("bank-a", "10.1.0.23", "10.0.6", T0 + 90 * 60_000)
    found = run(LateralMovement(), merge(history(), attack))
    assert [(f.entity_ip, f.technique) for f in found] == [(label.entity, "T1570")]
    ev = found[0].evidence
    assert ev["new_peers"] == 25 and ev["ports"] == [445] and ev["transfer_peers"] >= 3
    assert "10.0.1.10" not in ev["sample_peers"]  # known peers are not new


def test_fanout_without_transfers_is_remote_services():
    attack, _ = aa.lateral_fanout(
        "bank-a", "10.1.0.23", "10.0.7", T0 + 90 * 60_000, hosts=12, port=5985, transfer_bytes=0
    )
    found = run(LateralMovement(), merge(history(), attack))
    assert [(f.technique, f.evidence["kind"]) for f in found] == [("T1021", "remote_services")]


def test_warm_up_only_learns():
    attack, _ = aa.lateral_fanout("bank-a", "10.1.0.23", "10.0.6", T0 + 600_000)
    assert run(LateralMovement(), merge(history(), attack)) == []
    assert run(LateralMovement(LateralParams(warmup_s=0)), merge(history(), attack)) != []


def test_habitual_fanout_stays_silent():
    jump, _ = aa.jump_host("bank-a", "10.0.9.5", "10.0.4", T0, duration_s=3 * 3600)
    patch, _ = aa.patch_server("bank-a", "10.0.9.8", "10.3", T0, duration_s=3 * 3600)
    assert run(LateralMovement(), merge(jump, patch)) == []
    # Without the habit guard the patch server, always reaching hosts it has not seen, would fire.
    loose = LateralMovement(LateralParams(habit_factor=1.0, warmup_s=0, max_peers_per_host=10))
    assert "10.0.9.8" in {f.entity_ip for f in run(loose, patch)}


def test_scan_answers_are_not_sessions():
    sweep, _ = horizontal_scan("bank-a", "10.1.0.23", "10.0.8", 445, T0 + 90 * 60_000)
    assert run(LateralMovement(), merge(history(), sweep)) == []


def test_state_round_trips_and_is_bounded():
    det = LateralMovement(LateralParams(max_hosts=10, max_peers_per_host=10))
    parts = [aa.admin_routine("bank-a", f"10.1.1.{i}", ["10.0.1.10"], T0, 600)[0] for i in range(30)]
    run(det, merge(*parts, history()))
    state = orjson.loads(orjson.dumps(det.snapshot()))
    assert len(state["hosts"]) <= 10
    other = LateralMovement(det.params)
    other.restore(state)
    assert orjson.dumps(other.snapshot()) == orjson.dumps(det.snapshot())
    # After a restart, the restored memory still knows the host's peers.
    again, _ = aa.admin_routine("bank-a", "10.1.0.23", ["10.0.1.10", "10.0.2.20"], T0 + 2 * HOUR, 600)
    assert run(other, again) == []
