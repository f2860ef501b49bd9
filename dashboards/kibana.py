"""Kibana saved objects (NDJSON) generated from the panel specs: data views, Lens visualizations, dashboards.

Format. Every object is written in the shape a Kibana 8.6 export has and says so: the legacy
``migrationVersion`` map (``{"lens": "8.6.0"}``, ``{"dashboard": "8.6.0"}``, ``{"index-pattern":
"8.0.0"}``) plus ``coreMigrationVersion: "8.6.0"``. That is the most conservative shape both lines accept:

- Kibana reads a document's type version as ``typeMigrationVersion`` or, when absent, from the legacy
  ``migrationVersion`` map, in 8.x and in 9.x alike, and runs every migration newer than it on import;
  exports of one major import into the next, so 8.6-shaped objects import into 8.6 … 8.19 and 9.x.
- 8.6 is the first version whose Lens state keeps its layers under ``datasourceStates.formBased`` (its
  8.6.0 migration renamed ``indexpattern``) with pie metrics as ``metrics: [...]``; the one Lens
  migration after it (8.9.0, compact number formats on metric columns with an explicit format) does not
  touch these objects, which set no formats.
- Kibana 8.0–8.5 refuse these objects ("belongs to a more recent version"); for them the Lens state would
  have to be written with the older ``indexpattern`` key.

Shapes. Lens objects are by-reference visualizations (``type: "lens"``): one form-based layer whose columns
are the panel's split, breakdown and metrics; the layer's data view is a ``references`` entry named
``indexpattern-datasource-layer-<layer>``; panel filters are Kibana phrase/phrases/range filters whose
``meta.index`` names a ``filter-index-pattern-<n>`` reference. Dashboards list panels in ``panelsJSON``
(``panelRefName: panel_<i>`` with the reference named ``<i>:panel_<i>``) and keep their scoping filters in
``kibanaSavedObjectMeta.searchSourceJSON`` as editable filter pills. Ids are uuid5 of names: re-importing
with ``overwrite=true`` replaces what an earlier import created.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from taishi.dashboards.panels import (
    DATA_VIEW_NAMES,
    FAMILIES,
    TIME_FIELD,
    Dashboard,
    DateHistogram,
    Metric,
    Panel,
    Range,
    Term,
    Terms,
    all_panels,
    field_type,
    mapped_types,
    stable_id,
)

KIBANA_SHAPE_VERSION = "8.6.0"
_TYPE_VERSIONS = {"index-pattern": "8.0.0", "lens": KIBANA_SHAPE_VERSION, "dashboard": KIBANA_SHAPE_VERSION}
_LENS_TYPES = {
    "metric": "lnsMetric",
    "bar": "lnsXY",
    "line": "lnsXY",
    "table": "lnsDatatable",
    "pie": "lnsPie",
}
_DATA_TYPES = {
    "keyword": "string",
    "ip": "ip",
    "date": "date",
    "boolean": "boolean",
    "long": "number",
    "integer": "number",
    "short": "number",
    "float": "number",
    "double": "number",
}
_BYTES_FIELDS = ("bytes_out", "bytes_in", ".bytes")
_GRID_COLUMNS = 48


def data_view_id(data_view: str) -> str:
    """Saved-object id of a data view (index pattern)."""
    return stable_id("index-pattern", FAMILIES[data_view])


def _envelope(
    kind: str, oid: str, attributes: dict[str, Any], references: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "type": kind,
        "id": oid,
        "attributes": attributes,
        "references": references,
        "coreMigrationVersion": KIBANA_SHAPE_VERSION,
        "migrationVersion": {kind: _TYPE_VERSIONS[kind]},
    }


def _ref(kind: str, oid: str, name: str) -> dict[str, str]:
    return {"type": kind, "id": oid, "name": name}


# Data views ---------------------------------------------------------------------------------------------
def data_view_object(data_view: str) -> dict[str, Any]:
    """The index-pattern object of a data view: ``taishi-<family>-v1-*`` on ``@timestamp``."""
    formats = {
        f: {"id": "bytes"}
        for f, t in mapped_types(data_view).items()
        if t == "long" and f.endswith(_BYTES_FIELDS)
    }
    return _envelope(
        "index-pattern",
        data_view_id(data_view),
        {
            "title": f"{FAMILIES[data_view]}-*",
            "name": DATA_VIEW_NAMES[data_view],
            "timeFieldName": TIME_FIELD,
            "fields": "[]",
            "fieldFormatMap": json.dumps(formats, sort_keys=True),
            "runtimeFieldMap": "{}",
            "sourceFilters": "[]",
            "typeMeta": "{}",
        },
        [],
    )


# Filters ------------------------------------------------------------------------------------------------
def kibana_filter(f: Term | Range, index_ref: str, *, ref_key: str = "index") -> dict[str, Any]:
    """A Kibana filter (phrase, phrases or range) whose data view is the reference named ``index_ref``."""
    meta: dict[str, Any] = {
        "alias": None,
        "negate": False,
        "disabled": False,
        "key": f.field,
        ref_key: index_ref,
    }
    query: dict[str, Any]
    if isinstance(f, Term) and len(f.values) == 1:
        meta.update(type="phrase", params={"query": f.values[0]})
        query = {"match_phrase": {f.field: f.values[0]}}
    elif isinstance(f, Term):
        meta.update(type="phrases", params=list(f.values), value=", ".join(f.values))
        query = {
            "bool": {"should": [{"match_phrase": {f.field: v}} for v in f.values], "minimum_should_match": 1}
        }
    else:
        bounds = {k: v for k, v in (("gte", f.gte), ("lt", f.lt)) if v is not None}
        meta.update(type="range", params=bounds)
        query = {"range": {f.field: bounds}}
    return {"meta": meta, "query": query, "$state": {"store": "appState"}}


# Lens ---------------------------------------------------------------------------------------------------
def _column_ids(panel: Panel) -> dict[str, str]:
    roles = ["split", "breakdown"] + [f"m{i}" for i in range(len(panel.metrics))]
    return {r: stable_id("lens-column", f"{panel.key}:{r}") for r in roles}


def _data_type(panel: Panel, field: str) -> str:
    es_type = field_type(panel.data_view, field)
    if es_type not in _DATA_TYPES:
        raise ValueError(f"panel {panel.key!r}: field {field!r} is {es_type}, which Lens cannot aggregate")
    return _DATA_TYPES[es_type]


def _metric_column(panel: Panel, m: Metric) -> dict[str, Any]:
    col: dict[str, Any] = {
        "label": m.label,
        "customLabel": True,
        "isBucketed": False,
        "scale": "ratio",
        "params": {"emptyAsNull": True},
    }
    if m.op == "count":
        col.update(operationType="count", dataType="number", sourceField="___records___")
        return col
    assert m.field is not None
    op = "unique_count" if m.op == "cardinality" else m.op
    data_type = "number" if m.op in ("sum", "cardinality") else _data_type(panel, m.field)
    col.update(operationType=op, dataType=data_type, sourceField=m.field)
    return col


def _terms_column(panel: Panel, t: Terms, order_column: str) -> dict[str, Any]:
    order: dict[str, Any] = (
        {"type": "alphabetical", "fallback": False}
        if t.order == "alphabetical"
        else {"type": "column", "columnId": order_column}
    )
    return {
        "label": t.label,
        "customLabel": True,
        "dataType": _data_type(panel, t.field),
        "operationType": "terms",
        "isBucketed": True,
        "scale": "ordinal",
        "sourceField": t.field,
        "params": {
            "size": t.size,
            "orderBy": order,
            "orderDirection": "asc" if t.order == "alphabetical" else "desc",
            "otherBucket": False,
            "missingBucket": False,
            "parentFormat": {"id": "terms"},
        },
    }


def _date_column(d: DateHistogram) -> dict[str, Any]:
    return {
        "label": d.label,
        "customLabel": True,
        "dataType": "date",
        "operationType": "date_histogram",
        "isBucketed": True,
        "scale": "interval",
        "sourceField": d.field,
        "params": {"interval": d.interval, "includeEmptyRows": True, "dropPartials": False},
    }


def _layer(panel: Panel, ids: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    columns: dict[str, Any] = {}
    order: list[str] = []
    for role, spec in (("split", panel.split), ("breakdown", panel.breakdown)):
        if spec is None:
            continue
        columns[ids[role]] = (
            _date_column(spec) if isinstance(spec, DateHistogram) else _terms_column(panel, spec, ids["m0"])
        )
        order.append(ids[role])
    metric_ids = []
    for i, m in enumerate(panel.metrics):
        columns[ids[f"m{i}"]] = _metric_column(panel, m)
        metric_ids.append(ids[f"m{i}"])
    return {"columns": columns, "columnOrder": order + metric_ids, "incompleteColumns": {}}, metric_ids


def _visualization(panel: Panel, layer_id: str, ids: dict[str, str], metric_ids: list[str]) -> dict[str, Any]:
    if panel.visual == "metric":
        return {"layerId": layer_id, "layerType": "data", "metricAccessor": metric_ids[0]}
    if panel.visual == "pie":
        return {
            "shape": "donut",
            "layers": [
                {
                    "layerId": layer_id,
                    "layerType": "data",
                    "primaryGroups": [ids["split"]],
                    "metrics": metric_ids,
                    "numberDisplay": "percent",
                    "categoryDisplay": "default",
                    "legendDisplay": "default",
                    "nestedLegend": False,
                }
            ],
        }
    if panel.visual == "table":
        buckets = [
            ids[r] for r, s in (("split", panel.split), ("breakdown", panel.breakdown)) if s is not None
        ]
        return {
            "layerId": layer_id,
            "layerType": "data",
            "columns": [{"columnId": c} for c in buckets + metric_ids],
        }
    over_time = isinstance(panel.split, DateHistogram)
    if panel.visual == "line":
        series = "line"
    elif over_time:
        series = "bar_stacked"
    else:
        series = "bar_horizontal"
    layer: dict[str, Any] = {
        "layerId": layer_id,
        "layerType": "data",
        "seriesType": series,
        "xAccessor": ids["split"],
        "accessors": metric_ids,
        "position": "top",
        "showGridlines": False,
    }
    if panel.breakdown is not None:
        layer["splitAccessor"] = ids["breakdown"]
    return {
        "legend": {"isVisible": True, "position": "right"},
        "valueLabels": "hide",
        "fittingFunction": "None",
        "preferredSeriesType": series,
        "layers": [layer],
    }


def lens_object(panel: Panel) -> dict[str, Any]:
    """The Lens visualization of a panel."""
    layer_id = stable_id("lens-layer", panel.key)
    ids = _column_ids(panel)
    layer, metric_ids = _layer(panel, ids)
    dv = data_view_id(panel.data_view)
    references = [_ref("index-pattern", dv, f"indexpattern-datasource-layer-{layer_id}")]
    filters = []
    for i, f in enumerate(panel.filters):
        name = f"filter-index-pattern-{i}"
        references.append(_ref("index-pattern", dv, name))
        filters.append(kibana_filter(f, name))
    attributes = {
        "title": panel.title,
        "description": panel.description,
        "visualizationType": _LENS_TYPES[panel.visual],
        "state": {
            "datasourceStates": {"formBased": {"layers": {layer_id: layer}}},
            "visualization": _visualization(panel, layer_id, ids, metric_ids),
            "query": {"query": "", "language": "kuery"},
            "filters": filters,
        },
    }
    return _envelope("lens", panel.id, attributes, references)


# Dashboards ---------------------------------------------------------------------------------------------
def _layout(panels: Sequence[Panel]) -> list[dict[str, int]]:
    """Grid positions: left to right, wrapping into a new row when the 48 columns are full."""
    out, x, y, row_h = [], 0, 0, 0
    for p in panels:
        if x + p.width > _GRID_COLUMNS:
            x, y, row_h = 0, y + row_h, 0
        out.append({"x": x, "y": y, "w": p.width, "h": p.height})
        x += p.width
        row_h = max(row_h, p.height)
    return out


def dashboard_object(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard object: panels by reference and scoping filters as editable pills."""
    panels_json, references = [], []
    for i, (p, grid) in enumerate(zip(dashboard.panels, _layout(dashboard.panels), strict=True)):
        index = stable_id("panel", f"{dashboard.key}:{i}")
        panels_json.append(
            {
                "version": KIBANA_SHAPE_VERSION,
                "type": "lens",
                "gridData": {**grid, "i": index},
                "panelIndex": index,
                "embeddableConfig": {"enhancements": {}},
                "panelRefName": f"panel_{index}",
            }
        )
        references.append(_ref("lens", p.id, f"{index}:panel_{index}"))
    filters = []
    scope_view = data_view_id(dashboard.panels[0].data_view)
    for i, f in enumerate(dashboard.filters):
        name = f"kibanaSavedObjectMeta.searchSourceJSON.filter[{i}].meta.index"
        references.append(_ref("index-pattern", scope_view, name))
        filters.append(kibana_filter(f, name, ref_key="indexRefName"))
    search_source = {"query": {"query": "", "language": "kuery"}, "filter": filters}
    attributes = {
        "title": dashboard.title,
        "description": dashboard.description,
        "panelsJSON": json.dumps(panels_json, separators=(",", ":")),
        "optionsJSON": json.dumps(
            {
                "useMargins": True,
                "syncColors": False,
                "syncCursor": True,
                "syncTooltips": False,
                "hidePanelTitles": False,
            },
            separators=(",", ":"),
        ),
        "version": 1,
        "timeRestore": True,
        "timeFrom": dashboard.time_from,
        "timeTo": "now",
        "refreshInterval": {"pause": False, "value": 60_000},
        "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(search_source, separators=(",", ":"))},
    }
    return _envelope("dashboard", dashboard.id, attributes, references)


def saved_objects(dashboards: Iterable[Dashboard]) -> list[dict[str, Any]]:
    """Data views, then each distinct panel's Lens object, then the dashboards."""
    dashboards = list(dashboards)
    panels = all_panels(dashboards)
    views = dict.fromkeys(p.data_view for p in panels)
    return (
        [data_view_object(v) for v in views]
        + [lens_object(p) for p in panels]
        + [dashboard_object(d) for d in dashboards]
    )


def to_ndjson(objects: Iterable[dict[str, Any]]) -> str:
    """One JSON object a line, as the saved-objects import API reads them."""
    return "".join(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n" for o in objects)
