"""Contact with known-bad indicators: threat-intel hits become alerts about the internal host involved.

Enrichment marks a flow whose address is on a configured feed (``taishi.threat.indicator`` / ``.source``).
A feed hit alone says little about how much to trust it, so the detector keeps its own catalogue of the
indicators' confidence and expiry — the same feed files (``intel_files``, read by the parser enrichment
uses, plus an optional ``expires`` column) and/or inline entries (``indicators``). With a catalogue it also
matches addresses itself, and domains against ``dns.question.name``, ``tls.client.server_name`` and
``url.domain``, which enrichment does not. A hit counts while the indicator is live at the flow's event
time and its confidence reaches ``min_confidence``; an enrichment hit the catalogue does not know gets
``default_confidence``.

Per window and internal host: the indicators it talked to, which side started (the host reaching out —
ATT&CK T1071 Application Layer Protocol, .004 for a DNS question, .001 for TLS/HTTP names — or the
indicator reaching in, T1595 Active Scanning), flows and bytes. The score is a pure function of the
indicator's confidence and the volume.
"""

from __future__ import annotations

import csv
import ipaddress
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms, strings
from taishi.pipeline.codes import codes_of, union_codes
from taishi.pipeline.enrich import load_indicators

NEVER = 2**62  # expiry of an indicator without one
# Name columns matched against domain indicators, and what a hit in each is called in the evidence.
NAME_COLUMNS = {"dns.question.name": "dns", "tls.client.server_name": "tls", "url.domain": "http"}
_MAX_LISTED = 10


