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
    (
        "attacks_access",
        "password_guessing",
        {"org": 1, "src": "185.220.101.33", "dst": "10.0.2.20", "offset_s": 600},
    ),
    ("attacks_access", "syn_flood", {"org": 3, "dst": "10.0.1.80", "offset_s": 0, "warmup_s": 1800}),
    (
        "attacks_access",
        "lateral_fanout",
        {"org": 4, "src": "10.1.0.23", "subnet": "10.0.6", "offset_s": 3900},
    ),
    (
        "attacks_c2",
        "beacon",
        {"org": 0, "src": "10.1.3.77", "dst": CAMPAIGN_SOURCE, "offset_s": 60, "duration_s": 4200},
    ),
    ("attacks_c2", "exfiltration", {"org": 1, "src": "10.1.3.40", "dst": "198.51.100.200", "offset_s": 0}),
    ("attacks_dns", "dns_tunnel", {"org": 4, "src": "10.0.3.44", "offset_s": 1500}),
    ("attacks_dns", "dga_host", {"org": 2, "src": "10.1.0.23", "offset_s": 2000}),
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
