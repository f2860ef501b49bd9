"""Scenario harness: background sector traffic + injected attacks/look-alikes -> the pipeline -> alerts.

A scenario is a folder with ``scenario.toml`` (background, injections, detection settings) and
``expected.json`` (the canonical alerts: rule, institution, entity, kind). Inputs are generated
deterministically from the seeds; nothing large is stored. Regenerate the expected files after an
intended change with ``python -m tests.scenarios.harness --regenerate``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from taishi.pipeline.scenarios import build, folders, run

HERE = Path(__file__).resolve().parent
__all__ = ["HERE", "build", "canonical", "run", "scenarios"]


def scenarios() -> list[Path]:
    return folders(HERE)


def canonical(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a golden file pins: no volatile fields (times, scores' decimals), sorted."""
    rows = {
        (
            a["rule"]["id"],
            a["organization"]["id"],
            a["taishi"]["entity"]["ip"],
            a["threat"]["technique"]["id"][0],
            str(a["taishi"]["evidence"].get("kind", "")),
        )
        for a in alerts
    }
    return [dict(zip(("rule", "org", "entity", "technique", "kind"), r, strict=True)) for r in sorted(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description="Run scenarios; --regenerate rewrites expected.json files.")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--only", default="", help="scenario folders starting with this prefix")
    args = ap.parse_args()
    for folder in (f for f in scenarios() if f.name.startswith(args.only)):
        alerts, _ = run(folder)
        got = canonical(alerts)
        if args.regenerate:
            (folder / "expected.json").write_text(json.dumps(got, indent=1) + "\n")
        print(f"{folder.name}: {len(got)} alerts")


if __name__ == "__main__":
    main()
