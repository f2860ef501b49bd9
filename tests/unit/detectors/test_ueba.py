from __future__ import annotations

import json
import threading
import time

import numpy as np
import orjson
import pandas as pd
import pytest

from taishi.detectors.ueba import (
    EntityBehaviour,
    UebaParams,
    baseline_step,
    model_scale,
    moved_aspects,
    ueba_score,
    zscores,
)
from taishi.detectors.ueba_model import (
    FEATURES,
    BehaviourModel,
    load_model,
    retrain_all,
    save_model,
    schedule_retraining,
)
from taishi.pipeline.attacks import merge
from taishi.pipeline.attacks_ueba import behaviour_jump, drifting_host, host_fleet, steady_host
from taishi.pipeline.config import Settings
from taishi.pipeline.enrich import Enricher

T0 = 1_795_000_000_000
WINDOW = 300_000
NF = len(FEATURES)


@pytest.fixture(scope="module")
def hours() -> pd.DataFrame:
    """40 windows: a fleet of steady hosts, a steady and a drifting host, and one host that jumps at 28."""
    fleet, _ = host_fleet("bank-a", "10.2.0", T0, hosts=10, windows=40)
    steady, _ = steady_host("bank-a", "10.2.1.6", T0, windows=40)
    drift, _ = drifting_host("bank-a", "10.2.1.7", T0, windows=40)
    jump, _ = behaviour_jump("bank-a", "10.2.1.5", T0, windows=40, jump_at=28, jump_windows=6)
    return Enricher(Settings()).enrich(pd.DataFrame(merge(fleet, steady, drift, jump)))


def _run(det: EntityBehaviour, df: pd.DataFrame, windows: list[int] | None = None) -> list:
    ws = df["@timestamp"].to_numpy() // WINDOW * WINDOW
    found = []
    for w in windows if windows is not None else sorted(set(ws.tolist())):
        rows = df[ws == w]
        for i in range(0, len(rows), 2000):
            det.add(rows.iloc[i : i + 2000], ws[ws == w][i : i + 2000])
        found += det.close(w, w + WINDOW)
    return found


def _key(fs: list) -> list:
    return [(f.entity_ip, f.window_start_ms, f.score, json.dumps(f.evidence, sort_keys=True)) for f in fs]


# Pure functions ------------------------------------------------------------------------------------------
def test_ueba_score_is_bounded_and_grows_with_anomaly_breadth_and_distance():
    assert ueba_score(0.8, 0, 10.0, 3.0) == 0 and ueba_score(0.8, 3, 2.9, 3.0) == 0
    assert ueba_score(0.5, 2, 3.0, 3.0) == 40
    assert ueba_score(1.0, 8, 100.0, 3.0) == 100
    assert ueba_score(0.6, 3, 4.0, 3.0) < ueba_score(0.7, 3, 4.0, 3.0)
    assert ueba_score(0.6, 3, 4.0, 3.0) < ueba_score(0.6, 5, 4.0, 3.0) < ueba_score(0.6, 5, 9.0, 3.0)


def test_zscores_use_floors_and_read_unknown_as_no_change():
    x = model_scale(np.array([[1000.0, 0, 10, 0, 0.5, 3, 2, np.nan]]))
    assert x[0, 0] == pytest.approx(np.log1p(1000)) and x[0, 4] == 0.5
    mean = x.copy()
    mean[0, 0] -= 1.0  # bytes out one log unit above the baseline
    mean[0, 4] = 0.4
    z = zscores(x, mean, np.zeros((1, NF)), 0.25, 0.05)
    assert z[0, 0] == pytest.approx(4.0) and z[0, 4] == pytest.approx(2.0)
    assert z[0, 7] == 0 and np.isfinite(z).all()
    moved = np.zeros((2, NF), bool)
    moved[0, [0, 1, 2]] = True  # volume only
    moved[1, [0, 5, 4]] = True  # volume, breadth, mix
    assert moved_aspects(moved).tolist() == [1, 3]


def test_baseline_step_starts_learns_ignores_unknown_and_caps_outliers():
    mean = np.array([[np.nan, 1.0, 1.0]])
    var = np.array([[np.nan, 0.0, 0.0]])
    x = np.array([[5.0, np.nan, 101.0]])
    m, v = baseline_step(mean, var, x, np.array([0.5]), np.array([0.3, 0.3, 0.3]))
    assert m[0, 0] == 5.0 and v[0, 0] == 0  # first sight
    assert m[0, 1] == 1.0 and v[0, 1] == 0  # unknown value: unchanged
    assert m[0, 2] == pytest.approx(1.15)  # a 100-unit jump moves the mean as if it were 0.3


# Model ---------------------------------------------------------------------------------------------------
def test_behaviour_model_keeps_scikit_learn_manners():
    from sklearn.base import clone

    model = BehaviourModel(n_estimators=50, random_state=3)
    assert model.get_params()["n_estimators"] == 50 and not hasattr(model, "forest_")
    assert clone(model).get_params() == model.get_params()
    with pytest.raises(ValueError, match="not fitted"):
        model.score_samples(np.zeros((1, NF)))
    with pytest.raises(ValueError, match="no parameter"):
        model.set_params(trees=5)
    X = np.random.default_rng(0).normal(size=(500, NF))
    assert model.fit(X) is model and model.n_features_in_ == NF and model.n_samples_fit_ == 500
    far = np.full((1, NF), 7.0)
    assert model.score_samples(far)[0] > model.threshold_ > np.median(model.score_samples(X))
    assert model.predict(far).tolist() == [-1] and model.decision_function(far)[0] < 0
    again = BehaviourModel(n_estimators=50, random_state=3).fit(X)
    assert np.array_equal(again.score_samples(X), model.score_samples(X))  # same data, same seed, same model


