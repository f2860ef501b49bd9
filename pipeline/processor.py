"""The per-partition processing step shared by the Kafka pipeline and the embedded (offline) mode.

decode -> validate -> enrich -> window -> documents, on one partition's messages in offset order.
Bad messages and bad records become dead letters carrying the original bytes, the reason and where they
came from; the good records of the same message go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from taishi.pipeline import contract, wire
from taishi.pipeline.alerts import DetectorSet, build_detectors
from taishi.pipeline.baselines import Baselines
from taishi.pipeline.config import Settings
from taishi.pipeline.enrich import Enricher
from taishi.pipeline.validate import validate_flows
from taishi.pipeline.windows import NO_WATERMARK, Doc, EntityWindows


@dataclass(slots=True)
class Message:
    """One Kafka message (or its in-memory twin)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class DeadLetter:
    """What goes to the dead-letter topic: original bytes, reason, and where they came from."""

    raw: bytes
    reason: str
    topic: str
    partition: int
    offset: int
    index: int = -1

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("taishi-reason", self.reason.encode()),
            ("taishi-source", f"{self.topic}/{self.partition}/{self.offset}".encode()),
            ("taishi-record-index", str(self.index).encode()),
        ]


@dataclass(slots=True)
class Counters:
    """Running counts of one processor."""

    messages: int = 0
    records_in: int = 0
    records_valid: int = 0
    dead_letters: int = 0
    docs: int = 0
    alerts: int = 0

    def add(self, other: Counters) -> None:
        for k in self.__slots__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


class PartitionProcessor:
    """Turns one partition's messages into documents, keeping its open windows."""

    def __init__(
        self,
        settings: Settings,
        enricher: Enricher,
        partition: int,
        watermark_ms: int = NO_WATERMARK,
        baselines: Baselines | None = None,
        detectors: DetectorSet | None = None,
    ) -> None:
        self.settings = settings
        self.enricher = enricher
        self.partition = partition
        self.windows = EntityWindows(
            settings.window.size_s, settings.window.allowed_lateness_s, watermark_ms, baselines
        )
        self.detectors = (
            detectors
            if detectors is not None
            else DetectorSet(settings.detection, build_detectors(settings.detection))
        )
        self.next_offset: int | None = None
        self.counters = Counters()
        self._flow_orgs = {i.id for i in settings.institutions if i.index_flows}

    def process(self, msgs: list[Message]) -> tuple[list[Doc], list[DeadLetter]]:
        """Process messages (in offset order); return documents ready to store and dead letters."""
        dead: list[DeadLetter] = []
        tables: list[pa.Table] = []
        frames: list[pd.DataFrame] = []
        origin: list[tuple[Message, wire.Decoded]] = []
        for m in msgs:
            self.counters.messages += 1
            d = wire.decode(m.value, m.headers)
            for r in d.rejects:
                dead.append(DeadLetter(r.raw, r.reason, m.topic, m.partition, m.offset, r.index))
            self.counters.records_in += d.count + sum(1 for r in d.rejects if r.index >= 0)
            if not d.count:
                continue
            sensor = dict(m.headers).get(contract.HEADER_SENSOR, b"").decode("utf-8", "replace")
            mi = len(origin)
            origin.append((m, d))
            if d.table is not None:
                t = d.table
                if "observer.name" not in t.column_names:
                    t = t.append_column("observer.name", pa.array([sensor] * t.num_rows, pa.string()))
                t = t.append_column("__msg", pa.array(np.full(t.num_rows, mi, np.int64)))
                tables.append(t.append_column("__row", pa.array(np.arange(t.num_rows, dtype=np.int64))))
            else:
                df = pd.DataFrame.from_records(d.rows)
                if "observer.name" not in df.columns:
                    df["observer.name"] = sensor
                df["__msg"] = mi
                df["__row"] = np.arange(len(df))
                frames.append(df)
        if tables:
            try:
                table = pa.concat_tables(tables, promote_options="permissive")
                frames.insert(0, table.to_pandas())
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # incompatible schemas: convert one by one
                frames[:0] = [t.to_pandas() for t in tables]
        if msgs:
            self.next_offset = msgs[-1].offset + 1
        if not frames:
            self.counters.dead_letters += len(dead)
            return [], dead
        raw = frames[0]
        if len(frames) > 1:  # mixed encodings: back to offset order, which lateness decisions rely on
            raw = pd.concat(frames, ignore_index=True).sort_values(
                ["__msg", "__row"], kind="stable", ignore_index=True
            )
        v = validate_flows(raw, seed=self.settings.community_id_seed)
        for idx, reason in v.rejected.items():
            mi, ri = int(raw.at[idx, "__msg"]), int(raw.at[idx, "__row"])
            m, d = origin[mi]
            dead.append(DeadLetter(_raw_row(raw, idx, d, ri), reason, m.topic, m.partition, m.offset, ri))
        offsets = np.array([origin[i][0].offset for i in range(len(origin))], np.int64)[
            raw.loc[v.frame.index, "__msg"].to_numpy(np.int64)
        ]
        enriched = self.enricher.enrich(v.frame)
        admitted, wstart = self.windows.add(enriched, offsets)
        self.detectors.add(admitted, wstart)
        docs = self.windows.close_ready()
        docs.extend(self._alerts())
        if self._flow_orgs:
            docs.extend(flow_docs(enriched[enriched["organization.id"].isin(self._flow_orgs)]))
        self.counters.records_valid += len(v.frame)
        self.counters.dead_letters += len(dead)
        self.counters.docs += len(docs)
        return docs, dead

    def _alerts(self) -> list[Doc]:
        """Alert documents of the windows that closed since the last call."""
        docs: list[Doc] = []
        for start, end in self.windows.closed:
            docs.extend(self.detectors.close(start, end))
        self.windows.closed.clear()
        self.counters.alerts += len(docs)
        return docs

    def flush(self) -> list[Doc]:
        """Close every open window (end of a finite input)."""
        docs = self.windows.close_all()
        docs.extend(self._alerts())
        self.counters.docs += len(docs)
        return docs

    def commit_offset(self) -> int | None:
        """Offset safe to commit: never past a record whose window is still open."""
        return None if self.next_offset is None else self.windows.commit_offset(self.next_offset)

    def commit_metadata(self) -> str:
        """Committed beside the offset, so a replay restores the watermark (see windows.py)."""
        return orjson.dumps({"wm": self.windows.watermark_ms}).decode()


