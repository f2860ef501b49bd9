"""Every dashboard panel, defined once as a small declarative spec.

A panel names a data view (alerts, entities or flows), filters without KQL (term and range), one or more
metrics (count, sum, max, cardinality of a field), an optional split (top terms of a field, or a date
histogram) with an optional terms breakdown, and a visual type. ``kibana.py`` turns the specs into Kibana
saved objects and ``compile.py`` into the equivalent Elasticsearch queries, so what a dashboard shows and
what the tests run against real Elasticsearch are one definition.

Dashboards: the sector overview, an institution drill-down, alert triage and the behaviour timeline of
an entity. Campaign and threat-index panels are not here yet: their indices do not exist.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from taishi.pipeline import contract, documents

DataView = Literal["alerts", "entities", "flows"]
Visual = Literal["metric", "bar", "line", "table", "pie"]

# The index family behind each data view (concrete indices are <family>-<org>-<day>).
FAMILIES: dict[str, str] = {
    "alerts": contract.ALERTS_INDEX,
    "entities": contract.ENTITIES_INDEX,
    "flows": contract.FLOWS_INDEX,
}
DATA_VIEW_NAMES: dict[str, str] = {
    "alerts": "Taishi alerts",
    "entities": "Taishi entity behaviour",
    "flows": "Taishi raw flows",
}
TIME_FIELD = "@timestamp"

# Every id derives from this namespace and a name: ids are stable across exports and machines, so a
# re-import overwrites the objects it created before instead of adding copies.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "taishi/dashboards")

_INTERVAL_RE = re.compile(r"^(auto|[1-9][0-9]*[smhd])$")


def stable_id(kind: str, name: str) -> str:
    """Deterministic saved-object id (uuid5) for an object of a kind and name."""
    return str(uuid.uuid5(NAMESPACE, f"{kind}:{name}"))


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Term(_Spec):
    """Documents whose field holds one of the values (exact, keyword or ip fields)."""

    kind: Literal["term"] = "term"
    field: str
    values: tuple[str, ...] = Field(min_length=1)


class Range(_Spec):
    """Documents whose field lies in [gte, lt); either bound may be open."""

    kind: Literal["range"] = "range"
    field: str
    gte: float | str | None = None
    lt: float | str | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Range:
        if self.gte is None and self.lt is None:
            raise ValueError(f"range filter on {self.field!r}: expected gte, lt or both")
        return self


Filter = Annotated[Term | Range, Field(discriminator="kind")]


class Metric(_Spec):
    """One number per bucket: document count, or sum, max or distinct count of a field."""

    op: Literal["count", "sum", "max", "cardinality"]
    field: str | None = None
    label: str

    @model_validator(mode="after")
    def _field_fits_op(self) -> Metric:
        if self.op == "count" and self.field is not None:
            raise ValueError(f"metric {self.label!r}: count takes no field")
        if self.op != "count" and not self.field:
            raise ValueError(f"metric {self.label!r}: {self.op} needs a field")
        return self


class Terms(_Spec):
    """Top values of a field, ordered by the panel's first metric (or alphabetically)."""

    kind: Literal["terms"] = "terms"
    field: str
    size: int = Field(10, ge=1, le=500)
    label: str
    order: Literal["metric", "alphabetical"] = "metric"


class DateHistogram(_Spec):
    """Buckets of time; ``auto`` lets Kibana (or Elasticsearch) pick the interval."""

    kind: Literal["date_histogram"] = "date_histogram"
    field: str = TIME_FIELD
    interval: str = "auto"
    label: str = "Time"

    @model_validator(mode="after")
    def _interval(self) -> DateHistogram:
        if not _INTERVAL_RE.match(self.interval):
            raise ValueError(f"date histogram interval {self.interval!r}: expected auto or e.g. 5m, 1h, 1d")
        return self


Split = Annotated[Terms | DateHistogram, Field(discriminator="kind")]


