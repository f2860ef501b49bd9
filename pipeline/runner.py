"""The streaming pipeline on Kafka: consume in batches, process per partition, store, then commit.

Delivery: offsets (with the partition's watermark as commit metadata) are committed only after the sink
acknowledged every document derived from the records before them and the dead-letter producer flushed.
Commits never pass a record whose window is still open, so a process killed at any moment replays the
open windows from the committed offset and rewrites the same documents under the same ids.
Scale-out is Kafka's consumer group: state is per partition, rebuilt on assignment.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from taishi.pipeline.baselines import Baselines
from taishi.pipeline.config import Settings
from taishi.pipeline.enrich import Enricher
from taishi.pipeline.processor import (
    Counters,
    DeadLetter,
    Message,
    PartitionProcessor,
    watermark_from_metadata,
)
from taishi.pipeline.sinks import Sink
from taishi.pipeline.windows import Doc

log = logging.getLogger(__name__)
DETECTORS_KEY = (
    b"\x00detectors"  # state-topic keys of a partition's detector state (entity keys never start with NUL)
)
_CHUNK = 4 << 20


def detector_state_records(snapshot: dict[str, Any], generation: int) -> list[tuple[bytes, bytes]]:
    """A detector-state snapshot as compacted-topic records: lz4 chunks, then a header naming them.

    Chunks alternate between two key slots and the header goes last: a process killed while writing a
    new snapshot leaves the previous one whole, and the header still names it.
    """
    import lz4.frame

    blob = lz4.frame.compress(orjson.dumps(snapshot))
    chunks = [blob[i : i + _CHUNK] for i in range(0, len(blob), _CHUNK)] or [b""]
    gen = generation.to_bytes(8, "big")
    slot = generation % 2
    out = [(DETECTORS_KEY + b"|%d|%d" % (slot, i), gen + c) for i, c in enumerate(chunks)]
    out.append((DETECTORS_KEY, orjson.dumps({"gen": generation, "slot": slot, "chunks": len(chunks)})))
    return out


def detector_state_from_records(
    records: list[tuple[bytes, bytes | None]], partition: int
) -> dict[str, Any] | None:
    """Inverse of ``detector_state_records`` over a partition's records in topic order."""
    import lz4.frame

    header, chunks = None, {}
    for key, value in records:
        if key == DETECTORS_KEY and value:
            header = orjson.loads(value)
        elif key.startswith(DETECTORS_KEY + b"|") and value:
            _, slot, index = key.split(b"|")
            chunks[(int(slot), int(index))] = value
    if header is None:
        return None
    gen = int(header["gen"]).to_bytes(8, "big")
    parts = [chunks.get((int(header["slot"]), i), b"") for i in range(int(header["chunks"]))]
    if not all(p.startswith(gen) for p in parts):
        log.warning(
            "partition %d: detector state incomplete in the state topic; detectors start fresh", partition
        )
        return None
    return orjson.loads(lz4.frame.decompress(b"".join(p[8:] for p in parts)))


@dataclass(slots=True)
class Status:
    """What ``taishi status`` shows about a running pipeline."""

    started_at: float = field(default_factory=time.time)
    updated_at: float = 0.0
    partitions: list[int] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    late_records: int = 0
    open_windows: int = 0
    last_batch_seconds: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    busy_seconds: float = 0.0  # wall time spent processing polled batches (excludes waiting)
    busy_cpu_seconds: float = 0.0  # CPU time of this process over the same spans
    active_cpu_seconds: float = (
        0.0  # CPU time from start to the last batch, polling and decompression included
    )