def test_model_files_are_versioned_hashed_and_checked(tmp_path):
    model = BehaviourModel(n_estimators=20).fit(np.random.default_rng(1).normal(size=(200, NF)))
    ref = save_model(model, tmp_path / "models", 3, {"trained_on": 200})
    path = tmp_path / "models" / f"ueba-1.3-{ref.sha256[:12]}.joblib"
    assert ref.path == str(path) and ref.version == "1.3" and path.exists()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["features"] == list(FEATURES) and meta["sha256"] == ref.sha256 and meta["trained_on"] == 200
    loaded = load_model(ref)
    X = np.random.default_rng(2).normal(size=(10, NF))
    assert np.array_equal(loaded.score_samples(X), model.score_samples(X))
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ValueError, match="SHA-256"):
        load_model(ref)


def test_scheduled_retraining_calls_every_detector_that_can_retrain():
    calls = []
    done = threading.Event()

    class Fake:
        id = "fake"

        def retrain(self) -> bool:
            calls.append(1)
            done.set()
            return True

    class Set:
        def __init__(self) -> None:
            self.detectors = [Fake(), object()]

    assert retrain_all([Set()]) == 1
    done.clear()
    scheduler = schedule_retraining(lambda: [Set()], 0.05)
    try:
        assert done.wait(5)
    finally:
        scheduler.shutdown(wait=False)
    assert len(calls) >= 2
    with pytest.raises(ValueError):
        schedule_retraining(lambda: [], 0)


# The detector --------------------------------------------------------------------------------------------
def test_defaults_fire_on_the_jump_only_and_explain_it(hours):
    found = _run(EntityBehaviour(), hours)
    assert {f.entity_ip for f in found} == {"10.2.1.5"}
    jump_start = T0 + 28 * WINDOW
    assert all(jump_start - WINDOW <= f.window_start_ms < jump_start + 7 * WINDOW for f in found)
    assert len(found) >= 5
    f = found[0]
    ev = f.evidence
    assert f.technique == "T1046" and ev["kind"] == "discovery"
    assert len(ev["moved"]) >= 3 and all(m["z"] >= 3.0 for m in ev["moved"])
    assert [m["z"] for m in ev["moved"]] == sorted((m["z"] for m in ev["moved"]), reverse=True)
    assert {"bytes_out", "failed_ratio"} <= {m["feature"] for m in ev["moved"]}
    bytes_out = next(m for m in ev["moved"] if m["feature"] == "bytes_out")
    assert ev["features"]["bytes_out"] == bytes_out["value"] > 5 * bytes_out["baseline"]
    assert ev["anomaly_score"] > 0.6 and 40 <= f.score <= 100
    orjson.dumps(ev)


def test_no_model_no_alerts():
    det = EntityBehaviour(UebaParams(retrain_every_windows=0, min_train=20))
    fleet, _ = host_fleet("bank-a", "10.2.0", T0, hosts=4, windows=20)
    jump, _ = behaviour_jump("bank-a", "10.2.1.5", T0, windows=20, jump_at=15, jump_windows=3)
    assert _run(det, Enricher(Settings()).enrich(pd.DataFrame(merge(fleet, jump)))) == []
    assert det.retrain() is True and det.snapshot()["fits"] == 1


@pytest.mark.parametrize("model_dir", [False, True])
def test_snapshot_restore_mid_stream_repeats_the_same_findings(hours, tmp_path, model_dir):
    params = UebaParams(model_dir=tmp_path / "models" if model_dir else None)
    ws = sorted(set((hours["@timestamp"].to_numpy() // WINDOW * WINDOW).tolist()))
    straight = EntityBehaviour(params)
    expected = _run(straight, hours)
    first = EntityBehaviour(params)
    before = _run(first, hours, ws[:30])
    state = orjson.loads(orjson.dumps(first.snapshot()))
    assert state["fits"] == 1 and (state["model"] is not None) == model_dir
    if model_dir:
        assert state["model"]["path"].endswith(".joblib") and "ueba-1.1-" in state["model"]["path"]
    second = EntityBehaviour(params)
    second.restore(state)
    assert orjson.dumps(second.snapshot()) == orjson.dumps(state)
    after = _run(second, hours, ws[30:])
    assert _key(before + after) == _key(expected)


def test_a_missing_model_file_is_refit_from_the_reservoir(hours, tmp_path):
    params = UebaParams(model_dir=tmp_path)
    det = EntityBehaviour(params)
    ws = sorted(set((hours["@timestamp"].to_numpy() // WINDOW * WINDOW).tolist()))
    _run(det, hours, ws[:30])
    state = det.snapshot()
    for p in tmp_path.iterdir():
        p.unlink()
    other = EntityBehaviour(params)
    other.restore(state)
    X = np.random.default_rng(0).normal(size=(5, NF))
    assert other._model is not None and det._model is not None
    assert np.array_equal(other._model.score_samples(X), det._model.score_samples(X))


def test_state_is_bounded(hours):
    det = EntityBehaviour(UebaParams(max_entities=10, reservoir_size=50))
    _run(det, hours)
    state = det.snapshot()
    assert len(state["entities"]) <= 10 and len(state["reservoir"]) <= 50 and len(state["pending"]) <= 50
    t = time.perf_counter()
    EntityBehaviour().restore(state)
    assert time.perf_counter() - t < 5
