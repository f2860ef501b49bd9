"""The generated Kibana saved objects: parse, resolve, and only use fields the index templates map."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taishi.dashboards import kibana, panels
from taishi.pipeline import documents

NUMERIC = {"long", "integer", "short", "float", "double"}
# What each operation may run on, in Elasticsearch mapping types.
FIT = {
    "sum": NUMERIC,
    "max": NUMERIC | {"date"},
    "cardinality": NUMERIC | {"keyword", "ip", "date"},
    "terms": {"keyword", "ip"},
    "date_histogram": {"date"},
    "filter": NUMERIC | {"keyword", "ip", "date", "boolean"},
}
LENS_OPS = {"count": None, "sum": "sum", "max": "max", "unique_count": "cardinality"}
BUCKET_OPS = {"terms": "terms", "date_histogram": "date_histogram"}

DASHBOARDS = panels.all_dashboards(["bank-a", "insurer-d"], ["bank-a|10.0.1.10"])


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    text = kibana.to_ndjson(kibana.saved_objects(DASHBOARDS))
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _template_types(family: str) -> dict[str, str]:
    """Walk an index template's mappings into dotted path -> type."""
    out: dict[str, str] = {}

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                out[prefix + name] = spec["type"]

    walk(documents.templates()[family]["template"]["mappings"]["properties"], "")
    return out


def _by_id(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["type"], o["id"]): o for o in objects}


def _views(objects):
    """data view id -> its index template's field types (via the data view's title pattern)."""
    families = {f"{t}-*": t for t in documents.templates()}
    return {
        o["id"]: _template_types(families[o["attributes"]["title"]])
        for o in objects
        if o["type"] == "index-pattern"
    }


def test_every_line_is_a_saved_object_with_type_id_and_attributes(objects):
    assert objects
    for o in objects:
        assert isinstance(o["type"], str) and o["type"] in ("index-pattern", "lens", "dashboard")
        assert isinstance(o["id"], str) and o["id"]
        assert isinstance(o["attributes"], dict) and o["attributes"].get("title")
        assert o["migrationVersion"] == {o["type"]: kibana._TYPE_VERSIONS[o["type"]]}
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys)), "no object appears twice"


def test_data_views_cover_the_three_index_families_on_timestamp(objects):
    views = {o["attributes"]["title"]: o["attributes"] for o in objects if o["type"] == "index-pattern"}
    assert set(views) == {"taishi-alerts-v1-*", "taishi-entities-v1-*", "taishi-flows-v1-*"}
    assert all(v["timeFieldName"] == "@timestamp" for v in views.values())


def test_every_reference_resolves_to_an_object_in_the_file(objects):
    present = _by_id(objects)
    for o in objects:
        assert o["references"] or o["type"] == "index-pattern"
        for ref in o["references"]:
            assert (ref["type"], ref["id"]) in present, f"{o['type']}/{o['id']} -> missing {ref}"
        names = [r["name"] for r in o["references"]]
        assert len(names) == len(set(names)), f"{o['id']}: reference names are unique"


def test_ids_are_stable_across_generations(objects):
    again = kibana.saved_objects(panels.all_dashboards(["bank-a", "insurer-d"], ["bank-a|10.0.1.10"]))
    assert [o["id"] for o in again] == [o["id"] for o in objects]
    assert kibana.to_ndjson(again) == kibana.to_ndjson(objects)


