"""The pinned ECS subset and the field-name check built on it."""

from __future__ import annotations

from importlib.resources import files

from taishi.pipeline.ecs import SUBSET_FILE, ecs_fields, unknown_fields

ECS_TYPES = {
    "keyword", "constant_keyword", "wildcard", "text", "match_only_text", "long", "integer", "short",
    "byte", "unsigned_long", "float", "double", "scaled_float", "boolean", "date", "ip", "geo_point",
    "object", "nested", "flattened",
}  # fmt: skip


def test_subset_file_is_sorted_unique_and_typed() -> None:
    lines = files("taishi.pipeline").joinpath(SUBSET_FILE).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# ECS 8.x/9.x subset pinned by Taishi; fields under taishi.* are ours"
    names = [line.split("\t")[0] for line in lines[1:]]
    assert names == sorted(set(names))
    assert set(ecs_fields().values()) <= ECS_TYPES
    assert not any(name.startswith("taishi.") for name in names)


def test_known_fields_and_their_types() -> None:
    fields = ecs_fields()
    assert fields["@timestamp"] == "date"
    assert fields["message"] == "match_only_text"
    assert fields["source.ip"] == "ip"
    assert fields["destination.port"] == "long"
    assert fields["network.community_id"] == "keyword"
    assert fields["source.geo.location"] == "geo_point"
    assert fields["event.risk_score"] == "float"
    assert fields["tls.established"] == "boolean"
    assert fields["url.full"] == "wildcard"
    assert fields["labels"] == "object"
    assert fields["dns.answers"] == "object"
    assert fields["threat.enrichments"] == "nested"


def test_ecs_fields_returns_a_copy() -> None:
    ecs_fields()["source.foo"] = "keyword"
    assert "source.foo" not in ecs_fields()


def test_known_fields_pass() -> None:
    known = [
        "@timestamp", "event.kind", "source.ip", "destination.as.organization.name", "network.community_id",
        "organization.id", "dns.question.registered_domain", "tls.client.server_name",
        "threat.technique.subtechnique.id", "threat.enrichments.matched.atomic", "related.ip",
    ]  # fmt: skip
    assert unknown_fields(known) == []


def test_unknown_fields_fail_in_order_once() -> None:
    names = ["source.foo", "source.ip", "foo", "source.foo", "source", "network.community"]
    assert unknown_fields(names) == ["source.foo", "foo", "source", "network.community"]


def test_own_namespace_passes_but_only_below_the_dot() -> None:
    assert unknown_fields(["taishi.anything", "taishi.flow.tcp_flags"]) == []
    assert unknown_fields(["taishiextra.x", "taishi"]) == ["taishiextra.x", "taishi"]


def test_names_below_object_flattened_and_nested_fields_pass() -> None:
    below = [
        "labels.env",
        "labels.site.rack",
        "dns.answers.anything",
        "threat.enrichments.indicator.file.name",
    ]
    assert unknown_fields(below) == []
    # A container admits what is below it, not names that merely share its prefix.
    assert unknown_fields(["labelsx", "labels_env"]) == ["labelsx", "labels_env"]
    # Object-typed only where ECS says so: plain field sets stay closed.
    assert unknown_fields(["source.geo.foo", "event.foo"]) == ["source.geo.foo", "event.foo"]