def watermark_from_metadata(metadata: str | None) -> int:
    """Inverse of ``commit_metadata``; no metadata means no watermark yet."""
    if not metadata:
        return NO_WATERMARK
    try:
        return int(orjson.loads(metadata)["wm"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return NO_WATERMARK


def _raw_row(raw: pd.DataFrame, idx: Any, d: wire.Decoded, ri: int) -> bytes:
    if d.table is None:
        return d.row_raw[ri]
    row = {k: _plain(v) for k, v in raw.loc[idx].items() if not str(k).startswith("__") and not _isna(v)}
    return orjson.dumps(row, default=str)


def _plain(v: Any) -> Any:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v.item() if isinstance(v, np.generic) else v


def _isna(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def flow_docs(df: pd.DataFrame) -> list[Doc]:
    """Raw-flow documents with content-derived ids (a resent record overwrites itself)."""
    if df.empty:
        return []
    cols = [c.name for c in contract.FLOW_COLUMNS]
    h1 = pd.util.hash_pandas_object(df[cols], index=False, hash_key="taishi-flowid-01").to_numpy()
    h2 = pd.util.hash_pandas_object(df[cols], index=False, hash_key="taishi-flowid-02").to_numpy()
    out = df.copy()
    for name in ("@timestamp", "event.end"):
        out[name] = pd.to_datetime(out[name], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    days = pd.to_datetime(df["@timestamp"], utc=True).dt.strftime("%Y.%m.%d").to_numpy(object)
    orgs = df["organization.id"].to_numpy(object)
    docs = []
    for rec, org, day, a, b in zip(out.to_dict("records"), orgs, days, h1, h2, strict=True):
        src: dict[str, Any] = {"event": {"kind": "event", "category": ["network"]}}
        for k, v in rec.items():
            if v is None or v == "" or (isinstance(v, float) and v != v):
                continue
            _put(src, k, v.item() if isinstance(v, np.generic) else v)
        doc_id = f"{int(a):016x}{int(b):016x}"
        docs.append(Doc(contract.index_name(contract.FLOWS_INDEX, org, day), doc_id, src))
    return docs


def _put(obj: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        obj = obj.setdefault(p, {})
    obj[parts[-1]] = value