class Panel(_Spec):
    """One visualization: what to count, how to split it, how to draw it."""

    key: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]*$", description="stable name; the saved-object id derives from it"
    )
    title: str
    description: str = ""
    data_view: DataView
    visual: Visual
    metrics: tuple[Metric, ...] = Field(min_length=1)
    split: Split | None = None
    breakdown: Terms | None = None
    filters: tuple[Filter, ...] = ()
    width: int = Field(24, ge=4, le=48, description="grid columns of 48")
    height: int = Field(12, ge=4)

    @model_validator(mode="after")
    def _shape_fits_visual(self) -> Panel:
        where = f"panel {self.key!r}"
        labels = [m.label for m in self.metrics]
        labels += [s.label for s in (self.split, self.breakdown) if s is not None]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{where}: column labels must be unique, got {labels}")
        if self.breakdown is not None and self.split is None:
            raise ValueError(f"{where}: a breakdown needs a split")
        if self.visual == "metric" and (self.split is not None or len(self.metrics) != 1):
            raise ValueError(f"{where}: a metric panel shows one metric and no split")
        if self.visual in ("bar", "line", "table", "pie") and self.split is None:
            raise ValueError(f"{where}: a {self.visual} panel needs a split")
        if self.visual == "pie" and (
            not isinstance(self.split, Terms) or len(self.metrics) != 1 or self.breakdown is not None
        ):
            raise ValueError(f"{where}: a pie slices one metric by one terms split")
        return self

    @property
    def id(self) -> str:
        """Saved-object id of this panel's visualization."""
        return stable_id("lens", self.key)

    def fields(self) -> list[tuple[str, str]]:
        """Every (field, use) the panel touches; use is the metric op, terms, date_histogram or filter."""
        out: list[tuple[str, str]] = [(m.field, m.op) for m in self.metrics if m.field]
        out += [(s.field, s.kind) for s in (self.split, self.breakdown) if s is not None]
        out += [(f.field, "filter") for f in self.filters]
        return out


class Dashboard(_Spec):
    """Panels laid out left to right, top to bottom, under filters that scope every panel."""

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    description: str = ""
    panels: tuple[Panel, ...] = Field(min_length=1)
    filters: tuple[Term, ...] = Field((), description="shown as editable filter pills in Kibana")
    time_from: str = "now-24h"

    @property
    def id(self) -> str:
        """Saved-object id of this dashboard."""
        return stable_id("dashboard", self.key)

    def data_views(self) -> list[str]:
        """Data views the panels read, in first-use order."""
        return list(dict.fromkeys(p.data_view for p in self.panels))


# Field types --------------------------------------------------------------------------------------------
@cache
def mapped_types(data_view: str) -> dict[str, str]:
    """Dotted field path -> Elasticsearch type, from the index template the pipeline installs."""
    template = documents.templates()[FAMILIES[data_view]]
    out: dict[str, str] = {}

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = spec["type"]

    walk(template["template"]["mappings"]["properties"], "")
    return out


def field_type(data_view: str, field: str) -> str:
    """The mapped type of a field of a data view; names the data view and field when it is not mapped."""
    try:
        return mapped_types(data_view)[field]
    except KeyError:
        raise ValueError(
            f"field {field!r} is not mapped in the {FAMILIES[data_view]} index template"
        ) from None


# Panels, each defined once ------------------------------------------------------------------------------
_COUNT_ALERTS = Metric(op="count", label="Incidents")
_OVER_TIME = DateHistogram()

