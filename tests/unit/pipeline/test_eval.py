from __future__ import annotations

import shutil
from pathlib import Path

from taishi.pipeline.cli import main
from taishi.pipeline.scenarios import evaluate

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_eval_counts_found_missed_and_false_alerts(tmp_path, capsys):
    for name in ("scan_vertical", "scan_busy_client"):
        shutil.copytree(SCENARIOS / name, tmp_path / name)
    # A scenario whose scan is below the (raised) threshold: a miss.
    missed = tmp_path / "scan_missed"
    shutil.copytree(SCENARIOS / "scan_vertical", missed)
    toml = (missed / "scenario.toml").read_text() + "[detection.params.scan]\nvertical_ports = 5000\nslow_pairs = 100000\n"
    (missed / "scenario.toml").write_text(toml)
    (row,) = [r for r in evaluate([tmp_path]) if r.detector == "scan"]
    assert (row.tp, row.fn, row.fp) == (1, 1, 0)
    assert row.recall == 0.5 and row.precision == 1.0
    assert 0 < row.latencies_s[0] < 3600
    assert main(["eval", "--scenarios", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "scan" in out and "0.50" in out
