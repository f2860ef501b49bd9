"""UDP listener for NetFlow v5/v9 and IPFIX exporters: datagrams -> ``NetflowDecoder`` -> ``Shipper``.

Datagrams are gathered into a bounded batch (``batch_datagrams`` or ``batch_interval_s``, whichever comes
first) and decoded together by ``NetflowDecoder.feed_many``, which is where the decoder is fast; the decoded
columns go to the shipper, which tags them with institution, sensor and host and spools them for Kafka.

UDP has no back-pressure: while the loop decodes, or waits on a full spool under the ``block`` policy,
datagrams queue in the socket's receive buffer (``recv_buffer_bytes``, capped by the kernel's
``net.core.rmem_max``) and the kernel drops what does not fit. The shipper's guarantee starts at the spool.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from taishi.collectors.netflow import NetflowDecoder
from taishi.collectors.shipper import Shipper
from taishi.collectors.spool import SpoolFull

__all__ = ["ListenerCounters", "NetflowListener", "parse_listen"]

log = logging.getLogger(__name__)

_MAX_DATAGRAM = 65535


@dataclass(slots=True)
class ListenerCounters:
    """What the listener received, decoded and handed to the shipper."""

    datagrams: int = 0
    bytes: int = 0
    batches: int = 0
    records: int = 0  # decoded and spooled
    decode_errors: int = 0  # error messages from the decoder (a malformed packet or flowset each)
    dropped_flowsets: int = 0  # data the decoder gave up waiting for its template
    refused_records: int = 0  # decoded but not spooled: full spool (block policy) or a disk error


def parse_listen(text: str) -> tuple[str, int]:
    """``"0.0.0.0:2055"``, ``"[::]:2055"`` or ``":2055"`` -> ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:2055 or [::]:2055")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class NetflowListener:
    """Receive NetFlow/IPFIX datagrams on one UDP socket and ship the decoded flows; ``run()``/``stop()``.

    The socket is bound on construction, so ``address`` is known (port 0 picks a free one).
    """

    def __init__(
        self,
        shipper: Shipper,
        listen: str = "0.0.0.0:2055",
        batch_datagrams: int = 1024,
        batch_interval_s: float = 1.0,
        recv_buffer_bytes: int = 8 << 20,
        decoder: NetflowDecoder | None = None,
        status_interval_s: float = 60.0,
    ) -> None:
        if batch_datagrams < 1 or batch_interval_s <= 0:
            raise ValueError("batch_datagrams must be >= 1 and batch_interval_s > 0")
        self.shipper = shipper
        self.decoder = decoder or NetflowDecoder()
        self.batch_datagrams = batch_datagrams
        self.batch_interval_s = batch_interval_s
        self.status_interval_s = status_interval_s
        self.counters = ListenerCounters()
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise OSError(f"cannot listen on {listen}: {exc}") from exc
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._errors_since_log = 0
        self._last_error = ""

    def run(self) -> None:
        """Receive, decode and ship until ``stop()``; the last partial batch is shipped too."""
        log.info("listening for NetFlow/IPFIX on %s:%d", *self.address)
        next_status = time.monotonic() + self.status_interval_s
        batch: list[tuple[bytes, str, float]] = []
        try:
            while not self._stop.is_set():
                deadline = time.monotonic() + self.batch_interval_s
                while len(batch) < self.batch_datagrams:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stop.is_set():
                        break
                    self.sock.settimeout(min(left, 0.5))
                    try:
                        data, addr = self.sock.recvfrom(_MAX_DATAGRAM)
                    except TimeoutError:
                        continue
                    batch.append((data, addr[0], time.time()))
                    self.counters.bytes += len(data)
                if batch:
                    self._ship(batch)
                    batch = []
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.status_interval_s
                    self._log_status()
        finally:
            if batch:
                self._ship(batch)
            self._log_status()

    def _ship(self, batch: list[tuple[bytes, str, float]]) -> None:
        c = self.counters
        c.datagrams += len(batch)
        c.batches += 1
        try:
            result = self.decoder.feed_many(batch)
        except Exception:  # a decoder bug must not stop the collector; the batch is counted and logged
            log.exception("decoding a batch of %d datagrams failed", len(batch))
            c.decode_errors += len(batch)
            return
        c.dropped_flowsets += result.dropped
        if result.errors:
            c.decode_errors += len(result.errors)
            self._errors_since_log += len(result.errors)
            self._last_error = result.errors[-1]
        if not result.count:
            return
        before = self.shipper.counters.written_records
        try:
            self.shipper.write(result.columns)
        except (SpoolFull, OSError) as exc:  # OSError: the spool's disk failed or is full
            refused = result.count - (self.shipper.counters.written_records - before)
            c.refused_records += refused
            log.error("%s; %d decoded records of this batch not spooled", exc, refused)
        c.records += self.shipper.counters.written_records - before

    def _log_status(self) -> None:
        if self._errors_since_log:
            log.warning(
                "%d NetFlow decode errors since the last report, the last: %s",
                self._errors_since_log,
                self._last_error,
            )
            self._errors_since_log = 0
        log.info("listener %s; shipper %s", asdict(self.counters), asdict(self.shipper.counters))

    def status(self) -> dict[str, Any]:
        """Listener and shipper counters and spool gauges, JSON-ready."""
        return {"listener": asdict(self.counters), **self.shipper.status()}

    def stop(self) -> None:
        """Ask ``run()`` to ship what it has and return (within half a second)."""
        self._stop.set()

    def close(self) -> None:
        """Close the socket (after ``run()`` returned)."""
        self.sock.close()
