"""The embedded default: an in-process bus standing in for Kafka, and the same processing as the pipeline.

Used by ``taishi demo`` / ``taishi replay`` (no servers needed) and by unit tests. The bus keeps Kafka's
shape — topics, partitions chosen by message key, offsets — so the per-partition processing, windows and
dead letters behave as they do on the real broker.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from taishi.pipeline.config import Settings
from taishi.pipeline.enrich import Enricher
from taishi.pipeline.processor import Counters, DeadLetter, Message, PartitionProcessor
from taishi.pipeline.sinks import Sink


class MemoryBus:
    """In-memory twin of a Kafka topic set: partitioned, ordered, offset-addressed logs."""

    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.topics: dict[str, list[list[Message]]] = {}

    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> Message:
        logs = self.topics.setdefault(topic, [[] for _ in range(self.partitions)])
        p = zlib.crc32(key) % self.partitions if key else sum(len(x) for x in logs) % self.partitions
        msg = Message(topic, p, len(logs[p]), key, value, list(headers or []))
        logs[p].append(msg)
        return msg

    def read(self, topic: str, partition: int, offset: int = 0) -> list[Message]:
        logs = self.topics.get(topic)
        return [] if logs is None else logs[partition][offset:]


@dataclass(slots=True)
class EmbeddedResult:
    """Counts of an embedded run, and the dead letters it produced."""

    counters: Counters
    late_records: int
    dead_letters: list[DeadLetter] = field(default_factory=list)


def run_embedded(
    settings: Settings,
    bus: MemoryBus,
    sink: Sink,
    enricher: Enricher | None = None,
    poll_messages: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EmbeddedResult:
    """Process everything on the flows topic of ``bus`` into ``sink``, then close all windows.

    ``progress(done, total)`` is called with counts of messages after each poll.
    """
    enricher = enricher or Enricher(settings)
    topic = settings.kafka.flows_topic
    step = poll_messages or settings.kafka.max_poll_records
    total = Counters()
    late = 0
    dead: list[DeadLetter] = []
    sink.setup()
    todo = sum(len(bus.read(topic, p)) for p in range(bus.partitions))
    done = 0
    for p in range(bus.partitions):
        proc = PartitionProcessor(settings, enricher, p)
        msgs = bus.read(topic, p)
        for i in range(0, len(msgs), step):
            docs, dl = proc.process(msgs[i : i + step])
            done += len(msgs[i : i + step])
            if progress:
                progress(done, todo)
            for f in sink.write(docs):
                dl.append(DeadLetter(orjson.dumps(f.doc.source), f.reason, f.doc.index, -1, -1))
            dead.extend(dl)
        sink.write(proc.flush())
        total.add(proc.counters)
        late += proc.windows.late_records
    return EmbeddedResult(total, late, dead)


def read_flow_file(path: Path, chunk_lines: int = 20_000) -> Iterator[bytes]:
    """Read a flow log as NDJSON chunks: JSON lines (flat or nested ECS) or CSV with ECS column names."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
        fh.seek(0)
        if head.lstrip()[:1] in (b"{", b""):
            yield from _chunks((line.rstrip(b"\n") for line in fh), chunk_lines)
        else:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            import orjson

            rows = (
                orjson.dumps({k: _csv_value(v) for k, v in r.items() if v != ""})
                for r in csv.DictReader(text)
            )
            yield from _chunks(rows, chunk_lines)


def _csv_value(v: str) -> object:
    try:
        return int(v)
    except ValueError:
        return v


def _chunks(lines: Iterable[bytes], n: int) -> Iterator[bytes]:
    buf: list[bytes] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= n:
            yield b"\n".join(buf)
            buf = []
    if buf:
        yield b"\n".join(buf)
