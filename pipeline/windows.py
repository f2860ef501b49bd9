"""Per-entity behaviour windows on event time.

One ``EntityWindows`` per Kafka partition. Entities are internal hosts keyed by
(``organization.id``, ``observer.name``, ip): the message key (institution + sensor) pins a sensor's
records to one partition, so every window's records live in one partition and its document is a pure
function of them, whichever process owns the partition and however often it replays.

Lateness is decided per record, in offset order: a record is too late when its window closed before it
(window end + allowed lateness <= the watermark of the records before it). That makes the outcome
independent of how polls cut the stream into batches, so a replay from the committed offset with the
committed watermark rebuilds exactly the windows that were open.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from taishi.pipeline import contract
from taishi.pipeline.baselines import Baselines
from taishi.pipeline.codes import codes_of, union_codes

KEYS = ["organization.id", "observer.name", "ip", "wstart"]
SUMS = [
    "bytes_out",
    "bytes_in",
    "packets_out",
    "packets_in",
    "connections_out",
    "connections_in",
    "failed_connections_out",
    "failed_connections_in",
]
NO_WATERMARK = -(2**62)
_COMPACT_EVERY = 16
_TOP_PORTS = 5


@dataclass(slots=True)
class _Open:
    """Partial aggregates of one open window, compacted as they grow."""

    first_offset: int
    sums: list[pd.DataFrame] = field(default_factory=list)
    peers: list[pd.DataFrame] = field(default_factory=list)
    ports: list[pd.DataFrame] = field(default_factory=list)
    countries: list[pd.DataFrame] = field(default_factory=list)


@dataclass(slots=True)
class Doc:
    """A document bound for a store: concrete index, deterministic id, source."""

    index: str
    id: str
    source: dict[str, Any]


class EntityWindows:
    """Tumbling event-time windows of per-entity behaviour for one partition."""

    def __init__(
        self,
        size_s: int,
        allowed_lateness_s: int,
        watermark_ms: int = NO_WATERMARK,
        baselines: Baselines | None = None,
    ) -> None:
        if size_s <= 0 or allowed_lateness_s < 0:
            raise ValueError("window size must be > 0 and lateness >= 0")
        self.size_ms = size_s * 1000
        self.lateness_ms = allowed_lateness_s * 1000
        self.watermark_ms = watermark_ms
        self.late_records = 0
        self.baselines = baselines if baselines is not None else Baselines()
        self._open: dict[int, _Open] = {}
        self.closed: list[tuple[int, int]] = []  # (start, end) of windows closed since last taken

    @property
    def open_windows(self) -> int:
        return len(self._open)

    def add(self, df: pd.DataFrame, offsets: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        """Add an enriched batch (rows in offset order) whose rows came from the given offsets.

        Returns the admitted (not late) rows and each one's window start, for the detectors.
        """
        if len(df) == 0:
            return df, np.zeros(0, np.int64)
        ts = _epoch_ms(df["@timestamp"])
        running = np.maximum.accumulate(ts)
        wm_before = np.empty_like(ts)
        wm_before[0] = self.watermark_ms
        wm_before[1:] = np.maximum(running[:-1], self.watermark_ms)
        wstart = ts - ts % self.size_ms
        late = wstart + self.size_ms + self.lateness_ms <= wm_before
        self.late_records += int(late.sum())
        self.watermark_ms = max(self.watermark_ms, int(running[-1]))
        if late.all():
            return df.iloc[:0], wstart[:0]
        keep = ~late
        df, wstart, offsets = df[keep], wstart[keep], np.asarray(offsets)[keep]
        admitted = (df, wstart)
        # Every admitted window is tracked (and its first offset), entity rows or not: detectors use them.
        for w in np.unique(wstart):
            first = int(offsets[wstart == w].min())
            state = self._open.get(int(w))
            if state is None:
                self._open[int(w)] = _Open(first_offset=first)
            else:
                state.first_offset = min(state.first_offset, first)

        src_int = df["taishi.source.internal"].to_numpy(bool)
        dst_int = df["taishi.destination.internal"].to_numpy(bool)
        failed = (df["network.iana_number"].to_numpy() == 6) & (df["destination.bytes"].to_numpy() == 0)
        sb, db = df["source.bytes"].to_numpy(), df["destination.bytes"].to_numpy()
        sp, dp = df["source.packets"].to_numpy(), df["destination.packets"].to_numpy()
        one = np.ones(len(df), np.int64)
        zero = np.zeros(len(df), np.int64)
        # Group on integer codes; strings come back only for the (small) aggregated results.
        org, org_values = codes_of(df["organization.id"])
        sensor, sensor_values = codes_of(df["observer.name"])
        sip, dip, ip_values = union_codes(df["source.ip"], df["destination.ip"])
        if "destination.geo.country_iso_code" in df.columns:
            scountry, dcountry, country_values = union_codes(
                df["source.geo.country_iso_code"], df["destination.geo.country_iso_code"]
            )
        else:
            scountry = dcountry = np.zeros(len(df), np.int64)
            country_values = np.array([""], dtype=object)
        values = {
            "organization.id": org_values,
            "observer.name": sensor_values,
            "ip": ip_values,
            "peer": ip_values,
            "country": country_values,
        }
        dport = df["destination.port"].to_numpy()

        def side(
            m: np.ndarray,
            ip: np.ndarray,
            peer: np.ndarray,
            out_b: np.ndarray,
            in_b: np.ndarray,
            out_p: np.ndarray,
            in_p: np.ndarray,
            client: bool,
            peer_country: np.ndarray,
        ) -> pd.DataFrame:
            return pd.DataFrame(
                {
                    "organization.id": org[m],
                    "observer.name": sensor[m],
                    "ip": ip[m],
                    "wstart": wstart[m],
                    "bytes_out": out_b[m],
                    "bytes_in": in_b[m],
                    "packets_out": out_p[m],
                    "packets_in": in_p[m],
                    "connections_out": (one if client else zero)[m],
                    "connections_in": (zero if client else one)[m],
                    "failed_connections_out": (failed if client else zero)[m].astype(np.int64),
                    "failed_connections_in": (zero if client else failed)[m].astype(np.int64),
                    "peer": peer[m],
                    "port": dport[m],
                    "client": np.full(int(m.sum()), client),
                    "country": peer_country[m],
                    "offset": offsets[m],
                }
            )

        long = pd.concat(
            [
                side(src_int, sip, dip, sb, db, sp, dp, True, dcountry),
                side(dst_int, dip, sip, db, sb, dp, sp, False, scountry),
            ],
            ignore_index=True,
        )
        if long.empty:
            return admitted
        no_country = int(np.flatnonzero(country_values == "")[0]) if (country_values == "").any() else -2
        for w, part in long.groupby("wstart", sort=False):
            state = self._open[int(w)]
            sums = part.groupby(KEYS, sort=False)[SUMS].sum().reset_index()
            state.sums.append(_decode(sums, values).set_index(KEYS))
            state.peers.append(_decode(part[[*KEYS, "peer"]].drop_duplicates(), values))
            ports = part[part["client"]].groupby([*KEYS, "port"], sort=False).size().rename("n").reset_index()
            state.ports.append(_decode(ports, values))
            ext = part[(part["country"] != no_country) & (part["country"] >= 0)]
            state.countries.append(_decode(ext[[*KEYS, "country"]].drop_duplicates(), values))
            if len(state.sums) >= _COMPACT_EVERY:
                _compact(state)
        return admitted

    def close_ready(self) -> list[Doc]:
        """Documents of the windows the watermark has passed (window end + lateness)."""
        ready = sorted(w for w in self._open if w + self.size_ms + self.lateness_ms <= self.watermark_ms)
        return [doc for w in ready for doc in self._close(w)]

    def close_all(self) -> list[Doc]:
        """Move the watermark past every open window and close them (an idle source or the input's end).

        The advance is remembered (and committed): records for those windows arriving later are late,
        so a closed window is never rewritten with only part of its records.
        """
        if self._open:
            self.watermark_ms = max(self.watermark_ms, max(self._open) + self.size_ms + self.lateness_ms)
        return self.close_ready()

    def commit_offset(self, next_offset: int) -> int:
        """The offset to commit: never past the first record of a window still open."""
        firsts = [s.first_offset for s in self._open.values()]
        return min([next_offset, *firsts])

    def _close(self, w: int) -> list[Doc]:
        state = self._open.pop(w)
        self.closed.append((w, w + self.size_ms))
        if not state.sums:
            return []
        _compact(state)
        sums = state.sums[0]
        peers = state.peers[0].groupby(KEYS, sort=False).size().rename("distinct_peers")
        ports = state.ports[0]
        dports = ports.groupby(KEYS, sort=False).size().rename("distinct_dst_ports")
        top = (
            ports.sort_values(["n", "port"], ascending=[False, True])
            .groupby(KEYS, sort=False)["port"]
            .agg(lambda s: [int(p) for p in s.iloc[:_TOP_PORTS]])
            .rename("top_ports")
        )
        countries = (
            state.countries[0]
            .groupby(KEYS, sort=False)["country"]
            .agg(lambda s: sorted(s))
            .rename("countries")
        )
        table = sums.join(peers).join(dports).join(top).join(countries).reset_index().sort_values(KEYS[:3])
        return entity_docs(table, self.size_ms, self.baselines)


def entity_docs(table: pd.DataFrame, size_ms: int, baselines: Baselines) -> list[Doc]:
    """Build entity-window documents (see documents.EntityWindow) from a closed window's table."""
    docs = []
    table = table.rename(columns={"organization.id": "org", "observer.name": "sensor"})
    for row in table.itertuples(index=False):
        r = row._asdict()
        org, sensor, ip, w = r["org"], r["sensor"], r["ip"], int(r["wstart"])
        start = pd.Timestamp(w, unit="ms", tz="UTC")
        end = pd.Timestamp(w + size_ms, unit="ms", tz="UTC")
        beh: dict[str, Any] = {k: int(r[k]) for k in SUMS}
        beh["distinct_peers"] = int(r["distinct_peers"])
        beh["distinct_dst_ports"] = 0 if pd.isna(r["distinct_dst_ports"]) else int(r["distinct_dst_ports"])
        beh["top_ports"] = r["top_ports"] if isinstance(r["top_ports"], list) else []
        beh["countries"] = r["countries"] if isinstance(r["countries"], list) else []
        doc_id = hashlib.sha1(f"{org}|{sensor}|{ip}|{w}".encode()).hexdigest()[:32]
        baseline = baselines.apply(f"{org}|{sensor}|{ip}", w, beh)
        source = {
            "@timestamp": start.isoformat().replace("+00:00", "Z"),
            "event": {
                "kind": "metric",
                "category": ["network"],
                "type": ["info"],
                "dataset": "taishi.entity",
                "start": start.isoformat().replace("+00:00", "Z"),
                "end": end.isoformat().replace("+00:00", "Z"),
            },
            "organization": {"id": org},
            "observer": {"name": sensor},
            "host": {"ip": [ip]},
            "related": {"ip": [ip]},
            "taishi": {
                "entity": {"ip": ip, "id": f"{org}|{ip}"},
                "window": {"size_s": size_ms // 1000},
                "behaviour": beh,
                "baseline": baseline,
            },
        }
        docs.append(
            Doc(contract.index_name(contract.ENTITIES_INDEX, org, start.strftime("%Y.%m.%d")), doc_id, source)
        )
    return docs


def _compact(state: _Open) -> None:
    if len(state.sums) > 1:
        state.sums = [pd.concat(state.sums).groupby(level=list(range(len(KEYS))), sort=False).sum()]
        state.peers = [pd.concat(state.peers, ignore_index=True).drop_duplicates()]
        state.ports = [
            pd.concat(state.ports, ignore_index=True)
            .groupby([*KEYS, "port"], sort=False)["n"]
            .sum()
            .reset_index()
        ]
        state.countries = [pd.concat(state.countries, ignore_index=True).drop_duplicates()]


def _decode(frame: pd.DataFrame, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """Replace code columns by their strings (object columns, kept as is)."""
    frame = frame.copy()
    for name, vals in values.items():
        if name in frame.columns:
            frame[name] = _obj(vals[frame[name].to_numpy()], frame.index)
    return frame


def _obj(values: np.ndarray, index: pd.Index | None = None) -> pd.Series:
    """An object column as is (pandas would otherwise copy strings into an Arrow array)."""
    return pd.Series(values, index=index, dtype=object, copy=False)


def _epoch_ms(col: pd.Series) -> np.ndarray:
    v = col.to_numpy()
    if v.dtype.kind == "M":
        return v.astype("datetime64[ms]").astype(np.int64)
    return pd.to_datetime(col, utc=True).dt.tz_localize(None).to_numpy("datetime64[ms]").astype(np.int64)
