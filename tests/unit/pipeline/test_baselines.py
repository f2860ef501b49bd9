from __future__ import annotations

import math

import numpy as np
import pytest

from taishi.pipeline.baselines import FIGURES, Baselines, ewma_update


def test_ewma_matches_direct_weighted_formula():
    rng = np.random.default_rng(0)
    xs = rng.normal(100, 10, 500)
    mean, var = xs[0], 0.0
    for x in xs[1:]:
        mean, var = ewma_update(mean, var, x, 0.05)
    w = (1 - 0.05) ** np.arange(len(xs))[::-1]
    w[0] = (1 - 0.05) ** (len(xs) - 1)  # the first value enters with the weight it got as the seed
    direct = (w * xs).sum() / w.sum()
    assert math.isclose(mean, direct, rel_tol=2e-3)
    assert 5 < math.sqrt(var) < 15


def test_view_is_the_baseline_before_the_window_and_replays_repeat_it():
    b = Baselines(alpha=0.5)
    fig = dict.fromkeys(FIGURES, 10.0)
    assert b.apply("k", 0, fig) == {"windows": 0}
    v1 = b.apply("k", 300_000, {**fig, "bytes_out": 30.0})
    assert v1["windows"] == 1 and v1["bytes_out_mean"] == 10.0
    v2 = b.apply("k", 600_000, fig)
    assert v2["bytes_out_mean"] == 20.0
    assert b.apply("k", 300_000, fig) == v1  # re-closing a window after a replay
    again = Baselines(alpha=0.5)
    again.restore(b.take_dirty())
    assert again.apply("k", 600_000, fig) == v2
    assert again.apply("k", 900_000, fig)["windows"] == 3


def test_bounded_entities_and_bad_alpha():
    b = Baselines(max_entities=10)
    for i in range(25):
        b.apply(f"e{i}", i, dict.fromkeys(FIGURES, 1.0))
    assert len(b) <= 10
    with pytest.raises(ValueError):
        Baselines(alpha=0)


def test_detector_state_round_trips_through_chunked_records():
    import numpy as np

    from taishi.pipeline import runner

    rng = np.random.default_rng(0)  # incompressible enough to need several 4 MiB chunks
    big = {
        "detectors": {
            "beaconing": {"pairs": {f"k{i}": rng.integers(0, 2**40, 64).tolist() for i in range(20_000)}}
        }
    }
    old = runner.detector_state_records({"detectors": {}}, 1)
    new = runner.detector_state_records(big, 2)
    assert len(new) > 2, "large states are split into chunks"
    assert runner.detector_state_from_records(old + new, 0) == big
    # Killed between the new chunks and the new header: the previous snapshot is still whole.
    assert runner.detector_state_from_records(old + new[:-1], 0) == {"detectors": {}}
    # A missing chunk is detected, not decoded into garbage.
    assert runner.detector_state_from_records(old + new[1:], 0) is None
