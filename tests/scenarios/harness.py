"""Scenario harness: background sector traffic + injected attacks/look-alikes -> the pipeline -> alerts.

A scenario is a folder with ``scenario.toml`` (background, injections, detection settings) and
``expected.json`` (the canonical alerts: rule, institution, entity, kind). Inputs are generated
deterministically from the seeds; nothing large is stored. Regenerate the expected files after an
intended change with ``python -m tests.scenarios.harness --regenerate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from taishi.pipeline import attacks, wire
from taishi.pipeline.attacks import Label
from taishi.pipeline.config import Settings
from taishi.pipeline.embedded import MemoryBus, run_embedded
from taishi.pipeline.simulator import SectorSpec, simulate
from taishi.pipeline.sinks import MemorySink

HERE = Path(__file__).resolve().parent
START_MS = SectorSpec().start_ms


def scenarios() -> list[Path]:
    return sorted(p for p in HERE.iterdir() if (p / "scenario.toml").exists())


def build(spec: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[Label]]:
    """Records and labels of a scenario."""
    parts, labels = [], []
    bg = spec.get("background")
    if bg:
        parts.append(simulate(SectorSpec(**bg)))
    for inj in spec.get("inject", []):
        inj = dict(inj)
        kind = inj.pop("kind")
        offset = inj.pop("start_offset_s", 0)
        silent = inj.pop("expect", "") == "silent"  # e.g. an allowlisted scanner
        # "function" from taishi.pipeline.attacks, or "module:function" from taishi.pipeline.<module>
        module, _, func = kind.rpartition(":")
        source = importlib.import_module(f"taishi.pipeline.{module}") if module else attacks
        cols, label = getattr(source, func)(start_ms=START_MS + offset * 1000, **inj)
        parts.append(cols)
        labels.append(dataclasses.replace(label, rule="") if silent else label)
    return attacks.merge(*parts), labels


def run(folder: Path) -> tuple[list[dict[str, Any]], list[Label]]:
    """Alerts (documents) the pipeline writes for a scenario, and its labels."""
    spec = tomllib.loads((folder / "scenario.toml").read_text())
    cols, labels = build(spec)
    settings = Settings.model_validate(
        {"detection": spec.get("detection", {}), "window": spec.get("window", {}), "kafka": {"partitions": 2}}
    )
    bus = MemoryBus(settings.kafka.partitions)
    for key, value, hdrs in wire.sensor_batches(cols, 5000):
        bus.send(settings.kafka.flows_topic, key, value, hdrs)
    sink = MemorySink()
    run_embedded(settings, bus, sink)
    alerts = [d for (index, _), d in sorted(sink.docs.items()) if index.startswith("taishi-alerts-v1-")]
    return alerts, labels


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