def test_lens_layers_and_filters_point_to_data_views_in_the_file(objects):
    views = _views(objects)
    for o in (o for o in objects if o["type"] == "lens"):
        refs = {r["name"]: r for r in o["references"]}
        layers = o["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
        assert layers
        for layer_id, layer in layers.items():
            ref = refs[f"indexpattern-datasource-layer-{layer_id}"]
            assert ref["type"] == "index-pattern" and ref["id"] in views
            assert set(layer["columnOrder"]) == set(layer["columns"])
        for f in o["attributes"]["state"]["filters"]:
            assert refs[f["meta"]["index"]]["id"] in views


def test_lens_visualization_accessors_are_layer_columns(objects):
    for o in (o for o in objects if o["type"] == "lens"):
        state = o["attributes"]["state"]
        ((layer_id, layer),) = state["datasourceStates"]["formBased"]["layers"].items()
        vis = state["visualization"]
        kind = o["attributes"]["visualizationType"]
        if kind == "lnsXY":
            (xy,) = vis["layers"]
            used = [
                xy["xAccessor"],
                *xy["accessors"],
                *([xy["splitAccessor"]] if "splitAccessor" in xy else []),
            ]
            assert xy["layerId"] == layer_id
        elif kind == "lnsPie":
            (pie,) = vis["layers"]
            used = [*pie["primaryGroups"], *pie["metrics"]]
        elif kind == "lnsDatatable":
            used = [c["columnId"] for c in vis["columns"]]
        else:
            assert kind == "lnsMetric"
            used = [vis["metricAccessor"]]
        assert used and set(used) <= set(layer["columns"]), o["attributes"]["title"]


def test_every_field_a_panel_uses_is_mapped_with_a_type_fit_for_the_operation(objects):
    views = _views(objects)
    checked = 0
    for o in (o for o in objects if o["type"] == "lens"):
        refs = {r["name"]: r["id"] for r in o["references"]}
        state = o["attributes"]["state"]
        for layer_id, layer in state["datasourceStates"]["formBased"]["layers"].items():
            types = views[refs[f"indexpattern-datasource-layer-{layer_id}"]]
            for col in layer["columns"].values():
                kind = col["operationType"]
                op = LENS_OPS[kind] if kind in LENS_OPS else BUCKET_OPS[kind]
                if op is None:  # count of records
                    assert col["sourceField"] == "___records___"
                    continue
                field = col["sourceField"]
                assert field in types, f"{o['attributes']['title']}: {field} is not mapped"
                assert types[field] in FIT[op], f"{o['attributes']['title']}: {op} on {types[field]} {field}"
                checked += 1
        for f in state["filters"]:
            types = views[refs[f["meta"]["index"]]]
            assert types[f["meta"]["key"]] in FIT["filter"]
    assert checked > 20


def test_dashboards_reference_their_panels_and_scope_filters(objects):
    present = _by_id(objects)
    views = _views(objects)
    for o in (o for o in objects if o["type"] == "dashboard"):
        a = o["attributes"]
        refs = {r["name"]: r for r in o["references"]}
        grid = json.loads(a["panelsJSON"])
        assert grid
        for p in grid:
            ref = refs[f"{p['panelIndex']}:{p['panelRefName']}"]
            assert (ref["type"], ref["id"]) in present and p["type"] == ref["type"] == "lens"
            g = p["gridData"]
            assert g["i"] == p["panelIndex"] and g["x"] >= 0 and g["x"] + g["w"] <= 48
        source = json.loads(a["kibanaSavedObjectMeta"]["searchSourceJSON"])
        panel_views = {
            present[("lens", refs[f"{p['panelIndex']}:{p['panelRefName']}"]["id"])]["references"][0]["id"]
            for p in grid
        }
        for f in source["filter"]:
            assert refs[f["meta"]["indexRefName"]]["id"] in views
            for v in panel_views:  # a scoping filter must mean something on every panel's data view
                assert f["meta"]["key"] in views[v], f"{a['title']}: {f['meta']['key']} not in {v}"


def test_drill_down_is_scoped_to_the_institution(objects):
    (d,) = [o for o in objects if o["type"] == "dashboard" and o["attributes"]["title"].endswith("bank-a")]
    (f,) = json.loads(d["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["filter"]
    assert f["query"] == {"match_phrase": {"organization.id": "bank-a"}}


def test_no_panel_points_to_a_missing_data_view():
    for p in panels.all_panels(DASHBOARDS):
        assert p.data_view in panels.FAMILIES
        for field, _use in p.fields():
            panels.field_type(p.data_view, field)  # raises when the template does not map it


def test_a_panel_key_names_one_spec():
    with pytest.raises(ValueError, match="share the key"):
        other = panels.INCIDENTS.model_copy(update={"title": "Something else"})
        panels.all_panels([panels.sector_overview(), panels.Dashboard(key="x", title="x", panels=(other,))])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"visual": "pie", "metrics": (panels.Metric(op="count", label="n"),)}, "needs a split"),
        ({"visual": "metric", "split": panels.DateHistogram()}, "one metric and no split"),
        ({"split": {"kind": "date_histogram", "interval": "5 minutes"}}, "interval"),
        ({"metrics": ({"op": "sum", "label": "s"},)}, "needs a field"),
        ({"breakdown": panels.Terms(field="rule.id", label="r")}, "needs a split"),
    ],
)
def test_bad_panel_specs_say_what_is_wrong(kwargs, message):
    base = {
        "key": "k",
        "title": "t",
        "data_view": "alerts",
        "visual": "bar",
        "metrics": (panels.Metric(op="count", label="n"),),
    }
    with pytest.raises(ValueError, match=message):
        panels.Panel(**{**base, **kwargs})


def test_an_unmapped_field_is_refused_naming_it():
    bad = panels.Panel(
        key="bad",
        title="bad",
        data_view="alerts",
        visual="bar",
        metrics=(panels.Metric(op="count", label="n"),),
        split=panels.Terms(field="no.such.field", label="x"),
    )
    with pytest.raises(ValueError, match=r"no\.such\.field"):
        kibana.lens_object(bad)
