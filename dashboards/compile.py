"""Panel specs as Elasticsearch queries: a bool filter and the aggregation Kibana would run for the panel.

Used to check, on real Elasticsearch, that every panel finds data in what the pipeline writes, and to
read the same numbers a dashboard shows without Kibana. An ``auto`` date interval is chosen the way
Kibana does, from the time range: the smallest round interval giving at most about 50 buckets (one hour
when the range is unknown). ``auto_date_histogram`` would do it server-side, but it lives in an
aggregations module that minimal Elasticsearch distributions leave out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taishi.dashboards.panels import (
    FAMILIES,
    TIME_FIELD,
    Dashboard,
    DateHistogram,
    Metric,
    Panel,
    Range,
    Term,
    field_type,
)

AUTO_BUCKETS = 50
AUTO_FALLBACK = "1h"
_ROUND_INTERVALS = ("1s", "5s", "10s", "30s", "1m", "5m", "10m", "30m", "1h", "3h", "12h", "1d", "7d", "30d")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE_RE = re.compile(r"^now-([1-9][0-9]*)([smhdw])$")

TimeBound = datetime | str


@dataclass(frozen=True, slots=True)
class CompiledPanel:
    """A panel's search: where, and the request body."""

    panel: Panel
    index: str
    body: dict[str, Any]


@dataclass(slots=True)
class PanelResult:
    """Rows of a panel's answer: one per bucket (one in all without a split), keyed by column label."""

    panel: Panel
    total: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def has_data(self) -> bool:
        """True when some row has a metric that is neither missing nor zero."""
        labels = [m.label for m in self.panel.metrics]
        return any(r.get(label) not in (None, 0, 0.0) for r in self.rows for label in labels)


def default_index(data_view: str) -> str:
    """Index pattern of a data view across every institution and day, e.g. ``taishi-alerts-v1-*``."""
    return f"{FAMILIES[data_view]}-*"


def filter_clause(f: Term | Range) -> dict[str, Any]:
    """The query clause of one filter."""
    if isinstance(f, Term):
        if len(f.values) == 1:
            return {"term": {f.field: f.values[0]}}
        return {"terms": {f.field: list(f.values)}}
    bounds = {k: v for k, v in (("gte", f.gte), ("lt", f.lt)) if v is not None}
    return {"range": {f.field: bounds}}


def _metric_agg(m: Metric) -> dict[str, Any]:
    return {m.op: {"field": m.field}}


def _metric_aggs(panel: Panel) -> dict[str, Any]:
    return {f"m{i}": _metric_agg(m) for i, m in enumerate(panel.metrics) if m.op != "count"}


def _terms_agg(t: Any, panel: Panel, inner: dict[str, Any]) -> dict[str, Any]:
    first = panel.metrics[0]
    if t.order == "alphabetical":
        order: dict[str, str] = {"_key": "asc"}
    elif first.op == "count":
        order = {"_count": "desc"}
    else:
        order = {"m0": "desc"}
        inner = {"m0": _metric_agg(first), **inner}
    agg: dict[str, Any] = {"terms": {"field": t.field, "size": t.size, "order": order}}
    if inner:
        agg["aggs"] = inner
    return agg


def _span_s(time_range: tuple[TimeBound, TimeBound] | None) -> float | None:
    if time_range is None:
        return None
    start, end = time_range
    if isinstance(start, datetime) and isinstance(end, datetime):
        return (end - start).total_seconds()
    m = _RELATIVE_RE.match(start) if isinstance(start, str) and end == "now" else None
    return int(m.group(1)) * _UNIT_S[m.group(2)] if m else None


def auto_interval(time_range: tuple[TimeBound, TimeBound] | None) -> str:
    """The round interval giving at most ~AUTO_BUCKETS buckets over the range (absolute or now-N<unit>)."""
    span = _span_s(time_range)
    if span is None:
        return AUTO_FALLBACK
    for interval in _ROUND_INTERVALS:
        if int(interval[:-1]) * _UNIT_S[interval[-1]] * AUTO_BUCKETS >= span:
            return interval
    return _ROUND_INTERVALS[-1]


