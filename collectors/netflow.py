"""NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) export packets -> columnar flow records.

``NetflowDecoder`` keeps, per exporter key (exporter address, version, source id / observation domain), the
templates it has learned, sampling facts from options data, and data that arrived before its template. It turns
datagrams into the flow columns of the record contract (``pipeline/contract.py``), as numpy arrays:

    decoder = NetflowDecoder()
    result = decoder.feed(payload, exporter="192.0.2.1", received_at=time.time())
    result.columns["source.ip"], result.count, result.errors

``feed_many`` decodes a batch of datagrams at once: the records of every flowset that uses the same template
are joined and decoded by a single ``np.frombuffer``, which is where the speed comes from.

NetFlow is unidirectional, so ``destination.bytes``/``destination.packets`` are 0 unless the exporter sends
biflow counters (RFC 5103 reverse elements, Cisco NSEL responder counters). Counters are multiplied by the
sampling rate the exporter announced (v5 header, options data, or a per-record sampling interval).
Times are int64 epoch milliseconds; ``observer.ip`` is the exporter as the caller named it.
Only the standard library and numpy are imported: collector hosts do not install pandas.

Deliberate limits: a sampling rate from options data applies to the whole exporter key (its interface or
line-card scope is not matched) unless records name a sampler/selector id; records of templates without IP
addresses (layer-2 only, counters only) are not flows in the contract and are skipped; the v9 header count is
not checked, because exporters count records, flowsets or flow records only.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from taishi.collectors.netflow_columns import AddressText, ntp_to_ms, to_int64, uptime_delta_ms
from taishi.collectors.netflow_fields import (
    DESTINATION_OCTETS,
    DESTINATION_PACKETS,
    DESTINATION_PORT,
    END_FIELDS,
    SAMPLER_KEYS,
    SOURCE_OCTETS,
    SOURCE_PACKETS,
    SOURCE_PORT,
    START_FIELDS,
    TCP_FLAGS,
)
from taishi.collectors.netflow_templates import (
    ParsedTemplates,
    Template,
    parse_ipfix_templates,
    parse_v9_options_templates,
    parse_v9_templates,
    walk_variable_records,
)

__all__ = ["COLUMN_DTYPES", "DecodeResult", "NetflowDecoder", "PendingPolicy"]

PendingPolicy = Literal["drop_oldest", "drop_newest"]

# Columns every result carries (contract names; times are int64 epoch milliseconds).
COLUMN_DTYPES: Final[dict[str, np.dtype]] = {
    "@timestamp": np.dtype(np.int64),
    "event.end": np.dtype(np.int64),
    "source.ip": np.dtype(object),
    "source.port": np.dtype(np.int32),
    "destination.ip": np.dtype(object),
    "destination.port": np.dtype(np.int32),
    "network.iana_number": np.dtype(np.int16),
    "source.bytes": np.dtype(np.int64),
    "source.packets": np.dtype(np.int64),
    "destination.bytes": np.dtype(np.int64),
    "destination.packets": np.dtype(np.int64),
    "taishi.flow.tcp_flags": np.dtype(np.int16),
    "observer.ip": np.dtype(object),
}

_V5_HEADER = struct.Struct(">HHIIIIBBH")
_V5_RECORD_LENGTH = 48
_V5_MAX_RECORDS = 30  # Cisco's v5 format: at most 30 records per packet
_V5_RECORD = np.dtype(
    {
        "names": ["src4", "dst4", "packets", "octets", "first", "last", "sport", "dport", "flags", "proto"],
        "formats": [">u4", ">u4", ">u4", ">u4", ">u4", ">u4", ">u2", ">u2", "u1", "u1"],
        "offsets": [0, 4, 16, 20, 24, 28, 32, 34, 37, 38],
        "itemsize": _V5_RECORD_LENGTH,
    }
)
_V9_HEADER = struct.Struct(">HHIIII")
_IPFIX_HEADER = struct.Struct(">HHIII")
_SET_HEADER = struct.Struct(">HH")
_VERSION_NAMES: Final = {5: "NetFlow v5", 9: "NetFlow v9", 10: "IPFIX"}

MAX_TEMPLATES_PER_KEY: Final = 4096  # real exporters use tens; the bound keeps a template flood finite
ExporterKey = tuple[str, int, int]  # exporter address, version (9 or 10), source id / observation domain id


@dataclass(slots=True)
class DecodeResult:
    """Flow columns decoded from one call, how many records, what was rejected and what was dropped."""

    columns: dict[str, np.ndarray]
    count: int
    errors: list[str]
    dropped: int = 0  # data flowsets given up for lack of a template (buffer full or waited too long)


@dataclass(slots=True)
class _Header:
    """What a data record needs from the packet that carried it."""

    exporter: str
    export_ms: int
    uptime_ms: int  # NetFlow sysUptime; 0 for IPFIX, which has none


@dataclass(slots=True)
class _Pending:
    template_id: int
    body: bytes
    header: _Header
    received_at: float


@dataclass(slots=True)
class _ExporterState:
    version: int  # 9 or 10: how flowStart/EndSysUpTime are anchored
    templates: dict[int, Template] = field(default_factory=dict)
    pending: deque[_Pending] = field(default_factory=deque)
    default_rate: int = 1  # from options data without a sampler id
    sampler_rates: dict[int, int] = field(default_factory=dict)  # sampler / selector id -> rate
    system_init_ms: int = -1  # IPFIX systemInitTimeMilliseconds from options data; -1 unknown
    last_seen: float = 0.0


@dataclass(slots=True)
class _Group:
    """Flowsets of one template (or all v5 packets) collected in a batch, decoded together."""

    template: Template | None  # None: NetFlow v5
    version: int
    state: _ExporterState | None
    chunks: list[bytes | memoryview] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    export_ms: list[int] = field(default_factory=list)
    uptime_ms: list[int] = field(default_factory=list)
    rate: list[int] = field(default_factory=list)
    system_init_ms: list[int] = field(default_factory=list)
    exporters: list[str] = field(default_factory=list)
    order: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    groups: dict[int, _Group] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    dropped: int = 0
    next_order: int = 0


def _padding(buf: memoryview, start: int, end: int) -> bool:
    return not any(buf[start:end])


class NetflowDecoder:
    """Stateful NetFlow v5/v9/IPFIX decoder for one collector socket.

    ``template_timeout_s``: a template not refreshed for this long is forgotten (RFC 7011 asks UDP collectors
    to age templates out), and data waiting for a template is given up after the same time; None keeps them.
    ``max_pending_per_exporter``: data flowsets held per exporter key while their template is unknown.
    ``pending_policy``: when that buffer is full, drop the oldest held flowset or the newly arrived one.
    ``max_exporter_keys``: exporter keys tracked at once; when full, keys idle past the template timeout are
    forgotten, else packets from new keys are rejected. Each key holds at most ``MAX_TEMPLATES_PER_KEY``.
    """

    def __init__(
        self,
        template_timeout_s: float | None = 3600.0,
        max_pending_per_exporter: int = 256,
        pending_policy: PendingPolicy = "drop_oldest",
        max_exporter_keys: int = 4096,
        address_cache_bits: int = 16,
    ) -> None:
        if template_timeout_s is not None and template_timeout_s <= 0:
            raise ValueError(f"template_timeout_s {template_timeout_s} must be positive or None")
        if max_pending_per_exporter < 0:
            raise ValueError(f"max_pending_per_exporter {max_pending_per_exporter} must be >= 0")
        if max_exporter_keys < 1:
            raise ValueError(f"max_exporter_keys {max_exporter_keys} must be >= 1")
        if pending_policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"pending_policy {pending_policy!r}: expected 'drop_oldest' or 'drop_newest'")
        self.template_timeout_s = template_timeout_s
        self.max_pending_per_exporter = max_pending_per_exporter
        self.pending_policy: PendingPolicy = pending_policy
        self.max_exporter_keys = max_exporter_keys
        self._states: dict[ExporterKey, _ExporterState] = {}
        self._text = AddressText(address_cache_bits)
        self.dropped_total = 0

    # ---------------------------------------------------------------- public API

    def feed(self, datagram: bytes, exporter: str, received_at: float) -> DecodeResult:
        """Decode one datagram (it may hold several whole v5/IPFIX packets back to back, as capture files do)."""
        return self.feed_many(((datagram, exporter, received_at),))

    def feed_many(self, datagrams: Iterable[tuple[bytes, str, float]]) -> DecodeResult:
        """Decode a batch of ``(datagram, exporter, received_at)``; records come out in arrival order."""
        batch = _Batch()
        for datagram, exporter, received_at in datagrams:
            self._datagram(memoryview(datagram), exporter, received_at, batch)
        self.dropped_total += batch.dropped
        return self._finish(batch)

    def templates(self, exporter: str, version: int, domain: int) -> dict[int, Template]:
        """Templates currently known for an exporter key (read-only view for monitoring and tests)."""
        state = self._states.get((exporter, version, domain))
        return dict(state.templates) if state else {}

    def pending(self) -> int:
        """Data flowsets currently waiting for their template, over all exporters."""
        return sum(len(s.pending) for s in self._states.values())

    # ---------------------------------------------------------------- packet walking

    def _datagram(self, buf: memoryview, exporter: str, received_at: float, batch: _Batch) -> None:
        pos = 0
        end = len(buf)
        while pos < end:
            if end - pos < 4:
                if pos == 0 or not _padding(buf, pos, end):
                    batch.errors.append(
                        f"exporter {exporter}: {end - pos} bytes at offset {pos} are too short for a NetFlow header"
                    )
                return
            version, second = _SET_HEADER.unpack_from(buf, pos)
            if version == 5:
                length = 24 + _V5_RECORD_LENGTH * second
                if not self._v5(buf, pos, exporter, batch):
                    return
            elif version == 9:
                self._v9(buf, pos, exporter, received_at, batch)
                return  # a v9 header has no length: the packet runs to the end of the datagram
            elif version == 10:
                length = second
                if not self._ipfix(buf, pos, exporter, received_at, batch):
                    return
            else:
                if pos and _padding(buf, pos, end):
                    return
                batch.errors.append(
                    f"exporter {exporter}: packet at offset {pos} has version {version}; expected 5, 9 or 10 "
                    f"({end - pos} bytes rejected)"
                )
                return
            pos += length

    def _v5(self, buf: memoryview, base: int, exporter: str, batch: _Batch) -> bool:
        where = f"exporter {exporter}: NetFlow v5 packet at offset {base}"
        if len(buf) - base < _V5_HEADER.size:
            batch.errors.append(f"{where}: {len(buf) - base} bytes, shorter than the 24-byte header")
            return False
        _, count, uptime, secs, nsecs, _seq, _etype, _eid, sampling = _V5_HEADER.unpack_from(buf, base)
        if count > _V5_MAX_RECORDS:
            batch.errors.append(
                f"{where}: header count {count} exceeds the {_V5_MAX_RECORDS} records a v5 packet holds; "
                f"packet rejected ({len(buf) - base} bytes)"
            )
            return False
        start = base + _V5_HEADER.size
        need = count * _V5_RECORD_LENGTH
        if start + need > len(buf):
            batch.errors.append(
                f"{where}: header count {count} needs {24 + need} bytes but only {len(buf) - base} arrived "
                "(truncated); packet rejected"
            )
            return False
        if count:
            group = batch.groups.get(0)
            if group is None:
                group = batch.groups[0] = _Group(None, 5, None)
            interval = sampling & 0x3FFF  # top two bits: sampling mode
            group.chunks.append(buf[start : start + need])
            group.counts.append(count)
            group.export_ms.append(secs * 1000 + nsecs // 1_000_000)
            group.uptime_ms.append(uptime)
            group.rate.append(interval if interval > 1 else 1)
            group.system_init_ms.append(-1)
            group.exporters.append(exporter)
            group.order.append(batch.next_order)
            batch.next_order += 1
        return True

    def _v9(self, buf: memoryview, base: int, exporter: str, received_at: float, batch: _Batch) -> None:
        end = len(buf)
        where = f"exporter {exporter}: NetFlow v9 packet at offset {base}"
        if end - base < _V9_HEADER.size:
            batch.errors.append(f"{where}: {end - base} bytes, shorter than the 20-byte header; rejected")
            return
        _, _count, uptime, secs, _seq, source_id = _V9_HEADER.unpack_from(buf, base)
        # The header count is not checked: exporters disagree on what it counts (records or flowsets).
        key = (exporter, 9, source_id)
        header = _Header(exporter, secs * 1000, uptime)
        self._sets(
            buf,
            base + _V9_HEADER.size,
            end,
            key,
            header,
            received_at,
            batch,
            f"{where} (source id {source_id})",
        )

    def _ipfix(self, buf: memoryview, base: int, exporter: str, received_at: float, batch: _Batch) -> bool:
        where = f"exporter {exporter}: IPFIX message at offset {base}"
        available = len(buf) - base
        if available < _IPFIX_HEADER.size:
            batch.errors.append(f"{where}: {available} bytes, shorter than the 16-byte header; rejected")
            return False
        _, length, export_s, _seq, domain = _IPFIX_HEADER.unpack_from(buf, base)
        if length < _IPFIX_HEADER.size:
            batch.errors.append(
                f"{where}: header length {length} is shorter than the header itself; rejected"
            )
            return False
        if length > available:
            batch.errors.append(
                f"{where}: header length {length} but only {available} bytes arrived (truncated); rejected"
            )
            return False
        key = (exporter, 10, domain)
        header = _Header(exporter, export_s * 1000, 0)
        self._sets(
            buf,
            base + _IPFIX_HEADER.size,
            base + length,
            key,
            header,
            received_at,
            batch,
            f"{where} (domain {domain})",
        )
        return True

    def _sets(
        self,
        buf: memoryview,
        pos: int,
        end: int,
        key: ExporterKey,
        header: _Header,
        received_at: float,
        batch: _Batch,
        where: str,
    ) -> None:
        """Walk the flowsets (v9) / sets (IPFIX) of one packet; a broken one ends the walk, earlier ones stay."""
        state = self._state(key, received_at, batch, where)
        if state is None:
            return
        ipfix = key[1] == 10
        while pos < end:
            if end - pos < 4:
                if not _padding(buf, pos, end):
                    batch.errors.append(
                        f"{where}: {end - pos} stray bytes at offset {pos} after the last set"
                    )
                return
            set_id, length = _SET_HEADER.unpack_from(buf, pos)
            if length < 4:
                if set_id == 0 and length == 0 and _padding(buf, pos, end):
                    return  # zero fill after the last flowset (seen from Palo Alto and Cisco ACI)
                batch.errors.append(
                    f"{where}: set {set_id} at offset {pos} has length {length}, expected at least 4; "
                    f"rest of packet ({end - pos} bytes) rejected"
                )
                return
            if pos + length > end:
                batch.errors.append(
                    f"{where}: set {set_id} at offset {pos} declares {length} bytes but only {end - pos} remain "
                    "(truncated); this set and the rest of the packet rejected"
                )
                return
            body, stop = pos + 4, pos + length
            if set_id >= 256:
                self._data(state, set_id, buf, body, stop, header, received_at, batch, where)
            elif ipfix and set_id in (2, 3):
                parsed = parse_ipfix_templates(buf, body, stop, options=set_id == 3)
                self._learn(state, parsed, header, received_at, batch, where)
            elif not ipfix and set_id in (0, 1):
                parse = parse_v9_templates if set_id == 0 else parse_v9_options_templates
                self._learn(state, parse(buf, body, stop), header, received_at, batch, where)
            # Other ids below 256 are reserved; RFC 3954 and RFC 7011 ask collectors to skip them.
            pos = stop

    # ---------------------------------------------------------------- templates and pending data

    def _state(
        self, key: ExporterKey, received_at: float, batch: _Batch, where: str
    ) -> _ExporterState | None:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= self.max_exporter_keys and self.template_timeout_s is not None:
                idle = [
                    k for k, s in self._states.items() if received_at - s.last_seen > self.template_timeout_s
                ]
                for k in idle:
                    batch.dropped += len(self._states.pop(k).pending)
            if len(self._states) >= self.max_exporter_keys:
                batch.errors.append(
                    f"{where}: already tracking {len(self._states)} exporter keys (max_exporter_keys); "
                    "packet from a new key rejected"
                )
                return None
            state = self._states[key] = _ExporterState(key[1])
        state.last_seen = received_at
        return state

    def _expired(self, tpl: Template, received_at: float) -> bool:
        timeout = self.template_timeout_s
        return timeout is not None and received_at - tpl.learned_at > timeout

    def _learn(
        self,
        state: _ExporterState,
        parsed: ParsedTemplates,
        header: _Header,
        received_at: float,
        batch: _Batch,
        where: str,
    ) -> None:
        batch.errors.extend(f"{where}: {message}" for message in parsed.errors)
        for template_id in parsed.withdrawn:
            if template_id in (2, 3):  # withdraw every (options) template of this domain
                options = template_id == 3
                for tid in [t for t, tpl in state.templates.items() if tpl.options == options]:
                    del state.templates[tid]
            else:
                state.templates.pop(template_id, None)
        for spec in parsed.templates:
            known = state.templates.get(spec.template_id)
            if known is not None and known.spec == spec:
                known.learned_at = received_at  # a refresh: keep the compiled object (and batch grouping)
            elif known is None and len(state.templates) >= MAX_TEMPLATES_PER_KEY:
                batch.errors.append(
                    f"{where}: template {spec.template_id} not learned: the exporter key already has "
                    f"{MAX_TEMPLATES_PER_KEY} templates"
                )
                continue
            else:
                tpl = state.templates[spec.template_id] = Template.build(spec, received_at)
                batch.errors.extend(f"{where}: {note}" for note in tpl.notes)
            if state.pending and any(p.template_id == spec.template_id for p in state.pending):
                self._release(state, spec.template_id, received_at, batch, where)

    def _release(
        self, state: _ExporterState, template_id: int, received_at: float, batch: _Batch, where: str
    ) -> None:
        """Decode the held data flowsets of a template that just arrived, in the order they came."""
        waiting = [p for p in state.pending if p.template_id == template_id]
        state.pending = deque(p for p in state.pending if p.template_id != template_id)
        for item in waiting:
            if self._too_old(item, received_at):
                batch.dropped += 1
                continue
            body = memoryview(item.body)
            self._data(state, template_id, body, 0, len(body), item.header, received_at, batch, where)

    def _too_old(self, item: _Pending, received_at: float) -> bool:
        timeout = self.template_timeout_s
        return timeout is not None and received_at - item.received_at > timeout

    def _hold(
        self,
        state: _ExporterState,
        template_id: int,
        body: bytes,
        header: _Header,
        received_at: float,
        batch: _Batch,
    ) -> None:
        pending = state.pending
        while pending and self._too_old(pending[0], received_at):
            pending.popleft()
            batch.dropped += 1
        if len(pending) >= self.max_pending_per_exporter:
            batch.dropped += 1
            if self.pending_policy == "drop_newest" or not pending:
                return
            pending.popleft()
        pending.append(_Pending(template_id, body, header, received_at))

    # ---------------------------------------------------------------- data sets

    def _data(
        self,
        state: _ExporterState,
        template_id: int,
        buf: memoryview,
        start: int,
        end: int,
        header: _Header,
        received_at: float,
        batch: _Batch,
        where: str,
    ) -> None:
        tpl = state.templates.get(template_id)
        if tpl is not None and self._expired(tpl, received_at):
            del state.templates[template_id]
            tpl = None
        if tpl is None:
            self._hold(state, template_id, bytes(buf[start:end]), header, received_at, batch)
            return
        chunk: bytes | memoryview
        if tpl.record_length is None:
            chunk, count, problem = walk_variable_records(tpl, buf, start, end)
            if problem:
                batch.errors.append(f"{where}: {problem}; later records of the set rejected")
        elif tpl.record_length == 0:
            batch.errors.append(
                f"{where}: data set {template_id} at offset {start - 4} uses a template whose records have no "
                "length; set rejected"
            )
            return
        else:
            # Bytes after the last whole record are padding (shorter than a record, RFC 3954 / RFC 7011).
            count = (end - start) // tpl.record_length
            chunk = buf[start : start + count * tpl.record_length]
        if not count:
            return
        if tpl.options:
            self._options_data(state, tpl, chunk, count)
            return
        group = batch.groups.get(id(tpl))
        if group is None:
            group = batch.groups[id(tpl)] = _Group(tpl, state.version, state)
        group.chunks.append(chunk)
        group.counts.append(count)
        group.export_ms.append(header.export_ms)
        group.uptime_ms.append(header.uptime_ms)
        group.rate.append(state.default_rate)
        group.system_init_ms.append(state.system_init_ms)
        group.exporters.append(header.exporter)
        group.order.append(batch.next_order)
        batch.next_order += 1

    def _options_data(
        self, state: _ExporterState, tpl: Template, chunk: bytes | memoryview, count: int
    ) -> None:
        """Keep what options records say about sampling and the exporter's clock; they are not flows."""
        records = np.frombuffer(chunk, dtype=tpl.dtype, count=count)
        names = set(records.dtype.names or ())
        if "system_init_ms" in names:
            state.system_init_ms = int(records["system_init_ms"][-1])
        rates = _sampling_rates(records, names)
        if rates is None:
            return
        key = next((k for k in SAMPLER_KEYS if k in names), None)
        if key is None:
            state.default_rate = int(rates[-1])
        else:
            for sampler, rate in zip(to_int64(records[key]).tolist(), rates.tolist(), strict=True):
                state.sampler_rates[sampler] = rate

    # ---------------------------------------------------------------- columns

    def _finish(self, batch: _Batch) -> DecodeResult:
        parts: list[dict[str, np.ndarray]] = []
        orders: list[np.ndarray] = []
        for group in batch.groups.values():
            columns = self._v5_columns(group) if group.template is None else self._template_columns(group)
            if columns is None:
                continue
            parts.append(columns)
            orders.append(np.repeat(np.asarray(group.order, dtype=np.int64), group.counts))
        if not parts:
            empty = {name: np.empty(0, dtype=dtype) for name, dtype in COLUMN_DTYPES.items()}
            return DecodeResult(empty, 0, batch.errors, batch.dropped)
        if len(parts) == 1:
            columns = parts[0]
        else:
            order = np.argsort(np.concatenate(orders), kind="stable")
            columns = {name: np.concatenate([p[name] for p in parts])[order] for name in COLUMN_DTYPES}
        return DecodeResult(columns, len(columns["@timestamp"]), batch.errors, batch.dropped)

    def _context(self, group: _Group, values: list[int]) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=np.int64), group.counts)

    def _observer(self, group: _Group) -> np.ndarray:
        exporters = group.exporters
        if exporters.count(exporters[0]) == len(exporters):
            out = np.empty(sum(group.counts), dtype=object)
            out[:] = exporters[0]
            return out
        return np.repeat(np.array(exporters, dtype=object), group.counts)

    def _v5_columns(self, group: _Group) -> dict[str, np.ndarray]:
        total = sum(group.counts)
        data = b"".join(group.chunks) if len(group.chunks) > 1 else group.chunks[0]
        rec = np.frombuffer(data, dtype=_V5_RECORD, count=total)
        export_ms = self._context(group, group.export_ms)
        uptime = self._context(group, group.uptime_ms)
        octets = rec["octets"].astype(np.int64)
        packets = rec["packets"].astype(np.int64)
        if any(r != 1 for r in group.rate):
            rate = self._context(group, group.rate)
            octets *= rate
            packets *= rate
        zeros = np.zeros(total, dtype=np.int64)
        return {
            "@timestamp": export_ms - uptime_delta_ms(uptime, rec["first"].astype(np.int64)),
            "event.end": export_ms - uptime_delta_ms(uptime, rec["last"].astype(np.int64)),
            "source.ip": self._text.ipv4(rec["src4"]),
            "source.port": rec["sport"].astype(np.int32),
            "destination.ip": self._text.ipv4(rec["dst4"]),
            "destination.port": rec["dport"].astype(np.int32),
            "network.iana_number": rec["proto"].astype(np.int16),
            "source.bytes": octets,
            "source.packets": packets,
            "destination.bytes": zeros,
            "destination.packets": zeros.copy(),
            "taishi.flow.tcp_flags": rec["flags"].astype(np.int16),
            "observer.ip": self._observer(group),
        }

    def _template_columns(self, group: _Group) -> dict[str, np.ndarray] | None:
        tpl = group.template
        assert tpl is not None and group.state is not None
        names = set(tpl.dtype.names or ())
        if not ({"src4", "src6"} & names and {"dst4", "dst6"} & names):
            return None  # no IP addresses (layer-2 or counter-only templates): not a flow in the contract
        total = sum(group.counts)
        data = b"".join(group.chunks) if len(group.chunks) > 1 else group.chunks[0]
        rec = np.frombuffer(data, dtype=tpl.dtype, count=total)
        ipfix = group.version == 10
        export_ms = self._context(group, group.export_ms)
        start = self._time(rec, names, START_FIELDS, group, export_ms, ipfix)
        end = self._time(rec, names, END_FIELDS, group, export_ms, ipfix)
        if start is None:
            start = export_ms if end is None else end
        if end is None:
            end = start

        def first(candidates: tuple[str, ...], dtype: type) -> np.ndarray:
            name = next((n for n in candidates if n in names), None)
            if name is None:
                return np.zeros(total, dtype=dtype)
            return to_int64(rec[name]).astype(dtype, copy=False)

        octets = first(SOURCE_OCTETS, np.int64)
        packets = first(SOURCE_PACKETS, np.int64)
        rev_octets = first(DESTINATION_OCTETS, np.int64)
        rev_packets = first(DESTINATION_PACKETS, np.int64)
        rate = self._rates(rec, names, group)
        if rate is not None:
            octets *= rate
            packets *= rate
            rev_octets *= rate
            rev_packets *= rate
        flags = np.zeros(total, dtype=np.int16)
        for name in TCP_FLAGS:
            if name in names:
                flags |= to_int64(rec[name]).astype(np.int16)
        return {
            "@timestamp": start,
            "event.end": end,
            "source.ip": self._address(rec, names, "src4", "src6"),
            "source.port": first(SOURCE_PORT, np.int32),
            "destination.ip": self._address(rec, names, "dst4", "dst6"),
            "destination.port": first(DESTINATION_PORT, np.int32),
            "network.iana_number": first(("proto",), np.int16),
            "source.bytes": octets,
            "source.packets": packets,
            "destination.bytes": rev_octets,
            "destination.packets": rev_packets,
            "taishi.flow.tcp_flags": flags,
            "observer.ip": self._observer(group),
        }

    def _address(self, rec: np.ndarray, names: set[str], v4: str, v6: str) -> np.ndarray:
        if v4 in names and v6 in names:  # a template carrying both: whichever the record filled in
            ipv4 = rec[v4]
            return np.where(ipv4 != 0, self._text.ipv4(ipv4), self._text.ipv6(rec[v6]))
        if v4 in names:
            return self._text.ipv4(rec[v4])
        return self._text.ipv6(rec[v6])

    def _time(
        self,
        rec: np.ndarray,
        names: set[str],
        candidates: tuple[str, ...],
        group: _Group,
        export_ms: np.ndarray,
        ipfix: bool,
    ) -> np.ndarray | None:
        for name in candidates:
            if name not in names:
                continue
            values = rec[name]
            if name.endswith(("_us", "_ns")) and "delta" not in name:
                return ntp_to_ms(values)
            raw = to_int64(values)
            if name.endswith("_ms"):
                return raw
            if name.endswith("_s"):
                return raw * 1000
            if name.endswith("_delta_us"):
                return export_ms - raw // 1000
            # flowStart/EndSysUpTime: v9 counts from the header's sysUptime, IPFIX from systemInitTime.
            if not ipfix:
                return export_ms - uptime_delta_ms(self._context(group, group.uptime_ms), raw)
            init = to_int64(rec["system_init_ms"]) if "system_init_ms" in names else None
            if init is None:
                init = self._context(group, group.system_init_ms)
            return np.where(init >= 0, init + raw, export_ms)
        return None

    def _rates(self, rec: np.ndarray, names: set[str], group: _Group) -> np.ndarray | None:
        state = group.state
        assert state is not None
        per_record = "sampling_interval" in names
        sampler = next((k for k in SAMPLER_KEYS if k in names), None) if state.sampler_rates else None
        if not per_record and sampler is None and all(r == 1 for r in group.rate):
            return None
        rate = self._context(group, group.rate)
        if sampler is not None:
            ids = to_int64(rec[sampler])
            unique, inverse = np.unique(ids, return_inverse=True)
            known = np.array([state.sampler_rates.get(i, 0) for i in unique.tolist()], dtype=np.int64)
            mapped = known[inverse.ravel()]
            rate = np.where(mapped > 0, mapped, rate)
        if per_record:
            interval = to_int64(rec["sampling_interval"])
            rate = np.where(interval > 0, interval, rate)
        return rate


def _sampling_rates(records: np.ndarray, names: set[str]) -> np.ndarray | None:
    """1-in-N rate of each options record that describes sampling (None when none does)."""
    if "sampler_interval" in names:
        return np.maximum(to_int64(records["sampler_interval"]), 1)
    if "sampling_interval" in names:
        return np.maximum(to_int64(records["sampling_interval"]), 1)
    if "sampling_packet_interval" in names:
        selected = np.maximum(to_int64(records["sampling_packet_interval"]), 1)
        skipped = to_int64(records["sampling_packet_space"]) if "sampling_packet_space" in names else 0
        return (selected + skipped) // selected
    if "sampling_size" in names and "sampling_population" in names:
        size = np.maximum(to_int64(records["sampling_size"]), 1)
        return np.maximum(to_int64(records["sampling_population"]) // size, 1)
    if "sampling_probability" in names:
        probability = records["sampling_probability"].astype(np.float64)
        valid = (probability > 0) & (probability <= 1)
        return np.where(valid, np.rint(1 / np.where(valid, probability, 1)), 1).astype(np.int64)
    return None
