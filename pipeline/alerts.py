"""From detector findings to alert documents: ATT&CK, severity, suppression into incidents, allowlists.

An ongoing attack is one incident whose count grows: findings of one rule about one entity of one
institution within a suppression period share a deterministic document id, rewritten as they accumulate.
Allowlist entries (rule, institution, entity address or network, expiry) drop matching findings in the
stream and are counted. Like entity windows, what a window's close produces is remembered for a few
windows, so a replay that re-closes a window rewrites exactly the same documents.
"""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from taishi.detectors.base import TECHNIQUES, Detector, Finding
from taishi.pipeline import contract
from taishi.pipeline.config import AllowEntry, DetectionSettings
from taishi.pipeline.windows import Doc

_HISTORY = 16


def severity(score: float) -> tuple[int, str]:
    """ECS ``event.severity`` (1 low .. 4 critical) and its label from a 0..100 score."""
    if score >= 90:
        return 4, "critical"
    if score >= 70:
        return 3, "high"
    if score >= 40:
        return 2, "medium"
    return 1, "low"


def plain(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays, tuples and sets from detectors become plain Python."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return [plain(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Allowlist:
    """Scoped, expiring suppression of findings."""

    def __init__(self, entries: list[AllowEntry]) -> None:
        self._entries = [
            (e, ipaddress.ip_network(e.entity, strict=False) if e.entity else None) for e in entries
        ]
        self.suppressed = 0

    def allows(self, f: Finding) -> bool:
        """True when an active entry covers the finding (expiry compared with the finding's event time)."""
        when = datetime.fromtimestamp(f.window_end_ms / 1000, UTC)
        for e, net in self._entries:
            if e.rule not in ("*", f.rule_id) or e.org not in ("*", f.org):
                continue
            if e.expires is not None and when >= e.expires:
                continue
            if net is not None:
                try:
                    if ipaddress.ip_address(f.entity_ip) not in net:
                        continue
                except ValueError:
                    continue
            self.suppressed += 1
            return True
        return False


class DetectorSet:
    """The detectors of one partition, their incidents and the memory that keeps replays identical."""

    def __init__(self, settings: DetectionSettings, detectors: list[Detector]) -> None:
        self.settings = settings
        self.detectors = detectors
        self.allowlist = Allowlist(settings.allowlist)
        self._incidents: dict[str, dict[str, Any]] = {}
        self._history: dict[int, list[tuple[str, str, dict[str, Any]]]] = {}
        self.findings = 0
        self.dirty = False

    def add(self, flows: pd.DataFrame, wstart: np.ndarray) -> None:
        for d in self.detectors:
            d.add(flows, wstart)

    def close(self, start_ms: int, end_ms: int) -> list[Doc]:
        """Alert documents for a window that just closed."""
        done = self._history.get(start_ms)
        if done is not None:  # re-closed after a replay: the same documents as the first time
            for d in self.detectors:
                d.discard(start_ms)  # drop the rebuilt partial state; memories already hold this window
            return [Doc(i, k, s) for i, k, s in done]
        docs: list[Doc] = []
        for d in self.detectors:
            for f in d.close(start_ms, end_ms):
                if self.allowlist.allows(f):
                    continue
                self.findings += 1
                docs.append(self._incident(d, f))
        self._history[start_ms] = [(d.index, d.id, d.source) for d in docs]
        for w in sorted(self._history)[:-_HISTORY]:
            del self._history[w]
        suppress_ms = self.settings.suppress_s * 1000
        for key in [k for k, inc in self._incidents.items() if inc["bucket_end"] + suppress_ms < start_ms]:
            del self._incidents[key]
        self.dirty = True
        return docs

    def _incident(self, det: Detector, f: Finding) -> Doc:
        suppress_ms = self.settings.suppress_s * 1000
        bucket = f.window_start_ms // suppress_ms * suppress_ms
        key = f"{f.rule_id}|{f.org}|{f.entity_ip}|{bucket}"
        inc = self._incidents.get(key)
        first = f.first_seen_ms or f.window_start_ms
        last = f.last_seen_ms or f.window_end_ms
        if inc is None:
            inc = self._incidents[key] = {
                "count": 0,
                "first": first,
                "last": last,
                "score": 0.0,
                "bucket_end": bucket + suppress_ms,
                "related": [],
            }
        inc["count"] += 1
        inc["first"] = min(inc["first"], first)
        inc["last"] = max(inc["last"], last)
        inc["score"] = max(inc["score"], float(f.score))
        inc["related"] = sorted(
            {*inc["related"], *(str(ip) for ip in f.related_ips), str(f.entity_ip)} - {""}
        )[:50]
        sev, label = severity(inc["score"])
        tech_name, tactic_id, tactic_name = TECHNIQUES[f.technique]
        techniques = [f.technique, *[t for t in det.techniques if t != f.technique]]
        source: dict[str, Any] = {
            "@timestamp": _iso(inc["last"]),
            "event": {
                "kind": "alert",
                "category": ["network", "intrusion_detection"],
                "type": ["indicator"],
                "dataset": "taishi.alert",
                "severity": sev,
                "risk_score": round(inc["score"], 1),
                "start": _iso(inc["first"]),
                "end": _iso(inc["last"]),
            },
            "rule": {"id": f.rule_id, "name": det.name, "ruleset": "taishi"},
            "threat": {
                "framework": "MITRE ATT&CK",
                "technique": {"id": techniques, "name": [TECHNIQUES[t][0] for t in techniques]},
                "tactic": {"id": [tactic_id], "name": [tactic_name]},
            },
            "organization": {"id": f.org},
            "related": {"ip": inc["related"]},
            "taishi": {
                "entity": {"ip": f.entity_ip, "id": f"{f.org}|{f.entity_ip}"},
                "alert": {
                    "count": inc["count"],
                    "severity": label,
                    "technique_name": tech_name,
                    "window": {"start": _iso(f.window_start_ms), "end": _iso(f.window_end_ms)},
                },
                "evidence": plain(f.evidence),
            },
        }
        if f.sensor:
            source["observer"] = {"name": f.sensor}
        if f.source_ip:
            source["source"] = {"ip": f.source_ip}
        if f.destination_ip:
            source["destination"] = {"ip": f.destination_ip}
        doc_id = hashlib.sha1(key.encode()).hexdigest()[:32]
        day = datetime.fromtimestamp(bucket / 1000, UTC).strftime("%Y.%m.%d")
        return Doc(contract.index_name(contract.ALERTS_INDEX, f.org, day), doc_id, source)

    # Checkpointing -------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return plain(
            {
                "detectors": {d.id: d.snapshot() for d in self.detectors},
                "incidents": self._incidents,
                "history": {str(w): [[i, k, s] for i, k, s in docs] for w, docs in self._history.items()},
            }
        )

    def restore(self, state: dict[str, Any]) -> None:
        for d in self.detectors:
            if d.id in state.get("detectors", {}):
                d.restore(state["detectors"][d.id])
        self._incidents = dict(state.get("incidents", {}))
        self._history = {
            int(w): [(i, k, s) for i, k, s in docs] for w, docs in state.get("history", {}).items()
        }


def build_detectors(settings: DetectionSettings) -> list[Detector]:
    """Instantiate the enabled registered detectors with their configured parameters."""
    from taishi.detectors.registry import registered

    available = registered()
    wanted = list(available) if settings.enabled is None else settings.enabled
    unknown = sorted(set(wanted) - set(available)) + sorted(set(settings.params) - set(available))
    if unknown:
        raise ValueError(f"detection: unknown detector ids {unknown}; available: {sorted(available)}")
    out = []
    for did in wanted:
        cls = available[did]
        try:
            params = cls.Params(**settings.params.get(did, {}))
        except Exception as exc:
            raise ValueError(f"detection.params.{did}: {exc}") from None
        out.append(cls(params))
    return out
