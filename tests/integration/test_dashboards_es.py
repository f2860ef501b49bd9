"""Every dashboard panel, compiled to its Elasticsearch query, finds data in what the pipeline wrote.

A demo sector under attack goes through Kafka and the pipeline into real Elasticsearch (the test's own
institutions, so its own indices); each panel of each dashboard then runs against those indices.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taishi.dashboards.compile import compile_dashboard, run
from taishi.dashboards.panels import FAMILIES, all_dashboards
from taishi.pipeline.config import Institution
from taishi.pipeline.demo import demo_sector
from taishi.pipeline.kafka_io import produce_columns
from taishi.pipeline.runner import KafkaPipeline, ensure_topics
from taishi.pipeline.simulator import SectorSpec
from taishi.pipeline.sinks import ElasticsearchSink

from .conftest import tag_orgs


def test_every_panel_of_every_dashboard_returns_data_from_the_pipelines_indices(settings, es, tag):
    spec = SectorSpec(institutions=4, flows=6_000, duration_s=1_200, seed=11)
    cols, labels = demo_sector(spec)
    cols = tag_orgs(cols, tag)
    org = f"{tag}-bank-a"
    settings.institutions = [Institution(id=org, index_flows=True)]  # raw flows for the flows panel
    settings.detection.enabled = ["scan"]  # the injected scans are the incidents every alert panel needs
    ensure_topics(settings)
    produce_columns(settings, cols)
    status = KafkaPipeline(settings, ElasticsearchSink(settings.elasticsearch)).run(idle_exit_s=5)
    assert status.counters["dead_letters"] == 0
    es.indices.refresh(index=f"taishi-*-v1-{tag}-*")

    # The internal host scanning a subnet: it has behaviour windows and incidents of its own.
    (scanner,) = [lb for lb in labels if lb.kind == "horizontal"]
    entity = f"{tag}-{scanner.org}|{scanner.entity}"
    dashboards = all_dashboards(institutions=[org], entities=[entity])

    def index_for(view: str) -> str:
        return f"{FAMILIES[view]}-{tag}-*"

    # The sector's hours, as a time picker would have them (windows start up to one window earlier).
    start = datetime.fromtimestamp(spec.start_ms / 1000, UTC) - timedelta(seconds=settings.window.size_s)
    time_range = (start, start + timedelta(seconds=spec.duration_s + 3600))

    empty, ran = [], 0
    for d in dashboards:
        for compiled in compile_dashboard(d, index_for=index_for, time_range=time_range):
            result = run(es, compiled)
            ran += 1
            if not result.has_data():
                empty.append(f"{d.title} / {compiled.panel.title}: {result.rows[:3]}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert ran == sum(len(d.panels) for d in dashboards)

    over_time = next(
        c
        for c in compile_dashboard(dashboards[0], index_for=index_for, time_range=time_range)
        if c.panel.key == "techniques-over-time"
    )
    assert over_time.body["aggs"]["split"]["date_histogram"]["fixed_interval"] == "5m"

    # The overview's campaign panel sees the source that scanned several institutions.
    top = next(
        c
        for c in compile_dashboard(dashboards[0], index_for=index_for)
        if c.panel.key == "top-attacker-sources"
    )
    first = run(es, top).rows[0]
    assert first["Institutions reached"] >= 2
