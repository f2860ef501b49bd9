"""The record contract: one definition of every field Taishi moves, in ECS names.

Flow records travel as columnar batches (column -> dtype below); alerts and per-entity behaviour
documents are low-volume and are pydantic models (see ``documents.py``). Our own fields live under
``taishi.*``. This module imports neither pandas nor Elasticsearch so collector hosts can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

SCHEMA_VERSION: Final = 1

# Kafka topics (versioned).
FLOWS_TOPIC: Final = f"taishi.flows.v{SCHEMA_VERSION}"
DLQ_TOPIC: Final = f"taishi.dlq.v{SCHEMA_VERSION}"
STATE_TOPIC: Final = f"taishi.state.v{SCHEMA_VERSION}"

# Elasticsearch index families; concrete names carry the institution and the day so that tenants can be
# isolated by index privileges on name patterns (document-level security is not in the free licence).
ENTITIES_INDEX: Final = f"taishi-entities-v{SCHEMA_VERSION}"
FLOWS_INDEX: Final = f"taishi-flows-v{SCHEMA_VERSION}"
ALERTS_INDEX: Final = f"taishi-alerts-v{SCHEMA_VERSION}"

ORG_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


def index_name(family: str, org_id: str, day: str) -> str:
    """Concrete index name, e.g. ``taishi-entities-v1-bank-a-2026.11.25``."""
    if not ORG_ID_RE.match(org_id):
        raise ValueError(
            f"organization.id {org_id!r} is not a valid institution id (expected {ORG_ID_RE.pattern})"
        )
    return f"{family}-{org_id}-{day}"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a columnar batch."""

    name: str
    dtype: str  # numpy/pandas dtype name; "str" is a string column, "datetime64[ms, UTC]" a timestamp
    required: bool = False
    doc: str = ""


# Flow record as it arrives from a collector or shipper. Required columns must be present and non-null;
# optional ones get their default. Derived columns are computed by validation when absent.
FLOW_COLUMNS: Final[tuple[Column, ...]] = (
    Column("@timestamp", "datetime64[ms, UTC]", True, "flow start (event time)"),
    Column("event.end", "datetime64[ms, UTC]", False, "flow end; defaults to @timestamp"),
    Column("event.dataset", "str", False, "netflow, zeek.conn, packets.flow, ..."),
    Column("organization.id", "str", True, "the institution; part of every join key"),
    Column("observer.name", "str", False, "sensor id that produced the record"),
    Column("observer.hostname", "str", False, "host the sensor runs on"),
    Column("observer.ip", "str", False, "exporter or sensor address (NetFlow exporter)"),
    Column("source.ip", "str", True, "IPv4 or IPv6 text form"),
    Column("source.port", "int32", False, "0 when the transport has no ports"),
    Column("destination.ip", "str", True, "IPv4 or IPv6 text form"),
    Column("destination.port", "int32", False, "0 when the transport has no ports"),
    Column("network.iana_number", "int16", False, "IP protocol number (6 tcp, 17 udp, 1 icmp, 58 ipv6-icmp)"),
    Column("network.transport", "str", False, "tcp/udp/icmp/ipv6-icmp; derived from the IANA number"),
    Column("source.bytes", "int64", False, "IP bytes sent by the source"),
    Column("source.packets", "int64", False, "packets sent by the source"),
    Column("destination.bytes", "int64", False, "IP bytes sent by the destination"),
    Column("destination.packets", "int64", False, "packets sent by the destination"),
    Column("network.community_id", "str", False, "Community ID v1; computed when absent"),
    Column("taishi.flow.tcp_flags", "int16", False, "OR of TCP flags seen in both directions"),
    # Application metadata of the flow, when the sensor saw it (packet collector, Zeek logs).
    Column("dns.question.name", "str", False, "first DNS query name of the flow, lower case"),
    Column("dns.question.type", "str", False, "A, AAAA, TXT, NULL, ..."),
    Column("dns.response_code", "str", False, "NOERROR, NXDOMAIN, ..."),
    Column("tls.client.server_name", "str", False, "TLS ClientHello SNI"),
    Column("http.request.method", "str", False, "first HTTP request method"),
    Column("url.domain", "str", False, "HTTP Host"),
    Column("url.original", "str", False, "HTTP request URI"),
)

METADATA_FIELDS: Final[tuple[str, ...]] = (
    "dns.question.name",
    "dns.question.type",
    "dns.response_code",
    "tls.client.server_name",
    "http.request.method",
    "url.domain",
    "url.original",
)

FLOW_DTYPES: Final[dict[str, str]] = {c.name: c.dtype for c in FLOW_COLUMNS}
REQUIRED_FLOW_FIELDS: Final[tuple[str, ...]] = tuple(c.name for c in FLOW_COLUMNS if c.required)

# Columns added by enrichment (pipeline/enrich.py).
ENRICHED_COLUMNS: Final[tuple[Column, ...]] = (
    Column("network.bytes", "int64"),
    Column("network.packets", "int64"),
    Column("network.direction", "str", doc="inbound/outbound/internal/external"),
    Column("taishi.source.internal", "bool"),
    Column("taishi.destination.internal", "bool"),
    Column("source.geo.country_iso_code", "str"),
    Column("source.as.number", "int64"),
    Column("source.as.organization.name", "str"),
    Column("destination.geo.country_iso_code", "str"),
    Column("destination.as.number", "int64"),
    Column("destination.as.organization.name", "str"),
    Column("taishi.source.asset.owner", "str"),
    Column("taishi.source.asset.criticality", "str"),
    Column("taishi.destination.asset.owner", "str"),
    Column("taishi.destination.asset.criticality", "str"),
    Column("taishi.threat.indicator", "str", doc="matched indicator value, empty when none"),
    Column("taishi.threat.source", "str", doc="feed the matched indicator came from"),
)

IANA_TRANSPORT: Final[dict[int, str]] = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    58: "ipv6-icmp",
    132: "sctp",
    47: "gre",
}
TRANSPORT_IANA: Final[dict[str, int]] = {v: k for k, v in IANA_TRANSPORT.items()}

# Kafka message headers of the batched wire format (pipeline/wire.py).
HEADER_SCHEMA: Final = "taishi-schema"
HEADER_COUNT: Final = "taishi-count"
HEADER_SENSOR: Final = "taishi-sensor"
HEADER_ENCODING: Final = "taishi-encoding"