class IntelIndicator(BaseModel):
    """One inline indicator (the same facts a feed file row carries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: str = Field(description="IP address or domain (a domain also matches its subdomains)")
    source: str = Field("params", description="feed name shown in the evidence")
    confidence: int = Field(50, ge=0, le=100, description="how sure the feed is, 0..100")
    expires: datetime | None = Field(None, description="UTC; flows at or after it no longer match")


class IntelParams(DetectorParams):
    """Tunables of the threat-intel detector."""

    min_confidence: int = Field(
        50, ge=0, le=100, description="indicators below this confidence stay silent (feeds' 'moderate')"
    )
    default_confidence: int = Field(
        50,
        ge=0,
        le=100,
        description="confidence of an enrichment hit the catalogue does not know (a plain list's default)",
    )
    intel_files: list[Path] = Field(
        default_factory=list,
        description="feed files: CSV indicator,type,source,confidence[,expires] or one indicator a line; "
        "give the same files as enrich.intel_files",
    )
    indicators: list[IntelIndicator] = Field(default_factory=list, description="inline indicators")


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """What the detector knows of one indicator."""

    value: str
    kind: str  # ip or domain
    source: str
    confidence: int
    expires_ms: int = NEVER


def intel_score(confidence: float, flows: int, bytes_total: int) -> float:
    """0..100: 70 % of the confidence for one tiny contact, up to all of it with volume.

    Volume is half flows (1 → 0, 1,000 → full) and half bytes (1 → 0, 100 MB → full), on log scales.
    """
    if confidence <= 0 or flows <= 0:
        return 0.0
    volume = 0.5 * min(1.0, math.log10(flows) / 3) + 0.5 * min(1.0, math.log10(1 + max(0, bytes_total)) / 8)
    return round(min(100.0, confidence * (0.7 + 0.3 * volume)), 1)


def load_catalogue(paths: list[Path], inline: list[IntelIndicator]) -> dict[str, CatalogueEntry]:
    """Indicators by normalised value: feed files (enrichment's parser, plus ``expires``), then inline ones."""
    out: dict[str, CatalogueEntry] = {}
    if paths:
        expiry = _expiries(paths)
        for value, ind in load_indicators(paths).items():
            out[value] = CatalogueEntry(value, ind.kind, ind.source, ind.confidence, expiry.get(value, NEVER))
    for e in inline:
        v = normalise(e.value)
        expires = NEVER if e.expires is None else _ms(e.expires)
        out[v] = CatalogueEntry(v, _kind(v), e.source, e.confidence, expires)
    return out


def normalise(value: str) -> str:
    """Addresses in canonical form, names lower case without the trailing dot (as enrichment does)."""
    value = value.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _kind(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return "ip"
    except ValueError:
        return "domain"


def _ms(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _expiries(paths: list[Path]) -> dict[str, int]:
    """The optional ``expires`` column of CSV feeds (ISO 8601 date or time, UTC when no zone is given)."""
    out: dict[str, int] = {}
    for path in paths:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        numbered = [
            (no, ln) for no, ln in enumerate(lines, 1) if ln.strip() and not ln.lstrip().startswith("#")
        ]
        if not numbered or not numbered[0][1].lower().startswith("indicator,"):
            continue
        reader = csv.DictReader([ln for _, ln in numbered])
        if "expires" not in (reader.fieldnames or []):
            continue
        for (lineno, _), row in zip(numbered[1:], reader, strict=False):
            text = (row.get("expires") or "").strip()
            if not text:
                continue
            try:
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: expires {text!r} is not an ISO 8601 date or time"
                ) from None
            out[normalise(row.get("indicator") or "")] = _ms(when)
    return out


class ThreatIntel(WindowedDetector):
    """Internal hosts in contact with known-bad addresses or domains from threat-intel feeds."""

    id = "intel"
    name = "Threat-intel indicator contact"
    techniques = ("T1071", "T1071.001", "T1071.004", "T1595")
    Params = IntelParams
    params: IntelParams

    def __init__(self, params: IntelParams | None = None) -> None:
        super().__init__(params)
        catalogue = load_catalogue(self.params.intel_files, self.params.indicators)
        self._ips = {k: v for k, v in catalogue.items() if v.kind == "ip"}
        self._domains = {k: v for k, v in catalogue.items() if v.kind == "domain"}
        self._name_cache: dict[str, str] = {}

    # Matching -----------------------------------------------------------------------------------------
    def _ip_hits(self, flows: pd.DataFrame) -> pd.DataFrame | None:
        """Rows whose address is an indicator (enrichment's mark or the catalogue), one per row."""
        n = len(flows)
        dst_hit = np.zeros(n, bool)
        src_hit = np.zeros(n, bool)
        if self._ips:
            s, d, uniques = union_codes(flows["source.ip"], flows["destination.ip"])
            known = np.fromiter((u in self._ips for u in uniques), bool, len(uniques))
            known = np.append(known, False)  # code -1 (missing) lands here
            dst_hit = known[np.where(d < 0, len(uniques), d)]
            src_hit = known[np.where(s < 0, len(uniques), s)]
        enriched = np.zeros(n, bool)
        if "taishi.threat.indicator" in flows.columns:
            c, values = codes_of(flows["taishi.threat.indicator"])
            marked = np.append(np.array([isinstance(v, str) and v != "" for v in values], bool), False)
            enriched = marked[np.where(c < 0, len(values), c)]
        rows = np.flatnonzero(dst_hit | src_hit | enriched)
        if not len(rows):
            return None
        f = flows.iloc[rows]
        src, dst = strings(f["source.ip"]), strings(f["destination.ip"])
        if "taishi.threat.indicator" in f.columns:
            mark = np.array([v if isinstance(v, str) else "" for v in strings(f["taishi.threat.indicator"])])
            feed = np.array([v if isinstance(v, str) else "" for v in strings(f["taishi.threat.source"])])
        else:
            mark = np.full(len(f), "", dtype=object)
            feed = mark.copy()
        # The destination first, as enrichment does: the usual direction of C2.
        by_dst = dst_hit[rows] | ((mark != "") & (mark == dst))
        indicator = np.where(by_dst, dst, np.where(mark != "", mark, src)).astype(object)
        return self._hit_frame(f, by_dst, indicator, feed, np.where(by_dst, "destination.ip", "source.ip"))

    def _name_hits(self, flows: pd.DataFrame) -> list[pd.DataFrame]:
        """Rows whose DNS question, TLS server name or URL domain is (under) a domain indicator."""
        out = []
        for col, _ in NAME_COLUMNS.items():
            if not self._domains or col not in flows.columns:
                continue
            c, values = codes_of(flows[col])
            matched = np.array([self._match_name(v) for v in values] + [""], dtype=object)
            ind = matched[np.where(c < 0, len(values), c)]
            rows = np.flatnonzero(ind != "")
            if len(rows):
                f = flows.iloc[rows]
                feed = np.full(len(rows), "", dtype=object)
                out.append(
                    self._hit_frame(f, np.ones(len(rows), bool), ind[rows], feed, np.full(len(rows), col))
                )
        return out

    def _match_name(self, name: Any) -> str:
        """The domain indicator ``name`` is, or is under; empty when none."""
        if not isinstance(name, str) or not name:
            return ""
        hit = self._name_cache.get(name)
        if hit is None:
            labels = name.lower().rstrip(".").split(".")
            hit = next(
                (s for s in (".".join(labels[i:]) for i in range(len(labels) - 1)) if s in self._domains),
                "",
            )
            if len(self._name_cache) > 200_000:
                self._name_cache.clear()
            self._name_cache[name] = hit
        return hit

    def _hit_frame(
        self,
        f: pd.DataFrame,
        entity_started: np.ndarray,
        indicator: np.ndarray,
        feed: np.ndarray,
        on: np.ndarray,
    ) -> pd.DataFrame:
        """Hit rows seen from the internal entity's side, live and confident indicators only."""
        src_int = f["taishi.source.internal"].to_numpy(bool)
        dst_int = f["taishi.destination.internal"].to_numpy(bool)
        sb, db = f["source.bytes"].to_numpy(np.int64), f["destination.bytes"].to_numpy(np.int64)
        src, dst = strings(f["source.ip"]), strings(f["destination.ip"])
        ts = epoch_ms(f["@timestamp"])
        known = [self._ips.get(i) or self._domains.get(i) for i in indicator]
        p = self.params
        conf = np.array([k.confidence if k else p.default_confidence for k in known], np.int64)
        expires = np.array([k.expires_ms if k else NEVER for k in known], np.int64)
        feed = np.array(
            [k.source if k else (fd or "enrichment") for k, fd in zip(known, feed, strict=True)], object
        )
        direction = (
            strings(f["network.direction"])
            if "network.direction" in f.columns
            else np.full(len(f), "", object)
        )
        keep = (
            np.where(entity_started, src_int, dst_int)
            & (conf >= p.min_confidence)
            & (ts < expires)
            & (np.where(entity_started, src, dst) != indicator)
        )
        if not keep.any():
            return pd.DataFrame()
        k = keep
        return pd.DataFrame(
            {
                "org": strings(f["organization.id"])[k],
                "entity": np.where(entity_started, src, dst)[k],
                "peer": np.where(entity_started, dst, src)[k],
                "indicator": indicator[k],
                "started": entity_started[k],
                "on": on[k],
                "feed": feed[k],
                "confidence": conf[k],
                "direction": direction[k],
                "port": f["destination.port"].to_numpy(np.int64)[k],
                "bytes_out": np.where(entity_started, sb, db)[k],
                "bytes_in": np.where(entity_started, db, sb)[k],
                "answered": (db > 0)[k].astype(np.int64),  # the responder replied
                "n": np.ones(int(k.sum()), np.int64),
                "sensor": strings(f["observer.name"])[k],
                "first": ts[k],
                "last": ts[k],
            }
        )

    # Windows ------------------------------------------------------------------------------------------
    _KEY: ClassVar[list[str]] = ["org", "entity", "indicator", "started", "on", "feed", "confidence", "port"]
    _AGG: ClassVar[dict[str, str]] = {
        "peer": "first",
        "direction": "first",
        "bytes_out": "sum",
        "bytes_in": "sum",
        "answered": "sum",
        "n": "sum",
        "sensor": "first",
        "first": "min",
        "last": "max",
    }

    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        if not self._ips and not self._domains and "taishi.threat.indicator" not in flows.columns:
            return flows.iloc[:0]
        parts = [h for h in [self._ip_hits(flows), *self._name_hits(flows)] if h is not None and len(h)]
        if not parts:
            return flows.iloc[:0]
        hits = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return hits.groupby(self._KEY, sort=False).agg(self._AGG).reset_index()

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        g = frame.groupby(self._KEY, sort=False).agg(self._AGG).reset_index()
        per = (
            g.groupby(["org", "entity", "indicator", "started", "on", "feed", "confidence"], sort=True)
            .agg(
                peer=("peer", "first"),
                direction=("direction", "first"),
                bytes_out=("bytes_out", "sum"),
                bytes_in=("bytes_in", "sum"),
                answered=("answered", "sum"),
                n=("n", "sum"),
                ports=("port", lambda s: sorted({int(x) for x in s})[:_MAX_LISTED]),
                sensor=("sensor", "first"),
                first=("first", "min"),
                last=("last", "max"),
            )
            .reset_index()
        )
        per["score"] = [
            intel_score(c, int(n), int(bo + bi))
            for c, n, bo, bi in zip(
                per["confidence"], per["n"], per["bytes_out"], per["bytes_in"], strict=True
            )
        ]
        out: list[Finding] = []
        for (org, entity), rows in per.groupby(["org", "entity"], sort=True):
            rows = rows.sort_values(["score", "n", "indicator"], ascending=[False, False, True])
            top = rows.iloc[0]
            started = bool(top["started"])
            kind = "outbound" if started else "inbound"
            evidence: dict[str, Any] = {
                "kind": kind,
                "indicator": str(top["indicator"]),
                "indicator_kind": "ip" if top["on"] in ("source.ip", "destination.ip") else "domain",
                "matched_on": str(top["on"]),
                "feed": str(top["feed"]),
                "confidence": int(top["confidence"]),
                "min_confidence": self.params.min_confidence,
                "direction": str(top["direction"]) or kind,
                "flows": int(top["n"]),
                "answered_flows": int(top["answered"]),
                "bytes_out": int(top["bytes_out"]),
                "bytes_in": int(top["bytes_in"]),
                "ports": list(top["ports"]),
                "indicators_in_window": int(rows["indicator"].nunique()),
            }
            if len(rows) > 1:
                evidence["other_hits"] = [
                    {
                        "indicator": str(r.indicator),
                        "feed": str(r.feed),
                        "confidence": int(r.confidence),
                        "kind": "outbound" if r.started else "inbound",
                        "flows": int(r.n),
                    }
                    for r in rows.iloc[1 : 1 + _MAX_LISTED].itertuples(index=False)
                ]
            peers = sorted({str(p) for p in rows["peer"]})[:_MAX_LISTED]
            out.append(
                Finding(
                    rule_id=self.id,
                    org=str(org),
                    entity_ip=str(entity),
                    window_start_ms=start_ms,
                    window_end_ms=end_ms,
                    score=float(top["score"]),
                    evidence=evidence,
                    technique=_technique(started, str(top["on"])),
                    sensor=str(top["sensor"]),
                    source_ip=str(entity) if started else str(top["peer"]),
                    destination_ip=str(top["peer"]) if started else str(entity),
                    related_ips=[str(entity), *peers],
                    first_seen_ms=int(rows["first"].min()),
                    last_seen_ms=int(rows["last"].max()),
                )
            )
        return out


def _technique(entity_started: bool, matched_on: str) -> str:
    """Reaching out to an indicator is C2-like (by DNS, web names or plain IP); being reached is scanning."""
    if not entity_started:
        return "T1595"
    return {
        "dns.question.name": "T1071.004",
        "tls.client.server_name": "T1071.001",
        "url.domain": "T1071.001",
    }.get(matched_on, "T1071")
