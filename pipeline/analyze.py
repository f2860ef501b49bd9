"""Offline analysis: captures and logs through the same enrichment, windows and detectors, in-process.

Inputs: pcap/pcapng (the packet collector's flow meter with DNS/TLS/HTTP metadata), Zeek conn logs (TSV or
JSON), Argus binetflow and nfdump CSV, JSON flow logs, and raw NetFlow v5/v9/IPFIX payload files. Every
input becomes contract columns, is tagged with the institution and sensor, cut into the wire format's
batches onto the in-process bus and processed by exactly the code the Kafka pipeline runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taishi.pipeline import wire
from taishi.pipeline.config import Settings
from taishi.pipeline.embedded import EmbeddedResult, MemoryBus, run_embedded
from taishi.pipeline.sinks import MemorySink

FORMATS = ("pcap", "netflow", "zeek-tsv", "zeek-json", "argus", "nfdump", "json")


@dataclass(slots=True)
class Loaded:
    """Columns read from the inputs, and what could not be read."""

    columns: dict[str, np.ndarray]
    per_input: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def detect(path: Path) -> str:
    """Input format from the file's first bytes."""
    head = path.read_bytes()[:4096] if path.stat().st_size < 4096 else path.open("rb").read(4096)
    if head[:4] in (
        b"\xd4\xc3\xb2\xa1",
        b"\xa1\xb2\xc3\xd4",
        b"\x4d\x3c\xb2\xa1",
        b"\xa1\xb2\x3c\x4d",
        b"\x0a\x0d\x0d\x0a",
    ):
        return "pcap"
    if len(head) >= 2 and head[:2] in (b"\x00\x05", b"\x00\x09", b"\x00\x0a"):
        return "netflow"
    from taishi.collectors.flowlogs import detect_format_bytes

    return detect_format_bytes(head, str(path))


def _read(path: Path, fmt: str) -> tuple[dict[str, np.ndarray], list[str]]:
    if fmt == "pcap":
        from taishi.collectors.pcap_flows import FlowParams, read_flows

        return read_flows(path, FlowParams(app_metadata=True)), []
    if fmt == "netflow":
        from taishi.collectors.netflow import NetflowDecoder

        res = NetflowDecoder().feed(path.read_bytes(), exporter=str(path), received_at=path.stat().st_mtime)
        return res.columns, [f"{path}: {e}" for e in res.errors]
    from taishi.collectors.flowlogs import parse_file

    batch = parse_file(path, fmt)
    problems = [f"{path}:{r.line}: {r.reason}" for r in batch.rejects[:20]]
    if len(batch.rejects) > 20:
        problems.append(f"{path}: {len(batch.rejects) - 20} more rejected lines")
    return batch.columns, problems


def load(paths: Sequence[Path], fmt: str | None, org: str, sensor: str) -> Loaded:
    """Read every input (format detected unless given) into one time-ordered columnar batch."""
    from taishi.pipeline.attacks import merge

    parts: list[dict[str, np.ndarray]] = []
    out = Loaded(columns={})
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        kind = fmt or detect(path)
        if kind not in FORMATS:
            raise ValueError(f"{path}: unknown format {kind!r}; expected one of {', '.join(FORMATS)}")
        cols, problems = _read(path, kind)
        out.problems.extend(problems)
        n = len(cols.get("@timestamp", ()))
        out.per_input[str(path)] = n
        if not n:
            continue
        cols = dict(cols)
        cols["organization.id"] = np.full(n, org, dtype=object)
        cols.setdefault("observer.name", np.full(n, sensor, dtype=object))
        if not np.asarray(cols["observer.name"]).any():
            cols["observer.name"] = np.full(n, sensor, dtype=object)
        cols.setdefault("event.dataset", np.full(n, kind, dtype=object))
        parts.append(cols)
    out.columns = merge(*parts) if parts else {}
    return out


@dataclass(slots=True)
class Analysis:
    """What an offline run produced."""

    result: EmbeddedResult
    alerts: list[dict[str, Any]]
    entities: list[dict[str, Any]]
    loaded: Loaded


def analyze(
    settings: Settings, loaded: Loaded, progress: Callable[[int, int], None] | None = None
) -> Analysis:
    """Run loaded records through the pipeline in-process; return alerts and entity windows."""
    bus = MemoryBus(settings.kafka.partitions)
    if loaded.columns:
        for key, value, hdrs in wire.sensor_batches(loaded.columns, settings.kafka.batch_records):
            bus.send(settings.kafka.flows_topic, key, value, hdrs)
    sink = MemorySink()
    result = run_embedded(settings, bus, sink, progress=progress)
    alerts = [d for (index, _), d in sorted(sink.docs.items()) if index.startswith("taishi-alerts-")]
    entities = [d for (index, _), d in sorted(sink.docs.items()) if index.startswith("taishi-entities-")]
    alerts.sort(key=lambda a: (a["@timestamp"], a["rule"]["id"], a["taishi"]["entity"]["ip"]))
    return Analysis(result, alerts, entities, loaded)
