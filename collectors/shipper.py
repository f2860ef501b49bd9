"""Ship columnar flow batches from a collector host to Kafka through a disk spool.

``Shipper.write(columns)`` tags every record with the institution, sensor, host and dataset, cuts the batch
into Arrow messages (``wire.sensor_batches``) and appends each to the spool (``collectors/spool.py``); a
sender thread reads the spool in order and produces to Kafka (acks=all, idempotent, compressed, TLS and
SASL/SCRAM as ``KafkaSettings`` says). The spool's acknowledged position moves past a message only when
Kafka acknowledged it and every message before it. While Kafka is unreachable or slow, messages pile up in
the spool (bounded by ``spool_max_bytes``) and drain, in order, when it is back.

Delivery guarantee: **at-least-once** from ``write()`` to the Kafka topic.

* Nothing ``write()`` accepted is lost by a crash, SIGKILL, network cut or broker outage: unacknowledged
  messages stay in the spool and are sent again after the restart or when Kafka returns.
* Duplicates can happen. A message Kafka stored whose acknowledgement the shipper never saw (the process was
  killed after sending it, or a send failed and the shipper resent from the first unacknowledged message with
  a new producer) reaches the topic twice. The idempotent producer only prevents duplicates caused by the
  producer's own retries within one producer session (one process lifetime, no producer restart); it cannot
  recognise a message resent by a new process or a new producer. At most ``max_in_flight_messages`` messages
  are in doubt at a crash; ``recovered_messages`` and ``resent_messages`` count them.
* The pipeline absorbs duplicates only for raw-flow documents (their ids are content hashes); entity-window
  sums (bytes, packets, flow counts per entity and window) count a duplicated message twice.
* Loss happens only by explicit policy: with ``full_policy="drop-oldest"`` a spool that fills during a long
  outage deletes its oldest segment and counts the dropped messages and records; with ``"block"``,
  ``write()`` waits up to ``block_timeout_s`` and then raises ``SpoolFull``. Records that never reached
  ``write()`` (e.g. UDP datagrams the kernel dropped) are outside the guarantee.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from taishi.collectors.spool import FsyncPolicy, FullPolicy, Spool, SpooledMessage, SpoolFull
from taishi.pipeline import contract, wire
from taishi.pipeline.config import KafkaSettings

__all__ = ["CollectorSettings", "MemoryProducer", "Shipper", "ShipperCounters"]

log = logging.getLogger(__name__)


class CollectorSettings(BaseModel):
    """Identity, spool and Kafka settings of one collector process."""

    model_config = ConfigDict(extra="forbid")

    organization_id: str = Field(description="institution id written to organization.id")
    sensor_id: str = Field(description="sensor id written to observer.name; with the institution, the key")
    hostname: str = Field(default_factory=socket.gethostname, description="observer.hostname")
    dataset: str = Field("netflow", description="event.dataset")
    spool_dir: Path = Field(description="spool directory; one collector process per directory")
    spool_max_bytes: int = Field(1 << 30, ge=1024, description="disk the spool may use")
    full_policy: FullPolicy = Field("drop-oldest", description="what a full spool does: drop-oldest or block")
    block_timeout_s: float = Field(30.0, ge=0, description="block policy: wait this long, then SpoolFull")
    fsync: FsyncPolicy = Field("interval", description="always, interval or never")
    fsync_interval_s: float = Field(1.0, ge=0)
    batch_records: int = Field(20_000, ge=1, description="records per Kafka message at most")
    max_span_ms: int = Field(5_000, ge=1, description="event-time span of one Kafka message at most")
    max_in_flight_messages: int = Field(32, ge=1, description="sent but unacknowledged messages at most")
    max_in_flight_bytes: int = Field(16 << 20, ge=1)
    delivery_timeout_s: float = Field(120.0, ge=1, description="a send not acknowledged by then is resent")
    retry_backoff_s: float = Field(0.5, gt=0, description="first wait after a failure; doubles")
    retry_backoff_max_s: float = Field(5.0, gt=0, description="longest wait between attempts/reconnects")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    @field_validator("organization_id")
    @classmethod
    def _valid_org(cls, v: str) -> str:
        if not contract.ORG_ID_RE.match(v):
            raise ValueError(f"organization id {v!r} must match {contract.ORG_ID_RE.pattern}")
        return v

    @field_validator("sensor_id")
    @classmethod
    def _valid_sensor(cls, v: str) -> str:
        if not v or "|" in v or len(v) > 128:
            raise ValueError(f"sensor id {v!r} must be 1-128 characters without '|'")
        return v


@dataclass(slots=True)
class ShipperCounters:
    """What the shipper did in this process."""

    written_records: int = 0  # accepted by write() and spooled
    refused_records: int = (
        0  # write() raised (SpoolFull under the block policy, a disk error) before spooling
    )
    sent_messages: int = 0  # acknowledged by Kafka
    sent_records: int = 0
    sent_bytes: int = 0
    resent_messages: int = 0  # sent again after a failure: possible duplicates in Kafka
    recovered_messages: int = 0  # unacknowledged in the spool at start: resent, possibly duplicates
    send_errors: int = 0
    producer_starts: int = 0
    last_error: str = ""


class Shipper:
    """Sink of columnar flow batches: ``write(columns)`` spools them, a sender thread ships them; ``close()``.

    At-least-once to Kafka, duplicates possible after a crash or a failed send (see the module docstring).

    ``producer_factory`` returns a kafka-python-like producer (default: a ``KafkaProducer`` from
    ``settings.kafka``); tests and the offline mode pass ``MemoryProducer``.
    """

    def __init__(
        self, settings: CollectorSettings, producer_factory: Callable[[], Any] | None = None
    ) -> None:
        self.settings = settings
        self.topic = settings.kafka.flows_topic
        self.spool = Spool(
            settings.spool_dir,
            max_bytes=settings.spool_max_bytes,
            full_policy=settings.full_policy,
            block_timeout_s=settings.block_timeout_s,
            fsync=settings.fsync,
            fsync_interval_s=settings.fsync_interval_s,
        )
        self.counters = ShipperCounters(recovered_messages=self.spool.pending_messages)
        if self.counters.recovered_messages:
            log.warning(
                "spool %s holds %d unacknowledged messages from a previous run; resending them "
                "(Kafka may already have some: at-least-once)",
                settings.spool_dir,
                self.counters.recovered_messages,
            )
        self._factory = producer_factory or self._kafka_producer
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._drain_deadline = 0.0
        self._highest_sent = self.spool.acked - 1  # resends within this process; recovered ones counted above
        self._thread = threading.Thread(target=self._send_loop, name="taishi-shipper", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- accepting records

    def write(self, columns: Mapping[str, Any]) -> int:
        """Tag, encode and spool a columnar batch (contract names); returns the records spooled.

        Raises ``SpoolFull`` (block policy) when the spool stayed full, ``OSError`` when its disk failed;
        records of messages spooled before that stay spooled and are counted in ``written_records``.
        """
        n = len(columns["@timestamp"])
        if n == 0:
            return 0
        s = self.settings
        cols = dict(columns)
        for name, value in (
            ("organization.id", s.organization_id),
            ("observer.name", s.sensor_id),
            ("observer.hostname", s.hostname),
            ("event.dataset", s.dataset),
        ):
            cols[name] = np.full(n, value, dtype=object)
        ts = np.asarray(cols["@timestamp"])
        if n > 1 and bool(np.any(ts[1:] < ts[:-1])):
            # sensor_batches cuts on event-time spans, which needs time order; exporters send flows as they end.
            order = np.argsort(ts, kind="stable")
            cols = {k: np.asarray(v)[order] for k, v in cols.items()}
        spooled = 0
        for key, value, hdrs in wire.sensor_batches(cols, s.batch_records, max_span_ms=s.max_span_ms):
            count = int(dict(hdrs)[contract.HEADER_COUNT])
            try:
                self.spool.append(value, key, hdrs, records=count)
            except (SpoolFull, OSError):  # OSError: the spool's disk failed or is full
                self.counters.refused_records += n - spooled
                raise
            spooled += count
            self.counters.written_records += count
        self._wake.set()
        return spooled

    # ---------------------------------------------------------------- sending

    def _kafka_producer(self) -> Any:
        from kafka import KafkaProducer

        s = self.settings
        k = s.kafka
        return KafkaProducer(
            client_id=f"{k.client_id}-collector-{s.sensor_id}",
            acks="all",
            enable_idempotence=True,
            compression_type=None if k.compression == "none" else k.compression,
            linger_ms=5,
            batch_size=1 << 20,
            max_request_size=16 << 20,
            delivery_timeout_ms=int(s.delivery_timeout_s * 1000),
            request_timeout_ms=min(30_000, int(s.delivery_timeout_s * 1000) - 10),
            max_block_ms=5_000,  # send() must not stall the loop for a minute when metadata is missing
            bootstrap_timeout_ms=10_000,
            reconnect_backoff_max_ms=int(s.retry_backoff_max_s * 1000),
            **k.client_options(),
        )

    def _send_loop(self) -> None:
        s = self.settings
        producer: Any = None
        inflight: deque[tuple[SpooledMessage, Any]] = deque()
        inflight_bytes = 0
        backoff = s.retry_backoff_s
        wake = self._wake.set
        while True:
            if self._stopping.is_set() and (
                time.monotonic() >= self._drain_deadline
                or (not inflight and self.spool.pending_messages == 0)
            ):
                break
            try:
                if producer is None:
                    producer = self._factory()
                    self.counters.producer_starts += 1
                    self.spool.rewind()  # a new producer resends from the first unacknowledged message
                # Acknowledge the completed prefix, in spool order.
                acked_to = -1
                while inflight and inflight[0][1].is_done:
                    msg, fut = inflight[0]
                    if fut.failed():
                        raise _SendFailed(f"message {msg.seq}: {fut.exception!r}")
                    inflight.popleft()
                    inflight_bytes -= len(msg.value)
                    acked_to = msg.seq + 1
                    self.counters.sent_messages += 1
                    self.counters.sent_records += msg.records
                    self.counters.sent_bytes += len(msg.value)
                if acked_to >= 0:
                    self.spool.ack(acked_to)
                    backoff = s.retry_backoff_s
                room = s.max_in_flight_messages - len(inflight)
                if room > 0 and inflight_bytes < s.max_in_flight_bytes:
                    for msg in self.spool.read(room, s.max_in_flight_bytes - inflight_bytes):
                        try:
                            fut = producer.send(self.topic, value=msg.value, key=msg.key, headers=msg.headers)
                        except Exception:
                            self.spool.rewind(msg.seq)  # not queued: this one and the rest go next time
                            raise
                        if msg.seq <= self._highest_sent:
                            self.counters.resent_messages += 1
                        self._highest_sent = max(self._highest_sent, msg.seq)
                        fut.add_both(lambda *_: wake())
                        inflight.append((msg, fut))
                        inflight_bytes += len(msg.value)
                self.spool.maybe_sync()
                if inflight and inflight[0][1].is_done:
                    continue
                self._wake.wait(0.2)
                self._wake.clear()
            except Exception as exc:
                self.counters.send_errors += 1
                self.counters.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "shipping to Kafka failed (%s); %d messages spooled, retrying in %.1fs",
                    self.counters.last_error,
                    self.spool.pending_messages,
                    backoff,
                )
                if isinstance(exc, _SendFailed) and producer is not None:
                    # Later sends of this producer may still land: resending them makes duplicates, not loss.
                    _close_quietly(producer)
                    producer = None
                    inflight.clear()
                    inflight_bytes = 0
                    self.spool.rewind()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, s.retry_backoff_max_s)
        if producer is not None:
            _close_quietly(producer, timeout=1.0)

    # ---------------------------------------------------------------- status and closing

    def status(self) -> dict[str, Any]:
        """Shipper counters and spool gauges, JSON-ready."""
        return {"shipper": asdict(self.counters), "spool": self.spool.status()}

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything spooled so far is acknowledged by Kafka; True if it was within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.spool.pending_messages:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def close(self, drain_timeout_s: float = 10.0) -> None:
        """Stop accepting, try to drain the spool for up to ``drain_timeout_s``, stop the sender, close."""
        self._drain_deadline = time.monotonic() + drain_timeout_s
        self._stopping.set()
        self._wake.set()
        self._thread.join(drain_timeout_s + 15.0)
        left = self.spool.pending_messages
        if left:
            log.warning(
                "shipper closed with %d messages spooled in %s; sent on the next start", left, self.spool.path
            )
        self.spool.close()


class _SendFailed(Exception):
    """Kafka did not acknowledge a message within the delivery timeout (or refused it)."""


def _close_quietly(producer: Any, timeout: float = 0.0) -> None:
    try:
        producer.close(timeout=timeout)
        return
    except Exception as exc:
        log.debug("closing the producer: %s", exc)
    # kafka-python's close() raises from its flush() while sends are pending and leaves its I/O thread
    # running; stop that thread without sending (what close() does after its timeout), then close again.
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5.0)
    try:
        producer.close(timeout=0)
    except Exception as exc:
        log.warning("the Kafka producer did not close cleanly: %s", exc)


class _DoneFuture:
    """A future that is already settled (the in-memory producer answers at once)."""

    __slots__ = ("exception", "is_done", "value")

    def __init__(self, value: Any = None, exception: BaseException | None = None) -> None:
        self.is_done = True
        self.value = value
        self.exception = exception

    def failed(self) -> bool:
        return self.exception is not None

    def add_both(self, f: Callable[..., Any], *args: Any) -> None:
        f(self.exception if self.exception is not None else self.value, *args)


class MemoryProducer:
    """In-memory twin of a Kafka producer for tests and the offline mode: ``messages`` holds what was sent.

    ``fail`` makes every send fail (an outage) until it is set back to False.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
        self.fail = False
        self.closed = False

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> _DoneFuture:
        """Keep the message (or fail it while ``fail`` is set); the returned future is already settled."""
        if self.fail:
            return _DoneFuture(exception=ConnectionError("memory producer is failing"))
        self.messages.append((topic, key, value, list(headers or [])))
        return _DoneFuture(value=len(self.messages) - 1)

    def close(self, timeout: float | None = None) -> None:
        """Mark the producer closed."""
        self.closed = True
