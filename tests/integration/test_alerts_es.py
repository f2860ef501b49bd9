"""Alerts through the real stack: a scan injected into Kafka becomes one incident in Elasticsearch."""

from __future__ import annotations

from taishi.pipeline import attacks
from taishi.pipeline.kafka_io import produce_columns
from taishi.pipeline.runner import KafkaPipeline, ensure_topics
from taishi.pipeline.simulator import SectorSpec, simulate
from taishi.pipeline.sinks import ElasticsearchSink

from .conftest import es_docs, tag_orgs


def test_scan_becomes_an_incident_in_elasticsearch(settings, es, tag):
    spec = SectorSpec(institutions=1, flows=5_000, duration_s=900, seed=8)
    scan, label = attacks.vertical_scan("bank-a", "203.0.113.66", "10.0.1.10", spec.start_ms + 120_000, ports=800)
    cols = tag_orgs(attacks.merge(simulate(spec), scan), tag)
    ensure_topics(settings)
    produce_columns(settings, cols)
    status = KafkaPipeline(settings, ElasticsearchSink(settings.elasticsearch)).run(idle_exit_s=5)
    assert status.counters["dead_letters"] == 0, "every alert matched the strict alerts mapping"

    alerts = es_docs(es, f"taishi-alerts-v1-{tag}-*")
    assert len(alerts) == 1
    (a,) = alerts.values()
    assert a["rule"]["id"] == "scan" and a["taishi"]["entity"]["ip"] == label.entity
    assert a["threat"]["technique"]["id"][0] == "T1595"
    assert a["taishi"]["evidence"]["distinct_ports"] >= 50
    hits = es.search(index=f"taishi-alerts-v1-{tag}-*", query={"term": {"taishi.evidence.kind": "vertical"}})
    assert hits["hits"]["total"]["value"] == 1, "evidence is searchable"