INCIDENTS = Panel(
    key="incidents",
    title="Incidents",
    description="Alert documents: one per rule, institution and entity within a suppression period.",
    data_view="alerts",
    visual="metric",
    metrics=(_COUNT_ALERTS,),
    width=12,
    height=8,
)
FINDINGS = Panel(
    key="findings",
    title="Findings folded into incidents",
    description="Sum of taishi.alert.count: every detector finding, repeats included.",
    data_view="alerts",
    visual="metric",
    metrics=(Metric(op="sum", field="taishi.alert.count", label="Findings"),),
    width=12,
    height=8,
)
LARGEST_INCIDENT = Panel(
    key="largest-incident",
    title="Most repeated incident",
    description="Largest taishi.alert.count: findings suppressed into a single incident.",
    data_view="alerts",
    visual="metric",
    metrics=(Metric(op="max", field="taishi.alert.count", label="Findings in one incident"),),
    width=12,
    height=8,
)
MONITORED_HOSTS = Panel(
    key="monitored-hosts",
    title="Monitored hosts",
    description="Distinct internal hosts with behaviour windows.",
    data_view="entities",
    visual="metric",
    metrics=(Metric(op="cardinality", field="taishi.entity.id", label="Hosts"),),
    width=12,
    height=8,
)
ALERTS_BY_INSTITUTION = Panel(
    key="alerts-by-institution",
    title="Incidents by institution",
    data_view="alerts",
    visual="bar",
    metrics=(_COUNT_ALERTS,),
    split=Terms(field="organization.id", size=30, label="Institution"),
)
TECHNIQUES_OVER_TIME = Panel(
    key="techniques-over-time",
    title="ATT&CK techniques over time",
    data_view="alerts",
    visual="bar",
    metrics=(_COUNT_ALERTS,),
    split=_OVER_TIME,
    breakdown=Terms(field="threat.technique.id", size=10, label="Technique"),
)
TOP_ATTACKERS = Panel(
    key="top-attacker-sources",
    title="Top attacker sources by institutions reached",
    description="External sources ranked by how many institutions they raised incidents in.",
    data_view="alerts",
    visual="table",
    metrics=(
        Metric(op="cardinality", field="organization.id", label="Institutions reached"),
        _COUNT_ALERTS,
    ),
    split=Terms(field="source.ip", size=15, label="Source"),
)
SEVERITY = Panel(
    key="severity-breakdown",
    title="Severity",
    data_view="alerts",
    visual="pie",
    metrics=(_COUNT_ALERTS,),
    split=Terms(field="taishi.alert.severity", size=4, label="Severity"),
)
ALERTS_BY_RULE = Panel(
    key="alerts-by-rule",
    title="Incidents by rule",
    data_view="alerts",
    visual="bar",
    metrics=(_COUNT_ALERTS, Metric(op="sum", field="taishi.alert.count", label="Findings")),
    split=Terms(field="rule.id", size=20, label="Rule"),
)
ALERTS_BY_ENTITY = Panel(
    key="alerts-by-entity",
    title="Incidents by entity",
    description="The address each incident is about (an internal host, or the external scanner).",
    data_view="alerts",
    visual="bar",
    metrics=(_COUNT_ALERTS,),
    split=Terms(field="taishi.entity.ip", size=15, label="Host"),
)
HIGH_SEVERITY_BY_INSTITUTION = Panel(
    key="high-severity-by-institution",
    title="High and critical incidents by institution",
    data_view="alerts",
    visual="bar",
    metrics=(_COUNT_ALERTS,),
    split=Terms(field="organization.id", size=30, label="Institution"),
    filters=(Term(field="taishi.alert.severity", values=("high", "critical")),),
)
LATEST_INCIDENTS = Panel(
    key="latest-incidents",
    title="Latest incidents",
    description="Entities with incidents, most recent first, per rule.",
    data_view="alerts",
    visual="table",
    metrics=(
        Metric(op="max", field="@timestamp", label="Last seen"),
        Metric(op="max", field="event.severity", label="Severity (1-4)"),
        Metric(op="max", field="taishi.alert.count", label="Findings"),
    ),
    split=Terms(field="taishi.entity.id", size=25, label="Entity"),
    breakdown=Terms(field="rule.id", size=5, label="Rule"),
    width=48,
    height=16,
)
TOP_TALKERS = Panel(
    key="entity-top-talkers",
    title="Top talkers (bytes out)",
    data_view="entities",
    visual="bar",
    metrics=(
        Metric(op="sum", field="taishi.behaviour.bytes_out", label="Bytes out"),
        Metric(op="sum", field="taishi.behaviour.bytes_in", label="Bytes in"),
    ),
    split=Terms(field="taishi.entity.id", size=15, label="Entity"),
)
FAILING_HOSTS = Panel(
    key="hosts-with-failed-connections",
    title="Hosts with unanswered outbound connections",
    data_view="entities",
    visual="bar",
    metrics=(Metric(op="sum", field="taishi.behaviour.failed_connections_out", label="Unanswered"),),
    split=Terms(field="taishi.entity.id", size=15, label="Entity"),
    filters=(Range(field="taishi.behaviour.failed_connections_out", gte=1),),
)
FLOW_DIRECTIONS = Panel(
    key="raw-flow-directions",
    title="Raw flow volume by direction (institutions that index raw flows)",
    data_view="flows",
    visual="pie",
    metrics=(Metric(op="sum", field="network.bytes", label="Bytes"),),
    split=Terms(field="network.direction", size=4, label="Direction"),
)
BYTES_OVER_TIME = Panel(
    key="entity-bytes-over-time",
    title="Bytes out and in",
    data_view="entities",
    visual="line",
    metrics=(
        Metric(op="sum", field="taishi.behaviour.bytes_out", label="Bytes out"),
        Metric(op="sum", field="taishi.behaviour.bytes_in", label="Bytes in"),
    ),
    split=_OVER_TIME,
    width=48,
)
PEERS_OVER_TIME = Panel(
    key="entity-peers-over-time",
    title="Distinct peers per window",
    data_view="entities",
    visual="line",
    metrics=(Metric(op="max", field="taishi.behaviour.distinct_peers", label="Distinct peers"),),
    split=_OVER_TIME,
)
CONNECTIONS_OVER_TIME = Panel(
    key="entity-connections-over-time",
    title="Connections started and unanswered",
    data_view="entities",
    visual="line",
    metrics=(
        Metric(op="sum", field="taishi.behaviour.connections_out", label="Started"),
        Metric(op="sum", field="taishi.behaviour.failed_connections_out", label="Unanswered"),
    ),
    split=_OVER_TIME,
)
ENTITY_ALERTS_OVER_TIME = Panel(
    key="entity-alerts-over-time",
    title="Incidents over time",
    data_view="alerts",
    visual="bar",
    metrics=(_COUNT_ALERTS,),
    split=_OVER_TIME,
    breakdown=Terms(field="rule.id", size=10, label="Rule"),
)


