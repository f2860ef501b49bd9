"""Labelled scenarios: background sector traffic plus injected attacks and look-alikes, run through the
pipeline in-process, and the efficacy figures ``taishi eval`` prints from them.

A scenario is a folder with ``scenario.toml`` (background, injections, detection and window settings); the
project's own live in ``tests/scenarios/`` beside their golden ``expected.json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from taishi.pipeline import attacks, wire
from taishi.pipeline.attacks import Label
from taishi.pipeline.config import Settings
from taishi.pipeline.embedded import MemoryBus, run_embedded
from taishi.pipeline.simulator import SectorSpec, simulate
from taishi.pipeline.sinks import MemorySink

START_MS = SectorSpec().start_ms


def folders(root: Path) -> list[Path]:
    """Scenario folders under ``root``."""
    return sorted(p for p in root.iterdir() if (p / "scenario.toml").exists())


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


@dataclasses.dataclass(slots=True)
class Efficacy:
    """Per detector: attacks found and missed, alerts that match no attack, latency from attack start."""

    detector: str
    tp: int = 0
    fn: int = 0
    fp: int = 0
    latencies_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def evaluate(roots: list[Path]) -> list[Efficacy]:
    """Run every scenario; count, per detector, labelled attacks found (TP) and missed (FN), and alerts
    about no labelled attack of that detector (FP). Latency: from the attack's first record (event time)
    to the moment its first alert could be written (its window's end plus the allowed lateness)."""
    table: dict[str, Efficacy] = defaultdict(lambda: Efficacy(""))
    for folder in (f for root in roots for f in folders(root)):
        spec = tomllib.loads((folder / "scenario.toml").read_text())
        lateness_s = Settings.model_validate({"window": spec.get("window", {})}).window.allowed_lateness_s
        alerts, labels = run(folder)
        attack = {(lb.rule, lb.org, lb.entity): lb for lb in labels if lb.rule}
        for key, lb in attack.items():
            row = table[lb.rule]
            hits = [
                a
                for a in alerts
                if (a["rule"]["id"], a["organization"]["id"], a["taishi"]["entity"]["ip"]) == key
            ]
            if hits:
                row.tp += 1
                first = min(_ms(a["taishi"]["alert"]["window"]["end"]) for a in hits)
                row.latencies_s.append((first + lateness_s * 1000 - lb.start_ms) / 1000)
            else:
                row.fn += 1
        for a in alerts:
            key = (a["rule"]["id"], a["organization"]["id"], a["taishi"]["entity"]["ip"])
            if key not in attack and not any(
                k[1:] == key[1:]
                for k in attack  # another detector's labelled attacker: not a false alarm
            ):
                table[a["rule"]["id"]].fp += 1
    for name, row in table.items():
        row.detector = name
    return sorted(table.values(), key=lambda r: r.detector)


def summary_rows(rows: list[Efficacy]) -> list[dict[str, Any]]:
    """The table ``taishi eval`` prints."""
    out = []
    for r in rows:
        lat = np.array(r.latencies_s) if r.latencies_s else np.array([np.nan])
        out.append(
            {
                "detector": r.detector,
                "attacks": r.tp + r.fn,
                "found": r.tp,
                "false_alerts": r.fp,
                "precision": f"{r.precision:.2f}",
                "recall": f"{r.recall:.2f}",
                "latency_p50_s": "-" if np.isnan(lat).all() else f"{np.median(lat):.0f}",
                "latency_max_s": "-" if np.isnan(lat).all() else f"{np.max(lat):.0f}",
            }
        )
    return out