def ensure_topics(settings: Settings) -> None:
    """Create the flows, dead-letter and state topics when missing (idempotent)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    k = settings.kafka
    admin = KafkaAdminClient(client_id=f"{k.client_id}-admin", **k.client_options())
    try:
        existing = set(admin.list_topics())
        wanted = [
            # Batches of many records: allow messages up to 16 MiB (the broker's default is 1 MiB).
            NewTopic(k.flows_topic, k.partitions, 1, topic_configs={"max.message.bytes": str(16 << 20)}),
            NewTopic(k.dlq_topic, 1, 1, topic_configs={"max.message.bytes": str(16 << 20)}),
            NewTopic(
                k.state_topic,
                k.partitions,
                1,
                topic_configs={"cleanup.policy": "compact", "max.message.bytes": str(16 << 20)},
            ),
        ]
        new = [t for t in wanted if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    finally:
        admin.close()


class KafkaPipeline:
    """Consumer-group member running the pipeline on its assigned partitions."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        enricher: Enricher | None = None,
        status_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.enricher = enricher or Enricher(settings)
        self.status_file = status_file
        self.status = Status()
        self._procs: dict[Any, PartitionProcessor] = {}
        self._stop = threading.Event()
        self._consumer: Any = None
        self._retired = Counters()
        self._last_seen: dict[Any, float] = {}

    def stop(self) -> None:
        self._stop.set()

    # Rebalance listener -------------------------------------------------------------------------------
    def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            proc = self._procs.pop(tp, None)
            if proc:
                self._retired.add(proc.counters)
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        # Runs on kafka-python's IO thread, which must not block: state is built lazily in the main loop.
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

    def _processor(self, tp: Any, first_offset: int) -> PartitionProcessor | None:
        """The partition's processor, built on first use from the committed offset and watermark.

        A fresh processor must see its partition from the committed offset: if the consumer's position
        is elsewhere (records fetched before a rebalance), seek back and skip this batch.
        """
        proc = self._procs.get(tp)
        if proc is not None or tp not in self._consumer.assignment():
            return proc
        om = self._consumer.committed(tp, metadata=True)
        wm = watermark_from_metadata(om.metadata if om is not None else None)
        start = om.offset if om is not None else None
        if start is None:
            self._consumer.seek_to_beginning(tp)
            start = self._consumer.position(tp)
        if first_offset != start:
            log.info(
                "partition %d: fetched from %d, rewinding to committed %d", tp.partition, first_offset, start
            )
            self._consumer.seek(tp, start)
            return None
        baselines, detector_state = self._restore_state(tp.partition)
        proc = self._procs[tp] = PartitionProcessor(self.settings, self.enricher, tp.partition, wm, baselines)
        if detector_state is not None:
            proc.detectors.restore(detector_state)
        self._last_seen[tp] = time.monotonic()
        log.info(
            "partition %d: resuming at offset %d, watermark %s, %d entity baselines",
            tp.partition,
            start,
            wm,
            len(baselines),
        )
        return proc

    # Main loop ----------------------------------------------------------------------------------------
    def run(self, idle_exit_s: float | None = None) -> Status:
        """Run until ``stop()``, or until no message arrived for ``idle_exit_s`` seconds."""
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.structs import OffsetAndMetadata

        k = self.settings.kafka
        self._consumer = consumer = KafkaConsumer(
            group_id=k.group_id,
            client_id=k.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=k.max_poll_records,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            max_poll_interval_ms=600_000,
            **k.client_options(),
        )
        producer = KafkaProducer(
            client_id=f"{k.client_id}-dlq",
            acks="all",
            max_request_size=16 << 20,
            linger_ms=5,
            compression_type=None if k.compression == "none" else k.compression,
            **k.client_options(),
        )
        consumer.subscribe([k.flows_topic], listener=_listener(self))
        self.sink.setup()
        last_msg = time.monotonic()
        last_status = 0.0
        cpu_start = time.process_time()
        try:
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=500)
                now = time.monotonic()
                idle = [
                    tp
                    for tp, p in self._procs.items()
                    if p.windows.open_windows
                    and tp not in polled
                    and now - self._last_seen.get(tp, now) > self.settings.window.idle_close_s
                    and self._caught_up(tp)
                ]
                if not polled and not idle:
                    if not consumer.assignment():
                        last_msg = now  # idle means caught up, not waiting for a rebalance
                    if idle_exit_s is not None and now - last_msg > idle_exit_s:
                        break
                    last_status = self._maybe_status(consumer, force=False, last=last_status)
                    continue
                if polled:
                    last_msg = now
                t0, c0 = now, time.process_time()
                docs: list[Doc] = []
                dead: list[DeadLetter] = []
                done: list[Any] = []
                for tp, records in polled.items():
                    proc = self._processor(tp, records[0].offset)
                    if proc is None:  # revoked while polling, or rewound to the committed offset
                        continue
                    if proc.next_offset is not None and records[0].offset != proc.next_offset:
                        # The consumer's position moved under us (a rebalance reset it to the committed
                        # offset): skip what this processor already holds, rebuild on a gap.
                        if records[0].offset > proc.next_offset:
                            log.warning(
                                "partition %d: offset jumped %d -> %d; rebuilding from the commit",
                                tp.partition,
                                proc.next_offset,
                                records[0].offset,
                            )
                            del self._procs[tp]
                            self._consumer.seek(tp, self._consumer.committed(tp) or 0)
                            continue
                        records = [r for r in records if r.offset >= proc.next_offset]
                        if not records:
                            continue
                    msgs = [
                        Message(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or []))
                        for r in records
                    ]
                    d, dl = proc.process(msgs)
                    docs.extend(d)
                    dead.extend(dl)
                    done.append(tp)
                    self._last_seen[tp] = now
                for tp in idle:  # a quiet source: close its windows rather than hold them open forever
                    docs.extend(self._procs[tp].flush())
                    done.append(tp)
                self._store(docs, dead, producer)
                self._checkpoint(producer, done)
                offsets = {}
                for tp in done:
                    proc = self._procs.get(tp)
                    off = proc.commit_offset() if proc else None
                    if proc is not None and off is not None:
                        offsets[tp] = OffsetAndMetadata(off, proc.commit_metadata(), -1)
                if offsets:
                    consumer.commit(offsets)
                    self.status.commits += 1
                self.status.last_batch_seconds = time.monotonic() - t0
                self.status.busy_seconds += self.status.last_batch_seconds
                self.status.busy_cpu_seconds += time.process_time() - c0
                self.status.active_cpu_seconds = time.process_time() - cpu_start
                last_status = self._maybe_status(consumer, force=False, last=last_status)
        finally:
            self._maybe_status(consumer, force=True, last=last_status)
            producer.close(timeout=10)
            consumer.close(autocommit=False)
            self.sink.close()
        return self.status

    def _restore_state(self, partition: int) -> tuple[Baselines, dict[str, Any] | None]:
        """Read the partition of the compacted state topic from its start to its end."""
        from kafka import KafkaConsumer, TopicPartition

        k = self.settings.kafka
        baselines = Baselines()
        consumer = KafkaConsumer(
            client_id=f"{k.client_id}-state", enable_auto_commit=False, **k.client_options()
        )
        try:
            tp = TopicPartition(k.state_topic, partition)
            if partition not in (consumer.partitions_for_topic(k.state_topic) or set()):
                return baselines, None
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            records: list[tuple[bytes, bytes | None]] = []
            deadline = time.monotonic() + 120
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"state topic {k.state_topic}/{partition}: restore did not reach offset {end}"
                    )
                for recs in consumer.poll(timeout_ms=500).values():
                    records.extend((r.key, r.value) for r in recs if r.key is not None)
            baselines.restore([(key, v) for key, v in records if not key.startswith(DETECTORS_KEY)])
            return baselines, detector_state_from_records(records, partition)
        finally:
            consumer.close(autocommit=False)

    def _checkpoint(self, producer: Any, done: list[Any]) -> None:
        """Send the changed baselines of these partitions to the compacted state topic and wait for acks."""
        k = self.settings.kafka
        futures = []
        for tp in done:
            proc = self._procs.get(tp)
            if proc is None:
                continue
            for key, value in proc.windows.baselines.take_dirty():
                futures.append(producer.send(k.state_topic, key=key, value=value, partition=tp.partition))
            if proc.detectors.dirty:
                for key, value in detector_state_records(proc.detectors.snapshot(), self.status.commits):
                    futures.append(producer.send(k.state_topic, key=key, value=value, partition=tp.partition))
                proc.detectors.dirty = False
        if futures:
            producer.flush()
            for fut in futures:
                fut.get(timeout=30)

    def _caught_up(self, tp: Any) -> bool:
        """True when nothing is waiting on the partition: a quiet source, not a busy consumer."""
        high = self._consumer.highwater(tp)
        return high is not None and self._consumer.position(tp) >= high

    def _store(self, docs: list[Doc], dead: list[DeadLetter], producer: Any) -> None:
        """Write documents, then dead letters; raise (so nothing is committed) unless all were stored."""
        k = self.settings.kafka
        for f in self.sink.write(docs):
            dead.append(DeadLetter(orjson.dumps(f.doc.source), f.reason, f.doc.index, -1, -1))
        futures = [producer.send(k.dlq_topic, value=dl.raw, headers=dl.headers()) for dl in dead]
        if futures:
            producer.flush()
            for fut in futures:
                fut.get(timeout=30)
            log.warning("%d dead letters sent to %s (first: %s)", len(dead), k.dlq_topic, dead[0].reason)

    def _maybe_status(self, consumer: Any, force: bool, last: float) -> float:
        now = time.monotonic()
        if not force and now - last < 5.0:
            return last
        c = Counters()
        c.add(self._retired)
        for p in self._procs.values():
            c.add(p.counters)
        st = self.status
        st.updated_at = time.time()
        st.partitions = sorted(tp.partition for tp in self._procs)
        st.counters = {k: getattr(c, k) for k in Counters.__slots__}
        st.late_records = sum(p.windows.late_records for p in self._procs.values())
        st.open_windows = sum(p.windows.open_windows for p in self._procs.values())
        try:
            ends = consumer.end_offsets(list(self._procs)) if self._procs else {}
            st.lag = {str(tp.partition): max(0, ends[tp] - consumer.position(tp)) for tp in ends}
        except Exception as exc:  # lag is informative only; never stop the pipeline for it
            log.debug("lag unavailable: %s", exc)
        log.info("status %s", orjson.dumps(asdict(st)).decode())
        if self.status_file:
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(asdict(st), option=orjson.OPT_INDENT_2))
            tmp.replace(self.status_file)
        return now


def _listener(pipe: KafkaPipeline) -> Any:
    """kafka-python wants a ConsumerRebalanceListener subclass; delegate to the pipeline."""
    from kafka import ConsumerRebalanceListener

    class _Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            pipe.on_partitions_revoked(revoked)

        def on_partitions_assigned(self, assigned: Any) -> None:
            pipe.on_partitions_assigned(assigned)

    return _Listener()
