"""Network denial of service against an institution's host: floods far above its own baseline.

ATT&CK T1498.001 Direct Network Flood (SYN floods, unanswered floods) and T1498.002 Reflection
Amplification (large unsolicited responses from UDP services — DNS 53, NTP 123, SSDP 1900, memcached
11211, CLDAP 389 — toward one victim). A destination fires when the packets sent to it in a window are far
above its own remembered baseline (median + MAD of its recent windows, robust to one odd window) and
above an absolute floor, *and* the surge has the shape of an attack: mostly half-open TCP, mostly
unanswered, or mostly unsolicited amplified responses, from many sources. A flash crowd is a surge the
server answers with normal-sized exchanges, so it stays silent; a busy resolver's responses answer its own
queries. Sources are counted with a fixed-size hash sketch so a spoofed flood keeps the state small.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms
from taishi.detectors.base import group_reduce as _reduce
from taishi.detectors.base import rows_text as _text

_SKETCH = 4096  # buckets of the distinct-source sketch (linear counting)
_NORMAL, _QUERY = -1, -2  # bucket ids of the rows that are not suspicious, and of what a host sent itself
_KEYS = ("org", "dst", "bucket", "aport")
_SUMS = (
    "flows",
    "packets",
    "bytes",
    "replies",
    "ho_flows",
    "ho_packets",
    "un_flows",
    "un_packets",
    "amp_flows",
    "amp_bytes",
    "sent",
    "queries",
)


class DdosParams(DetectorParams):
    """Tunables of the denial-of-service detector."""

    min_pps: float = Field(
        100.0, gt=0, description="packets/s to the victim over the window (absolute floor)"
    )
    surge_ratio: float = Field(5.0, ge=1, description="window packets over the baseline median")
    surge_z: float = Field(6.0, ge=0, description="robust z (MADs above the median) of the window's packets")
    baseline_windows: int = Field(
        24, ge=3, description="recent windows of a destination kept for its baseline"
    )
    min_baseline_windows: int = Field(3, ge=1, description="windows needed before the baseline is used")
    min_share: float = Field(0.5, gt=0, le=1, description="share of the traffic with the attack's shape")
    min_sources: int = Field(50, ge=1, description="estimated distinct sources of a flood")
    max_reply_ratio: float = Field(
        0.1,
        ge=0,
        description="victim's one-way packets out per unanswered packet in, below which a flood is unanswered",
    )
    amp_ports: list[int] = Field(
        default_factory=lambda: [19, 53, 123, 161, 389, 1900, 11211],
        description="UDP source ports of reflection services (chargen, DNS, NTP, SNMP, CLDAP, SSDP, memcached)",
    )
    amp_min_packet_bytes: int = Field(250, ge=1, description="average response packet size of amplification")
    amp_ratio: float = Field(
        20.0, ge=1, description="response bytes over the victim's own query bytes to those ports"
    )
    min_reflectors: int = Field(10, ge=1, description="estimated distinct reflectors of an amplification")
    max_victims: int = Field(50_000, ge=10, description="destinations whose baselines are remembered")


def distinct_estimate(occupied: int, buckets: int = _SKETCH) -> float:
    """Linear-counting estimate of distinct items from the occupied buckets of a hash sketch."""
    if occupied <= 0:
        return 0.0
    empty = buckets - occupied
    if empty <= 0:
        return buckets * math.log(buckets)  # saturated: at least this many
    return buckets * math.log(buckets / empty)


def robust_baseline(values: list[int]) -> tuple[float, float]:
    """Median and MAD (scaled to a normal's standard deviation) of a destination's recent windows."""
    if not values:
        return 0.0, 0.0
    a = np.asarray(values, float)
    med = float(np.median(a))
    return med, 1.4826 * float(np.median(np.abs(a - med)))


def surge_threshold(median: float, mad: float, floor: float, ratio: float, z: float) -> float:
    """Packets a window needs to be a surge: above the floor, ``ratio`` x median and ``z`` MADs."""
    return max(floor, ratio * median, median + z * max(mad, 1.0))


def ddos_score(packets: float, threshold: float, share: float, sources: float, min_sources: int) -> float:
    """0..100: 60 at the threshold, +10 per doubling beyond it, scaled by the attack share and sources."""
    if threshold <= 0 or packets < threshold:
        return 0.0
    base = min(100.0, 60.0 + 10.0 * math.log2(packets / threshold))
    breadth = min(1.0, sources / max(1, 4 * min_sources))
    return round(base * (0.7 + 0.2 * min(1.0, share) + 0.1 * breadth), 1)


class Ddos(WindowedDetector):
    """SYN floods, unanswered floods and reflection amplification against one destination."""

    id = "ddos"
    name = "Denial of service"
    techniques = ("T1498", "T1498.001", "T1498.002")
    Params = DdosParams
    params: DdosParams

    def __init__(self, params: DdosParams | None = None) -> None:
        super().__init__(params)
        # "org|ip" -> packets received in its recent (not attacked) windows: [[window start, packets], ...]
        self._base: dict[str, list[list[int]]] = {}
        self._amp = np.array(sorted(self.params.amp_ports), np.int64)

    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        p = self.params
        dst_int = flows["taishi.destination.internal"].to_numpy(bool)
        src_int = flows["taishi.source.internal"].to_numpy(bool)
        proto = flows["network.iana_number"].to_numpy()
        dport = flows["destination.port"].to_numpy().astype(np.int64)
        # What internal hosts send on their own: one-way records (a server's answers when the exporter
        # records each direction apart) and queries to outside reflection services.
        query = src_int & ~dst_int & (proto == 17) & np.isin(dport, self._amp)
        own = src_int & ((flows["destination.packets"].to_numpy() == 0) | query)
        if not (dst_int.any() or own.any()):
            return flows.iloc[:0]
        cols: dict[str, list[np.ndarray]] = {c: [] for c in (*_KEYS, *_SUMS, "sensor", "ts")}
        ts_all = epoch_ms(flows["@timestamp"])
        if dst_int.any():
            rows = np.flatnonzero(dst_int)
            proto_f = proto[rows]
            sp = flows["source.packets"].to_numpy()[rows].astype(np.int64)
            sb = flows["source.bytes"].to_numpy()[rows].astype(np.int64)
            dp = flows["destination.packets"].to_numpy()[rows].astype(np.int64)
            db = flows["destination.bytes"].to_numpy()[rows].astype(np.int64)
            sport = flows["source.port"].to_numpy()[rows].astype(np.int64)
            half_open = (
                (proto_f == 6) & (sp <= 3) & (sb <= 80 * np.maximum(sp, 1)) & (dp <= 3) & (db <= 80 * dp)
            )
            unanswered = dp == 0
            amp = (
                (proto_f == 17)
                & np.isin(sport, self._amp)
                & (db == 0)
                & (sb >= p.amp_min_packet_bytes * np.maximum(sp, 1))
            )
            odd = half_open | unanswered | amp
            bucket = np.full(len(rows), _NORMAL, np.int64)
            if odd.any():
                src = _text(flows["source.ip"], rows[odd])
                bucket[odd] = (pd.util.hash_array(src) % np.uint64(_SKETCH)).astype(np.int64)
            values = {
                "org": _text(flows["organization.id"], rows),
                "dst": _text(flows["destination.ip"], rows),
                "bucket": bucket,
                "aport": np.where(amp, sport, 0),
                "flows": np.ones(len(rows), np.int64),
                "packets": sp,
                "bytes": sb,
                "replies": dp,
                "ho_flows": half_open.astype(np.int64),
                "ho_packets": np.where(half_open, sp, 0),
                "un_flows": unanswered.astype(np.int64),
                "un_packets": np.where(unanswered, sp, 0),
                "amp_flows": amp.astype(np.int64),
                "amp_bytes": np.where(amp, sb, 0),
                "sent": np.zeros(len(rows), np.int64),
                "queries": np.zeros(len(rows), np.int64),
                "sensor": _text(flows["observer.name"], rows),
                "ts": ts_all[rows],
            }
            for c, v in values.items():
                cols[c].append(v)
        if own.any():
            rows = np.flatnonzero(own)
            zero = np.zeros(len(rows), np.int64)
            values = dict.fromkeys(_SUMS, zero)
            values.update(
                {
                    "org": _text(flows["organization.id"], rows),
                    "dst": _text(flows["source.ip"], rows),  # keyed by the internal host that sent them
                    "bucket": np.full(len(rows), _QUERY, np.int64),
                    "aport": zero,
                    "sent": flows["source.packets"].to_numpy()[rows].astype(np.int64),
                    "queries": np.where(
                        query[rows], flows["source.bytes"].to_numpy()[rows].astype(np.int64), 0
                    ),
                    "sensor": _text(flows["observer.name"], rows),
                    "ts": ts_all[rows],
                }
            )
            for c, v in values.items():
                cols[c].append(v)
        joined = {c: np.concatenate(v) if len(v) > 1 else v[0] for c, v in cols.items()}
        return _reduce(
            {c: joined[c] for c in _KEYS},
            {c: joined[c] for c in _SUMS},
            {"sensor": joined["sensor"]},
            joined["ts"],
            joined["ts"],
        )

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        p = self.params
        g = _merge(frame, list(_KEYS))
        per = _merge(g, ["org", "dst"])
        per = per[per["flows"] > 0]
        floor = p.min_pps * (end_ms - start_ms) / 1000
        odd = g[g["bucket"] >= 0]
        sketch = {
            name: odd[odd[col] > 0].groupby(["org", "dst"], sort=False)["bucket"].nunique().to_dict()
            for name, col in (("ho", "ho_flows"), ("un", "un_flows"), ("amp", "amp_flows"))
        }
        amp_ports = (
            odd[odd["aport"] > 0].groupby(["org", "dst", "aport"], sort=True)["amp_bytes"].sum().to_dict()
        )
        out: list[Finding] = []
        for r in per.sort_values(["org", "dst"]).itertuples(index=False):
            org, dst = str(r.org), str(r.dst)
            key = f"{org}|{dst}"
            history = self._base.pop(key, [])
            values = [v for w, v in history if w != start_ms]
            base_n = len(values)
            med, mad = robust_baseline(values) if base_n >= p.min_baseline_windows else (0.0, 0.0)
            threshold = surge_threshold(med, mad, floor, p.surge_ratio, p.surge_z)
            finding = None
            if r.packets >= threshold:
                finding = self._shape(p, r, sketch, amp_ports, threshold, med, mad, base_n)
            # Attacked windows do not teach the baseline, except while there is none: a destination whose
            # ordinary load is attack-shaped becomes its own normal instead of firing forever.
            if finding is None or base_n < p.min_baseline_windows:
                history = [h for h in history if h[0] != start_ms][-(p.baseline_windows - 1) :]
                history.append([start_ms, int(r.packets)])
            self._base[key] = history
            if finding is None:
                continue
            kind, technique, share, sources, extra = finding
            evidence: dict[str, Any] = {
                "kind": kind,
                "packets": int(r.packets),
                "pps": round(r.packets / max(1e-9, (end_ms - start_ms) / 1000), 1),
                "flows": int(r.flows),
                "bytes": int(r.bytes),
                "threshold_packets": round(threshold, 1),
                "baseline_median": round(med, 1),
                "baseline_mad": round(mad, 1),
                "baseline_windows": base_n,
                "attack_share": round(share, 3),
                "sources_estimate": round(sources),
                "replies_per_packet": round((r.replies + r.sent) / max(1, r.packets), 3),
                **extra,
            }
            out.append(
                Finding(
                    rule_id=self.id,
                    org=org,
                    entity_ip=dst,
                    window_start_ms=start_ms,
                    window_end_ms=end_ms,
                    score=ddos_score(float(r.packets), threshold, share, sources, p.min_sources),
                    evidence=evidence,
                    technique=technique,
                    sensor=str(r.sensor),
                    destination_ip=dst,
                    related_ips=[dst],
                    first_seen_ms=int(r.first),
                    last_seen_ms=int(r.last),
                )
            )
        while len(self._base) > p.max_victims:
            del self._base[next(iter(self._base))]
        return out

    @staticmethod
    def _shape(
        p: DdosParams,
        r: Any,
        sketch: dict[str, dict[Any, int]],
        amp_ports: dict[Any, int],
        threshold: float,
        med: float,
        mad: float,
        base_n: int,
    ) -> tuple[str, str, float, float, dict[str, Any]] | None:
        """Which attack the surge looks like, or None for a surge the victim serves (a flash crowd)."""
        k = (r.org, r.dst)
        amp_share = r.amp_bytes / max(1, r.bytes)
        reflectors = distinct_estimate(sketch["amp"].get(k, 0))
        if (
            amp_share >= p.min_share
            and r.amp_bytes >= p.amp_ratio * r.queries
            and reflectors >= p.min_reflectors
        ):
            ports = {str(port): int(b) for (o, d, port), b in amp_ports.items() if (o, d) == k}
            return (
                "amplification",
                "T1498.002",
                amp_share,
                reflectors,
                {"amp_bytes": int(r.amp_bytes), "query_bytes": int(r.queries), "amp_bytes_by_port": ports},
            )
        ho_share = r.ho_packets / max(1, r.packets)
        sources = distinct_estimate(sketch["ho"].get(k, 0))
        if ho_share >= p.min_share and sources >= p.min_sources:
            return "syn_flood", "T1498.001", ho_share, sources, {"half_open_packets": int(r.ho_packets)}
        # Unanswered within the flow records, and not answered by one-way records of the victim either.
        un_share = r.un_packets / max(1, r.packets)
        reply_ratio = r.sent / max(1, r.un_packets)
        sources = distinct_estimate(sketch["un"].get(k, 0))
        if un_share >= p.min_share and reply_ratio <= p.max_reply_ratio and sources >= p.min_sources:
            return (
                "flood",
                "T1498.001",
                un_share,
                sources,
                {"unanswered_packets": int(r.un_packets), "reply_ratio": round(reply_ratio, 3)},
            )
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"baselines": self._base}

    def restore(self, state: dict[str, Any]) -> None:
        self._base = {k: [[int(w), int(v)] for w, v in h] for k, h in state.get("baselines", {}).items()}


def _merge(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Re-group partial aggregates on ``keys`` (a subset of theirs)."""
    return _reduce(
        {k: frame[k].to_numpy() for k in keys},
        {k: frame[k].to_numpy() for k in _SUMS},
        {"sensor": frame["sensor"].to_numpy()},
        frame["first"].to_numpy(),
        frame["last"].to_numpy(),
    )