# Dashboards ---------------------------------------------------------------------------------------------
def sector_overview() -> Dashboard:
    """The sector-wide threat picture."""
    return Dashboard(
        key="sector-overview",
        title="Taishi · Sector overview",
        description="Incidents across every institution: where, which techniques, who attacks many.",
        panels=(
            INCIDENTS,
            FINDINGS,
            MONITORED_HOSTS,
            LARGEST_INCIDENT,
            ALERTS_BY_INSTITUTION,
            SEVERITY,
            TECHNIQUES_OVER_TIME,
            TOP_ATTACKERS,
        ),
    )


def institution_drilldown(org: str | None = None) -> Dashboard:
    """One institution's picture; without an id, a template to scope with an organization.id filter."""
    if org is not None and not contract.ORG_ID_RE.match(org):
        raise ValueError(f"institution id {org!r} is not valid (expected {contract.ORG_ID_RE.pattern})")
    return Dashboard(
        key=f"institution-{org}" if org else "institution",
        title=f"Taishi · Institution {org}" if org else "Taishi · Institution drill-down",
        description=(
            f"Incidents and host behaviour of {org}; edit the organization.id filter for another."
            if org
            else "Add an organization.id filter (or click an institution) to scope every panel."
        ),
        panels=(
            INCIDENTS,
            FINDINGS,
            MONITORED_HOSTS,
            LARGEST_INCIDENT,
            ALERTS_BY_ENTITY,
            SEVERITY,
            TECHNIQUES_OVER_TIME,
            TOP_ATTACKERS,
            TOP_TALKERS,
            FAILING_HOSTS,
            FLOW_DIRECTIONS,
        ),
        filters=(Term(field="organization.id", values=(org,)),) if org else (),
    )


def alert_triage() -> Dashboard:
    """What to look at first: severities, rules, repeats and the latest incidents."""
    return Dashboard(
        key="alert-triage",
        title="Taishi · Alert triage",
        panels=(
            INCIDENTS,
            FINDINGS,
            LARGEST_INCIDENT,
            SEVERITY,
            ALERTS_BY_RULE,
            HIGH_SEVERITY_BY_INSTITUTION,
            LATEST_INCIDENTS,
        ),
    )


def entity_timeline(entity: str | None = None) -> Dashboard:
    """Behaviour of one entity (``<org>|<ip>``) over time; without one, of every entity together."""
    if entity is not None and not re.match(r"^[^|]+\|[^|]+$", entity):
        raise ValueError(f"entity {entity!r}: expected <institution>|<ip>, as in taishi.entity.id")
    slug = re.sub(r"[^a-z0-9]+", "-", entity.lower()).strip("-") if entity else ""
    return Dashboard(
        key=f"entity-{slug}" if entity else "entity",
        title=f"Taishi · Entity {entity}" if entity else "Taishi · Entity behaviour timeline",
        description=(
            "Behaviour windows and incidents of one host; edit the taishi.entity.id filter for another."
            if entity
            else "Add a taishi.entity.id filter (or click an entity) to follow one host."
        ),
        panels=(
            BYTES_OVER_TIME,
            PEERS_OVER_TIME,
            CONNECTIONS_OVER_TIME,
            ENTITY_ALERTS_OVER_TIME,
            TOP_TALKERS,
        ),
        filters=(Term(field="taishi.entity.id", values=(entity,)),) if entity else (),
    )


def all_dashboards(institutions: Iterable[str] = (), entities: Iterable[str] = ()) -> list[Dashboard]:
    """The standard dashboards, plus a drill-down per institution and a timeline per entity asked for."""
    out = [sector_overview(), alert_triage(), institution_drilldown(), entity_timeline()]
    out += [institution_drilldown(org) for org in dict.fromkeys(institutions)]
    out += [entity_timeline(e) for e in dict.fromkeys(entities)]
    return out


def all_panels(dashboards: Sequence[Dashboard]) -> list[Panel]:
    """Distinct panels of the dashboards (a panel shared by several dashboards appears once)."""
    seen: dict[str, Panel] = {}
    for d in dashboards:
        for p in d.panels:
            if seen.setdefault(p.key, p) != p:
                raise ValueError(f"two different panels share the key {p.key!r}")
    return list(seen.values())
