"""Low-volume documents (pydantic) and the Elasticsearch index templates that map them.

Entity-behaviour windows are built columnar in ``windows.py``; the model here is their schema, used to
validate what the pipeline writes and to derive the explicit mapping.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taishi.pipeline import contract


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Event(_Strict):
    kind: Literal["metric", "alert", "event"]
    category: list[str]
    type: list[str]
    dataset: str
    start: datetime
    end: datetime


class _Behaviour(_Strict):
    bytes_out: int = Field(ge=0)
    bytes_in: int = Field(ge=0)
    packets_out: int = Field(ge=0)
    packets_in: int = Field(ge=0)
    connections_out: int = Field(ge=0, description="flows the entity started")
    connections_in: int = Field(ge=0, description="flows the entity answered")
    failed_connections_out: int = Field(ge=0, description="TCP flows started that got no bytes back")
    failed_connections_in: int = Field(ge=0)
    distinct_peers: int = Field(ge=0)
    distinct_dst_ports: int = Field(ge=0, description="destination ports contacted as client")
    top_ports: list[int]
    countries: list[str]


class _Entity(_Strict):
    ip: str
    id: str


class _Window(_Strict):
    size_s: int


class _Baseline(_Strict):
    windows: int = Field(ge=0, description="windows of this entity before this one")
    first_seen: datetime | None = None
    bytes_out_mean: float | None = None
    bytes_out_std: float | None = None
    bytes_in_mean: float | None = None
    bytes_in_std: float | None = None
    connections_out_mean: float | None = None
    connections_out_std: float | None = None
    distinct_peers_mean: float | None = None
    distinct_peers_std: float | None = None


class _TaishiEntity(_Strict):
    entity: _Entity
    window: _Window
    behaviour: _Behaviour
    baseline: _Baseline


class _Org(_Strict):
    id: str


class _Observer(_Strict):
    name: str


class _IPs(_Strict):
    ip: list[str]


class EntityWindow(_Strict):
    """Behaviour of one internal host, seen by one sensor, over one event-time window."""

    timestamp: datetime = Field(alias="@timestamp")
    event: _Event
    organization: _Org
    observer: _Observer
    host: _IPs
    related: _IPs
    taishi: _TaishiEntity


_KW = {"type": "keyword"}
_LONG = {"type": "long"}
_DATE = {"type": "date"}
_IP = {"type": "ip"}


def _props(**fields: Any) -> dict[str, Any]:
    return {"properties": fields}


def entities_template() -> dict[str, Any]:
    """Composable index template for ``taishi-entities-v1-*`` (explicit, strict mapping)."""
    behaviour = {k: _LONG for k in _Behaviour.model_fields if k not in ("top_ports", "countries")}
    behaviour["top_ports"] = {"type": "integer"}
    behaviour["countries"] = _KW
    baseline: dict[str, Any] = {k: {"type": "float"} for k in _Baseline.model_fields}
    baseline.update(windows=_LONG, first_seen=_DATE)
    return {
        "index_patterns": [f"{contract.ENTITIES_INDEX}-*"],
        "priority": 200,
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "@timestamp": _DATE,
                    "event": _props(kind=_KW, category=_KW, type=_KW, dataset=_KW, start=_DATE, end=_DATE),
                    "organization": _props(id=_KW),
                    "observer": _props(name=_KW),
                    "host": _props(ip=_IP),
                    "related": _props(ip=_IP),
                    "taishi": _props(
                        entity=_props(ip=_IP, id=_KW),
                        window=_props(size_s=_LONG),
                        behaviour=_props(**behaviour),
                        baseline=_props(**baseline),
                    ),
                },
            },
        },
        "_meta": {"taishi_schema": contract.SCHEMA_VERSION},
    }


def flows_template() -> dict[str, Any]:
    """Index template for opt-in raw flows ``taishi-flows-v1-*``."""
    geo = _props(country_iso_code=_KW)
    asn = _props(number=_LONG, organization=_props(name=_KW))
    endpoint = _props(ip=_IP, port={"type": "integer"}, bytes=_LONG, packets=_LONG, geo=geo, **{"as": asn})
    asset = _props(owner=_KW, criticality=_KW)
    return {
        "index_patterns": [f"{contract.FLOWS_INDEX}-*"],
        "priority": 200,
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "dynamic": "false",
                "properties": {
                    "@timestamp": _DATE,
                    "event": _props(end=_DATE, dataset=_KW, kind=_KW, category=_KW),
                    "organization": _props(id=_KW),
                    "observer": _props(name=_KW, hostname=_KW, ip=_IP),
                    "source": endpoint,
                    "destination": endpoint,
                    "dns": _props(question=_props(name=_KW, type=_KW), response_code=_KW),
                    "tls": _props(client=_props(server_name=_KW)),
                    "http": _props(request=_props(method=_KW)),
                    "url": _props(domain=_KW, original=_KW),
                    "network": _props(
                        transport=_KW,
                        iana_number=_KW,
                        bytes=_LONG,
                        packets=_LONG,
                        community_id=_KW,
                        direction=_KW,
                    ),
                    "taishi": _props(
                        flow=_props(tcp_flags={"type": "integer"}),
                        source=_props(internal={"type": "boolean"}, asset=asset),
                        destination=_props(internal={"type": "boolean"}, asset=asset),
                        threat=_props(indicator=_KW, source=_KW),
                    ),
                },
            },
        },
        "_meta": {"taishi_schema": contract.SCHEMA_VERSION},
    }


def alerts_template() -> dict[str, Any]:
    """Index template for alerts (incidents) ``taishi-alerts-v1-*``; evidence is a flattened object."""
    ts = {"start": _DATE, "end": _DATE}
    return {
        "index_patterns": [f"{contract.ALERTS_INDEX}-*"],
        "priority": 200,
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "@timestamp": _DATE,
                    "event": _props(
                        kind=_KW,
                        category=_KW,
                        type=_KW,
                        dataset=_KW,
                        severity=_LONG,
                        risk_score={"type": "float"},
                        **ts,
                    ),
                    "rule": _props(id=_KW, name=_KW, ruleset=_KW),
                    "threat": _props(
                        framework=_KW, technique=_props(id=_KW, name=_KW), tactic=_props(id=_KW, name=_KW)
                    ),
                    "organization": _props(id=_KW),
                    "observer": _props(name=_KW),
                    "source": _props(ip=_IP),
                    "destination": _props(ip=_IP),
                    "related": _props(ip=_IP),
                    "taishi": _props(
                        entity=_props(ip=_IP, id=_KW),
                        alert=_props(count=_LONG, severity=_KW, technique_name=_KW, window=_props(**ts)),
                        evidence={"type": "flattened"},
                    ),
                },
            },
        },
        "_meta": {"taishi_schema": contract.SCHEMA_VERSION},
    }


def templates() -> dict[str, dict[str, Any]]:
    """Every index template the pipeline installs, by name."""
    return {
        contract.ENTITIES_INDEX: entities_template(),
        contract.FLOWS_INDEX: flows_template(),
        contract.ALERTS_INDEX: alerts_template(),
    }
