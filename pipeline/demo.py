"""The demo sector: background traffic of several institutions plus attacks of every kind the detectors
know, including one source attacking several institutions. Deterministic by seed."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from taishi.pipeline import attacks
from taishi.pipeline.attacks import Label
from taishi.pipeline.simulator import SectorSpec, institution_ids, simulate

CAMPAIGN_SOURCE = "203.0.113.50"

# (module, injector, kwargs) relative to the sector start; modules that are not installed are skipped.
_PLAN: list[tuple[str, str, dict[str, Any]]] = [
    ("attacks", "vertical_scan", {"org": 0, "src": CAMPAIGN_SOURCE, "dst": "10.0.1.10", "offset_s": 240}),
    (
        "attacks",
        "vertical_scan",
        {"org": 1, "src": CAMPAIGN_SOURCE, "dst": "10.0.1.11", "offset_s": 420, "seed": 5},
    ),
    (
        "attacks",
        "vertical_scan",
        {"org": 3, "src": CAMPAIGN_SOURCE, "dst": "10.0.2.20", "offset_s": 600, "seed": 6},
    ),
    (
        "attacks",
        "horizontal_scan",
        {"org": 2, "src": "10.1.0.42", "subnet": "10.0.7", "port": 445, "offset_s": 900},
    ),
]


def demo_sector(spec: SectorSpec) -> tuple[dict[str, np.ndarray], list[Label]]:
    """Background + every planned attack whose injector is available."""
    orgs = institution_ids(spec.institutions)
    parts = [simulate(spec)]
    labels: list[Label] = []
    for module, name, kwargs in _PLAN:
        try:
            mod = importlib.import_module(f"taishi.pipeline.{module}")
        except ImportError:
            continue
        inject: Callable[..., tuple[dict[str, np.ndarray], Label]] = getattr(mod, name)
        kw = dict(kwargs)
        org_index = int(kw.pop("org"))
        if org_index >= len(orgs):
            continue
        offset = kw.pop("offset_s")
        cols, label = inject(org=orgs[org_index], start_ms=spec.start_ms + offset * 1000, **kw)
        parts.append(cols)
        labels.append(label)
    return attacks.merge(*parts), labels
