"""Panel specs compiled into Elasticsearch searches, and answers flattened into rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taishi.dashboards import panels
from taishi.dashboards.compile import compile_dashboard, compile_panel, rows


def test_a_metric_panel_is_a_filtered_search_without_buckets():
    c = compile_panel(panels.FINDINGS)
    assert c.index == "taishi-alerts-v1-*"
    assert c.body["size"] == 0 and c.body["query"] == {"bool": {"filter": []}}
    assert c.body["aggs"] == {"m0": {"sum": {"field": "taishi.alert.count"}}}


def test_terms_are_ordered_by_the_first_metric():
    c = compile_panel(panels.TOP_ATTACKERS)
    split = c.body["aggs"]["split"]
    assert split["terms"] == {"field": "source.ip", "size": 15, "order": {"m0": "desc"}}
    assert split["aggs"]["m0"] == {"cardinality": {"field": "organization.id"}}
    counted = compile_panel(panels.ALERTS_BY_INSTITUTION).body["aggs"]["split"]["terms"]
    assert counted["order"] == {"_count": "desc"}


def test_breakdown_nests_under_the_split_and_auto_interval_follows_the_time_range():
    split = compile_panel(panels.TECHNIQUES_OVER_TIME).body["aggs"]["split"]
    assert split["date_histogram"] == {"field": "@timestamp", "fixed_interval": "1h", "min_doc_count": 1}
    assert split["aggs"]["breakdown"]["terms"]["field"] == "threat.technique.id"
    day = compile_panel(panels.TECHNIQUES_OVER_TIME, time_range=("now-1d", "now")).body["aggs"]["split"]
    assert day["date_histogram"]["fixed_interval"] == "30m"
    start = datetime(2026, 11, 18, 7, tzinfo=UTC)
    hour = compile_panel(panels.TECHNIQUES_OVER_TIME, time_range=(start, start + timedelta(hours=1)))
    assert hour.body["aggs"]["split"]["date_histogram"]["fixed_interval"] == "5m"
    assert (
        hour.body["query"]["bool"]["filter"][-1]["range"]["@timestamp"]["gte"] == "2026-11-18T07:00:00+00:00"
    )
    fixed = panels.BYTES_OVER_TIME.model_copy(update={"split": panels.DateHistogram(interval="5m")})
    assert compile_panel(fixed).body["aggs"]["split"]["date_histogram"]["fixed_interval"] == "5m"


def test_dashboard_scope_panel_filters_and_time_range_are_all_filters():
    (c,) = [
        c
        for c in compile_dashboard(
            panels.institution_drilldown("bank-a"),
            index_for=lambda v: f"{panels.FAMILIES[v]}-bank-a-*",
            time_range=("now-1d", "now"),
        )
        if c.panel is panels.FAILING_HOSTS
    ]
    assert c.index == "taishi-entities-v1-bank-a-*"
    assert c.body["query"]["bool"]["filter"] == [
        {"term": {"organization.id": "bank-a"}},
        {"range": {"taishi.behaviour.failed_connections_out": {"gte": 1}}},
        {"range": {"@timestamp": {"gte": "now-1d", "lt": "now"}}},
    ]
    high = compile_panel(panels.HIGH_SEVERITY_BY_INSTITUTION).body["query"]["bool"]["filter"]
    assert high == [{"terms": {"taishi.alert.severity": ["high", "critical"]}}]


def test_rows_flatten_buckets_by_column_label():
    resp = {
        "hits": {"total": {"value": 3}},
        "aggregations": {
            "split": {
                "buckets": [
                    {
                        "key": "bank-a|10.0.1.10",
                        "doc_count": 2,
                        "m0": {"value": 1.7e12, "value_as_string": "2026-11-18T07:10:00.000Z"},
                        "breakdown": {
                            "buckets": [
                                {
                                    "key": "scan",
                                    "doc_count": 2,
                                    "m0": {"value": 1.7e12, "value_as_string": "2026-11-18T07:10:00.000Z"},
                                    "m1": {"value": 3.0},
                                    "m2": {"value": 5.0},
                                }
                            ]
                        },
                    }
                ]
            }
        },
    }
    (row,) = rows(panels.LATEST_INCIDENTS, resp)
    assert row == {
        "Entity": "bank-a|10.0.1.10",
        "Rule": "scan",
        "Last seen": "2026-11-18T07:10:00.000Z",
        "Severity (1-4)": 3.0,
        "Findings": 5.0,
    }
    assert rows(panels.INCIDENTS, {"hits": {"total": {"value": 7}}}) == [{"Incidents": 7}]
