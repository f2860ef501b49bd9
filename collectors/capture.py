"""Packet-summary collector on a live interface or on capture files: dumpcap captures, the fast path summarises.

Each job goes to the tool that is fast enough for it:

* **Capture**: dumpcap (Wireshark's capture engine) writes a ring buffer of pcapng files in a directory
  (``-b filesize:… -b files:N -b duration:S``): the disk it uses is bounded by about ``ring_files ×
  ring_size`` plus one file. dumpcap names each file it completes on its standard output
  (``-b printname:stdout``); :class:`InterfaceCollector` takes those files in order, summarises them,
  hands the flows to the :class:`~taishi.collectors.shipper.Shipper` and deletes them.
* **Summarising**: the vectorised reader, decoder and flow table of ``pcap_flows`` with its DNS/TLS/HTTP
  metadata (``FlowParams.app_metadata``): hundreds of thousands of packets/s per core. The first DNS
  question and response code, TLS server name and HTTP request of a flow travel on its record
  (``dns.question.name``, ``dns.question.type``, ``dns.response_code``, ``tls.client.server_name``,
  ``http.request.method``, ``url.domain``, ``url.original``). Flows are reported as event time moves on
  (idle and active timeouts, TCP close): on a link that falls silent, open flows wait for the next packet
  or for ``stop()``.
* **Wireshark's dissectors**, through pyshark, only for the few packets the fast path does not parse (DNS
  over TCP, DNS on unusual ports, ...), picked by a display filter: :func:`dissect_with_wireshark`. Slow and
  selective by design: tshark dissects every packet of the file to evaluate the filter, and pyshark builds
  Python objects for the matches (a few thousand packets/s; the per-packet path never goes through
  pyshark objects, which parse ≈470 packets/s in their default mode).

pyshark also finds the tshark and dumpcap binaries (its ``config.ini``, then ``PATH``) and lists and checks
interface names; nothing here imports it before it is needed, so a collector host without it can still
read capture files.

If the collector falls behind, dumpcap's ring deletes the oldest file before it was summarised: counted in
``lost_files`` and logged (give the ring more files). If the collector process is killed, dumpcap gets
SIGPIPE at its next file switch (at most ``rotate_s`` later) and ends too; files it left are summarised
on the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from taishi.collectors.pcap_app import (
    AppExtractor,
    AppJoin,
    AppRecord,
    DnsMessage,
    HttpRequest,
)
from taishi.collectors.pcap_decode import Decoder
from taishi.collectors.pcap_flows import FlowMeter, FlowParams
from taishi.collectors.pcap_reader import CaptureFormatError, iter_packet_batches
from taishi.collectors.shipper import Shipper
from taishi.collectors.spool import SpoolFull

__all__ = [
    "CaptureCounters",
    "CaptureError",
    "InterfaceCollector",
    "PacketFlows",
    "RingCapture",
    "RingParams",
    "ToolMissing",
    "dissect_with_wireshark",
    "list_interfaces",
    "ship_capture_files",
    "tool_path",
]

log = logging.getLogger(__name__)

_US: Final = 1_000_000
RING_PREFIX: Final = "ring"
# The last lines dumpcap writes on exit: "Packets received/dropped on interface 'lo': 26/0 (...)".
_DROPS_RE: Final = re.compile(r"received/dropped on interface '([^']*)': (\d+)/(\d+)")


class ToolMissing(RuntimeError):
    """tshark, dumpcap or pyshark is not installed; the message says how to install it."""


class CaptureError(RuntimeError):
    """dumpcap could not capture (unknown interface, no permission) or stopped on its own."""


# --------------------------------------------------------------------------------------------------------------
# Finding the tools, listing interfaces (pyshark)


def tool_path(name: str = "tshark") -> str:
    """Path of ``tshark`` or ``dumpcap`` as pyshark resolves it (its config.ini, then PATH)."""
    try:
        from pyshark.tshark.tshark import TSharkNotFoundException, get_process_path
    except ImportError:
        raise ToolMissing("pyshark not installed: pip install 'taishi[collector]'") from None
    try:
        return str(get_process_path(process_name=name))
    except TSharkNotFoundException:
        hint = "apt-get install tshark" if name == "tshark" else "apt-get install tshark (it brings dumpcap)"
        raise ToolMissing(f"{name} not found: {hint}") from None


def list_interfaces() -> list[str]:
    """Names of the interfaces tshark can capture on (``tshark -D`` through pyshark)."""
    path = tool_path("tshark")
    from pyshark.tshark.tshark import get_tshark_interfaces

    try:
        return [str(name) for name in get_tshark_interfaces(path)]
    except subprocess.CalledProcessError as exc:
        raise CaptureError(
            f"'{path} -D' failed with exit code {exc.returncode}: may this user capture "
            "(root, or the wireshark group with dumpcap's capabilities)?"
        ) from None


def check_interface(interface: str) -> None:
    """Raise ``ValueError`` naming the known interfaces when tshark does not list ``interface``."""
    if interface.isdigit() or "://" in interface:  # an index from `tshark -D`, or a remote capture
        return
    path = tool_path("tshark")
    from pyshark.tshark.tshark import get_all_tshark_interfaces_names

    names = [str(n) for n in get_all_tshark_interfaces_names(path)]
    if interface.lower() not in (n.lower() for n in names):
        raise ValueError(f"interface {interface!r} not found; tshark lists: {', '.join(names) or 'none'}")


# --------------------------------------------------------------------------------------------------------------
# The fast path over a sequence of files


class PacketFlows:
    """The fast path (reader, decoder, flow table, DNS/TLS/HTTP metadata) over successive capture files.

    ``pcap_flows.iter_flows`` starts a new flow table for every file; a live capture's flows cross ring-file
    boundaries, so this keeps the flow table, fragment reassembly and followed TCP streams from one file to
    the next. Records from :func:`dissect_with_wireshark` added with :meth:`add_dissected` fill the
    metadata columns of flows the fast path found nothing for.
    """

    def __init__(self, params: FlowParams | None = None) -> None:
        self.params = p = params if params is not None else FlowParams(app_metadata=True)
        self.meter = FlowMeter(p)
        self.decoder = Decoder(keep_ip_tunnel_outer=p.ip_tunnel_outer_flows)
        self._app = AppExtractor(first_only=True) if p.app_metadata else None
        keep_us = int((max(p.tcp_idle_s, p.udp_idle_s, p.other_idle_s) + 60) * _US)
        self._join = AppJoin(keep_us)
        self._dissected = AppJoin(keep_us)
        self._any_dissected = False
        self.packets = 0
        self.flows = 0

    def feed(self, source: str | os.PathLike[str]) -> Iterator[dict[str, np.ndarray]]:
        """Flow records that finished while reading this file (flows still open are carried on)."""
        for batch in iter_packet_batches(source, self.params.chunk_bytes):
            self.packets += len(batch)
            pk = self.decoder.decode(batch)
            if self._app is not None:
                self._join.add([r for x in pk for r in self._app.add(x)])
            out = self.meter.add(pk)
            if out is not None:
                yield self._finish(out)

    def flush(self) -> dict[str, np.ndarray] | None:
        """Every flow still open (end of input)."""
        self.decoder.flush_fragments()
        out = self.meter.flush()
        return None if out is None else self._finish(out)

    def add_dissected(self, records: Iterable[AppRecord]) -> None:
        """Records of Wireshark's dissectors, to fill metadata the fast path did not find."""
        recs = list(records)
        if recs:
            self._dissected.add(recs)
            self._any_dissected = True

    def _finish(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._app is not None:
            out |= self._join.columns(out)
        if self._any_dissected:
            extra = self._dissected.columns(out)
            if "dns.question.name" not in out:
                out |= extra
            else:
                _fill_missing(out, extra)
        self.flows += len(out["@timestamp"])
        return out


# Metadata columns that belong together: filled as a group where the leading one is missing.
_GROUPS: Final = (
    ("dns.question.name", "dns.question.type", "dns.response_code"),
    ("tls.client.server_name",),
    ("http.request.method", "url.domain", "url.original"),
)


def _fill_missing(out: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> None:
    for group in _GROUPS:
        have = np.fromiter((v is not None for v in out[group[0]]), dtype=bool, count=len(out[group[0]]))
        found = np.fromiter((v is not None for v in extra[group[0]]), dtype=bool, count=len(have))
        take = found & ~have
        if take.any():
            for name in group:
                out[name] = np.where(take, extra[name], out[name])


# --------------------------------------------------------------------------------------------------------------
# Wireshark's dissectors for selected packets (pyshark)


def dissect_with_wireshark(
    pcap: str | os.PathLike[str], display_filter: str, max_packets: int | None = 100_000
) -> list[AppRecord]:
    """DNS messages, TLS ClientHello server names and HTTP requests that Wireshark finds in the packets
    matching ``display_filter``, as ``pcap_app.AppRecord`` (what the fast path produces).

    Slow and selective: tshark dissects every packet of the file to evaluate the filter (≈45k packets/s
    here) and pyshark builds objects for the matches (a few thousand packets/s); use a filter that picks few packets, e.g. ``"dns and tcp"``
    (DNS over TCP, which the fast path does not parse). At most ``max_packets`` matches are read.

    pyshark runs in its EK mode (``use_ek=True``, flat field names): in its ``use_json`` mode pyshark 0.6
    files nested fields under display labels and loses some, e.g. the DNS query name (``Queries`` is
    answered with the query count) and all but the last TLS extension, so the server name.
    """
    import pyshark
    from pyshark.capture.capture import TSharkCrashException

    tshark = tool_path("tshark")
    _check_display_filter(tshark, display_filter, str(pcap))
    out: list[AppRecord] = []
    cap = pyshark.FileCapture(
        str(pcap), display_filter=display_filter, use_ek=True, keep_packets=False, tshark_path=tshark
    )
    try:
        for n, pkt in enumerate(cap):
            if max_packets is not None and n >= max_packets:
                log.warning(
                    "%s: read the first %d packets matching %r only", pcap, max_packets, display_filter
                )
                break
            out += _records_of(pkt)
    except TSharkCrashException as exc:
        raise ValueError(f"tshark failed on {pcap} with display filter {display_filter!r}: {exc}") from None
    finally:
        with contextlib.suppress(TSharkCrashException):  # it raises the crash again on close
            cap.close()
    return out


_ACCEPTED_FILTERS: set[tuple[str, str]] = set()


def _check_display_filter(tshark: str, display_filter: str, pcap: str) -> None:
    """Raise ``ValueError`` with tshark's message when it rejects the filter (checked once per filter).

    pyshark reports a bad filter only as a tshark crash, and then again from its destructor.
    """
    if (tshark, display_filter) in _ACCEPTED_FILTERS:
        return
    cmd = [tshark, "-n", "-r", pcap, "-c", "1", "-Y", display_filter, "-T", "fields", "-e", "frame.number"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        msg = " ".join(ln.strip() for ln in proc.stderr.splitlines() if "Running as user" not in ln)
        raise ValueError(f"tshark refused display filter {display_filter!r} (reading {pcap}): {msg}")
    _ACCEPTED_FILTERS.add((tshark, display_filter))


def _values(layer: Any, name: str) -> list[Any]:
    """Every value of a field in a pyshark EK layer ([] when absent)."""
    v = layer.get_field(name)
    if v is not None and not isinstance(v, str | int | float | bool | list):
        v = v.value  # an EkMultiField: the field has subfields; its own value is here
    if v is None:
        return []
    return [x for x in v if x is not None] if isinstance(v, list) else [v]


def _first(layer: Any, name: str) -> Any:
    vals = _values(layer, name)
    return vals[0] if vals else None


def _int(v: Any, default: int = 0) -> int:
    if isinstance(v, bool):
        return int(v)
    try:
        return int(str(v), 0)
    except (TypeError, ValueError):
        return default


def _records_of(pkt: Any) -> list[AppRecord]:
    by_name: dict[str, list[Any]] = {}
    for layer in pkt.layers:
        by_name.setdefault(layer.layer_name, []).append(layer)
    ips = [x for x in pkt.layers if x.layer_name in ("ip", "ipv6")]
    if not ips:
        return []
    ip = ips[-1]  # the innermost, as the fast path keys a tunnelled packet
    src, dst = str(_first(ip, "src")), str(_first(ip, "dst"))
    proto, sport, dport = 0, 0, 0
    for name, number in (("udp", 17), ("tcp", 6)):
        if name in by_name:
            l4 = by_name[name][-1]
            proto, sport, dport = number, _int(_first(l4, "srcport")), _int(_first(l4, "dstport"))
    try:
        ts = int(Decimal(str(pkt.sniff_timestamp)) * _US)
    except (InvalidOperation, ValueError):
        ts = 0
    base = (ts, src, sport, dst, dport, proto)
    out: list[AppRecord] = []
    for d in by_name.get("dns", []):
        qnames = [str(q).lower() for q in _values(d, "qry.name")]
        qtypes = _values(d, "qry.type")
        answers = [
            str(a) for f in ("a", "aaaa", "cname", "ptr", "ns", "mx.mail_exchange") for a in _values(d, f)
        ]
        msg = DnsMessage(
            trans_id=_int(_first(d, "id")),
            response=bool(_int(_first(d, "flags.response"))),
            opcode=_int(_first(d, "flags.opcode")),
            rcode=_int(_first(d, "flags.rcode")),
            query=qnames[0] if qnames else None,
            qtype=_int(qtypes[0]) if qtypes else None,
            answers=answers,
            ttls=[_int(t) for t in _values(d, "resp.ttl")],
        )
        out.append(AppRecord(*base, "dns", dns=msg))
    for t in by_name.get("tls", []):
        if 1 in (_int(x) for x in _values(t, "handshake.type")):  # a ClientHello
            sni = _first(t, "handshake.extensions_server_name")
            out.append(AppRecord(*base, "tls", sni=None if sni is None else str(sni)))
    for h in by_name.get("http", []):
        method = _first(h, "request.method")
        if method is not None:
            version = _first(h, "request.version")
            host = _first(h, "host")
            req = HttpRequest(
                str(method),
                str(_first(h, "request.uri") or ""),
                str(version) if version else None,
                str(host) if host else None,
            )
            out.append(AppRecord(*base, "http", http=req))
    return out


# --------------------------------------------------------------------------------------------------------------
# Counters and shipping


@dataclass(slots=True)
class CaptureCounters:
    """What a capture collector read, summarised and handed to the shipper."""

    files: int = 0  # capture files summarised
    lost_files: int = 0  # ring files dumpcap deleted before they were summarised: the collector fell behind
    bad_files: int = 0  # files that could not be read (the message is logged)
    packets: int = 0
    flows: int = 0  # flow records spooled
    refused_records: int = 0  # flow records not spooled: full spool (block policy) or a disk error
    dissected_records: int = 0  # records from Wireshark's dissectors
    captured: int = 0  # dumpcap's final report: packets received on the interface ...
    dropped: int = 0  # ... and dropped by the kernel or dumpcap
    last_error: str = ""


def _ship(shipper: Shipper, cols: dict[str, np.ndarray], counters: CaptureCounters) -> None:
    n = len(cols["@timestamp"])
    before = shipper.counters.written_records
    try:
        shipper.write(cols)
    except (SpoolFull, OSError) as exc:  # OSError: the spool's disk failed or is full
        refused = n - (shipper.counters.written_records - before)
        counters.refused_records += refused
        counters.last_error = str(exc)
        log.error("%s; %d flow records not spooled", exc, refused)
    counters.flows += shipper.counters.written_records - before


def ship_capture_files(
    paths: Sequence[str | os.PathLike[str]],
    shipper: Shipper,
    params: FlowParams | None = None,
    wireshark_filter: str | None = None,
    counters: CaptureCounters | None = None,
) -> CaptureCounters:
    """Summarise capture files into flows with metadata and hand them to the shipper, one file at a time.

    Each file is its own capture: flows do not continue from one file into the next (so a file gives what
    ``read_flows`` gives). An unreadable file is logged and counted in ``bad_files``; the others go on.
    """
    c = counters if counters is not None else CaptureCounters()
    for path in paths:
        flows = PacketFlows(params)
        try:
            if wireshark_filter:
                recs = dissect_with_wireshark(path, wireshark_filter)
                c.dissected_records += len(recs)
                flows.add_dissected(recs)
            for cols in flows.feed(path):
                _ship(shipper, cols, c)
            last = flows.flush()
            if last is not None:
                _ship(shipper, last, c)
        except (CaptureFormatError, OSError) as exc:
            c.bad_files += 1
            c.last_error = str(exc)
            log.error("%s: %s", path, exc)
        else:
            c.files += 1
        c.packets += flows.packets
    return c


# --------------------------------------------------------------------------------------------------------------
# dumpcap's ring buffer


@dataclass(frozen=True, slots=True)
class RingParams:
    """The ring buffer dumpcap writes: disk used is about ``ring_files × ring_size_bytes`` at most."""

    ring_size_bytes: int = 64 << 20  # a file is complete at this size ...
    ring_files: int = 8  # ... and dumpcap keeps this many, deleting the oldest
    rotate_s: int = 30  # ... or complete after this long, so that a quiet link still ships
    capture_filter: str | None = None  # BPF, applied in the kernel
    snaplen: int | None = None  # bytes kept per packet (default: whole packets)
    buffer_mib: int | None = None  # kernel capture buffer (dumpcap's default: 2 MiB)

    def __post_init__(self) -> None:
        if self.ring_files < 2:
            # with one file dumpcap deletes each completed file as it starts the next: nothing to summarise
            raise ValueError(f"ring_files must be at least 2, got {self.ring_files}")
        if self.ring_size_bytes < 1000:
            raise ValueError(f"ring_size_bytes must be at least 1000, got {self.ring_size_bytes}")
        if self.rotate_s < 1:
            raise ValueError(f"rotate_s must be at least 1, got {self.rotate_s}")


class RingCapture:
    """dumpcap on one interface writing a ring buffer into ``directory``, as a subprocess.

    ``completed`` is a queue of the files dumpcap finished, in order, then ``None`` once dumpcap exited.
    """

    def __init__(self, interface: str, directory: str | os.PathLike[str], params: RingParams) -> None:
        self.interface = interface
        self.directory = Path(directory)
        self.params = params
        self.completed: queue.Queue[Path | None] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.captured = 0
        self.dropped = 0
        self.capturing = threading.Event()  # set once dumpcap reports that it captures
        self.proc: subprocess.Popen[str] | None = None
        self._threads: list[threading.Thread] = []

    def command(self) -> list[str]:
        """The dumpcap command line."""
        p = self.params
        cmd = [tool_path("dumpcap"), "-i", self.interface, "-q"]
        cmd += ["-b", f"filesize:{max(1, p.ring_size_bytes // 1000)}", "-b", f"files:{p.ring_files}"]
        cmd += ["-b", f"duration:{p.rotate_s}", "-b", "printname:stdout"]
        if p.capture_filter:
            cmd += ["-f", p.capture_filter]
        if p.snaplen:
            cmd += ["-s", str(p.snaplen)]
        if p.buffer_mib:
            cmd += ["-B", str(p.buffer_mib)]
        return [*cmd, "-w", str(self.directory / f"{RING_PREFIX}.pcapng")]

    def start(self) -> None:
        """Start dumpcap; its output is read by two small threads."""
        cmd = self.command()
        log.info("starting %s", " ".join(cmd))
        # Own session: a terminal's Ctrl-C reaches the collector, which stops dumpcap after its last file.
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._names, args=(self.proc.stdout,), name="dumpcap-out", daemon=True),
            threading.Thread(
                target=self._messages, args=(self.proc.stderr,), name="dumpcap-err", daemon=True
            ),
        ]
        for t in self._threads:
            t.start()

    def _names(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                name = line.strip()
                if name:
                    self.completed.put(Path(name))
        finally:
            self.completed.put(None)

    def _messages(self, stream: IO[str]) -> None:
        for line in stream:
            text = line.rstrip()
            m = _DROPS_RE.search(text)
            if m:
                self.captured += int(m.group(2))
                self.dropped += int(m.group(3))
            if text.startswith("Capturing on"):
                self.capturing.set()
            if text and not text.startswith("File: "):
                self.stderr_tail.append(text)
                log.debug("dumpcap: %s", text)

    @property
    def returncode(self) -> int | None:
        """dumpcap's exit code, None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def terminate(self) -> None:
        """Ask dumpcap to finish its current file and exit (SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate dumpcap and wait for it (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("dumpcap did not exit within %.0fs of SIGTERM; killing it", timeout)
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(5.0)


class InterfaceCollector:
    """Capture on one interface, summarise each completed ring file, ship the flows; ``run()``/``stop()``.

    Files a previous run left in ``ring_dir`` (a crash, a kill) are summarised first. ``ring_dir`` is
    locked for one collector process.
    """

    def __init__(
        self,
        shipper: Shipper,
        interface: str,
        ring_dir: str | os.PathLike[str],
        ring: RingParams | None = None,
        params: FlowParams | None = None,
        wireshark_filter: str | None = None,
        status_interval_s: float = 60.0,
    ) -> None:
        self.shipper = shipper
        self.interface = interface
        self.ring_dir = Path(ring_dir)
        self.ring_params = ring if ring is not None else RingParams()
        self.wireshark_filter = wireshark_filter
        self.status_interval_s = status_interval_s
        self.flows = PacketFlows(params)
        self.counters = CaptureCounters()
        self.ring = RingCapture(interface, self.ring_dir, self.ring_params)
        self._stop = threading.Event()
        self.ring_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # captures hold payloads
        self._lock_fd = os.open(self.ring_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise CaptureError(f"ring directory {self.ring_dir} is in use by another collector") from None

    def run(self) -> None:
        """Capture until ``stop()`` (or until dumpcap fails: ``CaptureError``); flows still open are shipped."""
        leftovers = sorted(
            self.ring_dir.glob(f"{RING_PREFIX}_*.pcapng"), key=lambda p: (p.stat().st_mtime, p)
        )
        if leftovers:
            log.warning("summarising %d ring files a previous run left in %s", len(leftovers), self.ring_dir)
        for path in leftovers:
            self._summarise(path)
        check_interface(self.interface)
        self.ring.start()
        terminated = False
        next_status = time.monotonic() + self.status_interval_s
        try:
            while True:
                if self._stop.is_set() and not terminated:
                    self.ring.terminate()  # dumpcap completes its file, names it, exits: we drain and end
                    terminated = True
                try:
                    done = self.ring.completed.get(timeout=0.5)
                except queue.Empty:
                    continue
                if done is None:  # dumpcap exited
                    break
                self._summarise(done)
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.status_interval_s
                    log.info("capture %s; shipper %s", asdict(self.counters), asdict(self.shipper.counters))
        finally:
            self.ring.stop()
            last = self.flows.flush()
            if last is not None:
                _ship(self.shipper, last, self.counters)
            self.counters.captured, self.counters.dropped = self.ring.captured, self.ring.dropped
            log.info("capture %s; shipper %s", asdict(self.counters), asdict(self.shipper.counters))
        rc = self.ring.returncode
        if not terminated and rc != 0:
            tail = " | ".join(self.ring.stderr_tail) or "no message"
            raise CaptureError(f"dumpcap on {self.interface!r} exited with code {rc}: {tail}")

    def _summarise(self, path: Path) -> None:
        c = self.counters
        try:
            if self.wireshark_filter:
                recs = dissect_with_wireshark(path, self.wireshark_filter)
                c.dissected_records += len(recs)
                self.flows.add_dissected(recs)
            before = self.flows.packets
            for cols in self.flows.feed(path):
                _ship(self.shipper, cols, c)
            c.packets += self.flows.packets - before
            c.files += 1
        except FileNotFoundError:
            c.lost_files += 1
            c.last_error = f"{path.name} deleted by the ring before it was summarised"
            log.error(
                "%s: dumpcap's ring deleted it before it was summarised; the collector is behind "
                "(more --ring-files gives it more time)",
                path,
            )
        except (CaptureFormatError, OSError, ValueError) as exc:
            c.bad_files += 1
            c.last_error = f"{path.name}: {exc}"
            log.error("%s: %s", path, exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def status(self) -> dict[str, Any]:
        """Capture and shipper counters and spool gauges, JSON-ready."""
        return {"capture": asdict(self.counters), **self.shipper.status()}

    def stop(self) -> None:
        """Ask ``run()`` to stop dumpcap, summarise its last file, ship and return."""
        self._stop.set()

    def close(self) -> None:
        """Release the ring directory (after ``run()`` returned)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