def _split_agg(panel: Panel, time_range: tuple[TimeBound, TimeBound] | None) -> dict[str, Any]:
    split = panel.split
    assert split is not None
    inner = _metric_aggs(panel)
    if panel.breakdown is not None:
        inner = {"breakdown": _terms_agg(panel.breakdown, panel, inner)}
    if isinstance(split, DateHistogram):
        interval = auto_interval(time_range) if split.interval == "auto" else split.interval
        agg: dict[str, Any] = {
            "date_histogram": {"field": split.field, "fixed_interval": interval, "min_doc_count": 1}
        }
        if inner:
            agg["aggs"] = inner
        return agg
    return _terms_agg(split, panel, inner)


def compile_panel(
    panel: Panel,
    *,
    scope: Sequence[Term | Range] = (),
    index: str | None = None,
    time_range: tuple[TimeBound, TimeBound] | None = None,
) -> CompiledPanel:
    """The search for a panel under a dashboard's filters (``scope``) and an optional time range."""
    clauses = [filter_clause(f) for f in (*scope, *panel.filters)]
    if time_range is not None:
        bounds = [b.isoformat() if isinstance(b, datetime) else b for b in time_range]
        clauses.append({"range": {TIME_FIELD: {"gte": bounds[0], "lt": bounds[1]}}})
    body: dict[str, Any] = {
        "size": 0,
        "track_total_hits": True,
        "query": {"bool": {"filter": clauses}},
    }
    aggs = _metric_aggs(panel) if panel.split is None else {"split": _split_agg(panel, time_range)}
    if aggs:
        body["aggs"] = aggs
    return CompiledPanel(panel, index or default_index(panel.data_view), body)


def compile_dashboard(
    dashboard: Dashboard,
    *,
    index_for: Callable[[str], str] = default_index,
    time_range: tuple[TimeBound, TimeBound] | None = None,
) -> list[CompiledPanel]:
    """Every panel of a dashboard, scoped by the dashboard's filters; ``index_for`` maps data view to index."""
    return [
        compile_panel(p, scope=dashboard.filters, index=index_for(p.data_view), time_range=time_range)
        for p in dashboard.panels
    ]


def _value(panel: Panel, i: int, bucket: dict[str, Any]) -> Any:
    m = panel.metrics[i]
    if m.op == "count":
        return int(bucket["doc_count"])
    agg = bucket[f"m{i}"]
    # A max over a date field answers epoch ms in value and the date in value_as_string.
    if m.field and field_type(panel.data_view, m.field) == "date":
        return agg.get("value_as_string", agg["value"])
    return agg["value"]


def _metrics_row(panel: Panel, bucket: dict[str, Any]) -> dict[str, Any]:
    return {m.label: _value(panel, i, bucket) for i, m in enumerate(panel.metrics)}


def rows(panel: Panel, response: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a search response of a compiled panel into rows keyed by column label."""
    total = int(response["hits"]["total"]["value"])
    aggs = response.get("aggregations", {})
    if panel.split is None:
        return [_metrics_row(panel, {"doc_count": total, **aggs})]
    out = []
    for b in aggs["split"]["buckets"]:
        key = b.get("key_as_string", b["key"])
        if panel.breakdown is None:
            out.append({panel.split.label: key, **_metrics_row(panel, b)})
            continue
        for inner in b["breakdown"]["buckets"]:
            out.append(
                {panel.split.label: key, panel.breakdown.label: inner["key"], **_metrics_row(panel, inner)}
            )
    return out


def run(es: Any, compiled: CompiledPanel) -> PanelResult:
    """Run a compiled panel on an Elasticsearch client; missing indices answer no rows, not an error."""
    resp = es.search(index=compiled.index, **compiled.body, ignore_unavailable=True, allow_no_indices=True)
    body = resp.body if hasattr(resp, "body") else resp
    return PanelResult(compiled.panel, int(body["hits"]["total"]["value"]), rows(compiled.panel, body))
