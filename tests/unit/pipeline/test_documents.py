"""What the pipeline emits: ECS names (or taishi.*), the documented models, and the index templates."""

from __future__ import annotations

from taishi.pipeline import wire
from taishi.pipeline.config import Institution, Settings
from taishi.pipeline.documents import EntityWindow, entities_template, flows_template
from taishi.pipeline.ecs import unknown_fields
from taishi.pipeline.embedded import MemoryBus, run_embedded
from taishi.pipeline.sinks import MemorySink


def _leaves(doc, prefix=""):
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _mapped(props, prefix=""):
    for k, v in props.items():
        if "properties" in v:
            yield from _mapped(v["properties"], f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _run(sector_small):
    cols = {k: v[:5000] for k, v in sector_small.items()}
    org = cols["organization.id"][0]
    settings = Settings(institutions=[Institution(id=org, index_flows=True)])
    bus = MemoryBus(2)
    for key, value, hdrs in wire.sensor_batches(cols, 1000):
        bus.send(settings.kafka.flows_topic, key, value, hdrs)
    sink = MemorySink()
    run_embedded(settings, bus, sink)
    return sink


def test_every_emitted_field_is_ecs_or_taishi_and_mapped(sector_small):
    sink = _run(sector_small)
    entities = [d for (i, _), d in sink.docs.items() if i.startswith("taishi-entities-v1-")]
    flows = [d for (i, _), d in sink.docs.items() if i.startswith("taishi-flows-v1-")]
    assert entities and flows
    ent_fields = {f for d in entities for f in _leaves(d)}
    flow_fields = {f for d in flows for f in _leaves(d)}
    assert unknown_fields(ent_fields | flow_fields) == []
    assert ent_fields <= set(_mapped(entities_template()["template"]["mappings"]["properties"]))
    assert flow_fields <= set(_mapped(flows_template()["template"]["mappings"]["properties"]))


def test_entity_documents_match_the_model(sector_small):
    sink = _run(sector_small)
    for (index, _), d in sink.docs.items():
        if index.startswith("taishi-entities-v1-"):
            EntityWindow.model_validate(d)
