"""Beaconing: an internal host calling one outside destination at a steady rhythm with alike payloads.

ATT&CK T1071 Application Layer Protocol, T1573 Encrypted Channel when the channel is TLS (a TLS port or
a ClientHello SNI). Implants poll their command server every N seconds, usually with a random jitter and
with missed beats when the host sleeps or a flow is lost. Each (institution, host, destination, transport
and port) pair keeps a bounded memory of its recent connection times and sizes across windows; once it
holds enough connections over a long enough span, ``beacon_score`` rates it.

The score builds on RITA's (timing, size, histogram, duration, at least 4 connections) but its timing part
tolerates jitter and missed beats: it finds the dominant period as the one that puts the most intervals
within ±35% of one, two or three periods (a fold of the interval histogram), then rates the share of
intervals that fit it, shrunk toward what random arrivals reach by chance when there are few, and their
dispersion around the period. Timing alone cannot fire: a regular poll whose payloads vary (update checks,
monitoring) tops out at 60 — alike sizes are what make a beacon.

Well-known periodic services are exempt by transport/port (``exempt_services``; NTP, UDP 123, by default):
clients query their time servers on a fixed poll interval with identical packets, the perfect beacon. Other
known-good pollers belong on the alert allowlist, scoped and expiring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms

_TRANSPORTS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "sctp": 132}
_CHANCE_FIT = 0.4  # share of random (Poisson) intervals that fit their best period
_PRIOR_INTERVALS = 8  # pseudo-intervals at the chance level: few intervals prove little


class BeaconingParams(DetectorParams):
    """Tunables of the beaconing detector."""

    min_connections: int = Field(12, ge=4, description="connections (after merging bursts) before scoring")
    min_span_s: int = Field(1800, ge=60, description="time from first to last remembered connection")
    threshold: float = Field(70.0, ge=0, le=100, description="beacon score at which a pair fires")
    history: int = Field(
        256,
        ge=8,
        description="connections remembered per pair (times and sizes, ~4 KB); with min_span_s this sets "
        "the shortest period seen (256 over 30 min: ~7 s)",
    )
    merge_s: float = Field(
        1.0, ge=0, description="connections closer than this are one beat (a beacon may open several)"
    )
    tolerance: float = Field(
        0.35, gt=0, lt=0.5, description="an interval fits when within this share of a period of k periods"
    )
    max_multiple: int = Field(3, ge=1, le=8, description="missed beats bridged: intervals of up to k periods")
    full_span_s: int = Field(7200, ge=60, description="span that earns full persistence credit")
    per_port: bool = Field(True, description="key pairs by destination port and transport too")
    exempt_services: list[str] = Field(
        default_factory=lambda: ["udp/123"],
        description="'transport/port' entries never scored (NTP: a clock's poll is a perfect beacon)",
    )
    tls_ports: list[int] = Field(
        default_factory=lambda: [443, 465, 636, 853, 993, 995, 5061, 8443],
        description="ports whose beacons are T1573 Encrypted Channel (as are flows with a TLS SNI)",
    )
    realert_s: int = Field(3600, ge=60, description="a pair that fired is reported again at most this often")
    pair_ttl_s: int = Field(86_400, ge=600, description="a pair silent this long is forgotten")
    max_pairs: int = Field(
        100_000, ge=10, description="pairs remembered; one-off pairs are evicted before established ones"
    )


def beacon_score(
    timestamps_ms: Any,
    sizes: Any,
    *,
    merge_ms: float = 1000,
    tolerance: float = 0.35,
    max_multiple: int = 3,
    full_span_ms: float = 7_200_000,
) -> tuple[float, dict[str, float]]:
    """0..100 beacon score of one pair's connections, and its parts.

    ``score = 100 · timing · (0.4 + 0.4 · size + 0.2 · persistence)``, each part 0..1:
    timing — share of intervals fitting one to ``max_multiple`` periods of the dominant period (shrunk
    toward the ~40% random arrivals reach), mapped from 0.5..0.85 to 0..1, less up to 30% for dispersion
    around the period; size — 1 − (MAD / median of the beats' bytes) / 0.3; persistence — mean of the
    coverage (beats seen / beats expected over the span) and the span relative to ``full_span_ms``.
    Connections closer than ``merge_ms`` are one beat (sizes added). Fewer than 4 beats score 0.
    """
    ts = np.asarray(timestamps_ms, np.int64)
    sz = np.asarray(sizes, np.float64)
    if ts.shape != sz.shape:
        raise ValueError(f"timestamps_ms has {ts.shape} values but sizes has {sz.shape}")
    order = np.argsort(ts, kind="stable")
    ts, sz = ts[order], sz[order]
    if len(ts) == 0:
        return 0.0, {"events": 0}
    starts = np.flatnonzero(np.concatenate([[True], np.diff(ts) > merge_ms]))
    beats, beat_sz = ts[starts], np.add.reduceat(sz, starts)
    n = len(beats)
    if n < 4:
        return 0.0, {"events": n}
    d = np.diff(beats).astype(np.float64)

    # Dominant period: among candidate periods (the intervals themselves, or their quantiles when many),
    # the one most intervals fit, single beats counting double so a sub-multiple does not win.
    cand = np.unique(d) if len(d) <= 64 else np.unique(np.quantile(d, np.linspace(0, 1, 64)))
    ratio = d[None, :] / cand[::-1, None]  # longest candidates first: ties go to the longer period
    k = np.rint(ratio)
    near = np.abs(ratio - k) <= tolerance
    single = near & (k == 1)
    multi = near & (k >= 2) & (k <= max_multiple)
    best = int(np.argmax(2 * single.sum(1) + multi.sum(1)))
    on, mult = single[best] | multi[best], k[best]
    period = float(np.median(d[on] / mult[on]))
    mult2 = np.rint(d / period)  # refit on the refined period; keep whichever fits more intervals
    on2 = (np.abs(d / period - mult2) <= tolerance) & (mult2 >= 1) & (mult2 <= max_multiple)
    if on2.sum() >= on.sum():
        on, mult = on2, mult2
    fitted = int(on.sum())
    fit = (fitted + _CHANCE_FIT * _PRIOR_INTERVALS) / (len(d) + _PRIOR_INTERVALS)
    dispersion = float(np.median(np.abs(d[on] / mult[on] - period)) / period)
    timing = float(np.clip((fit - 0.5) / 0.35, 0, 1)) * (1 - 0.3 * min(1.0, dispersion / tolerance))

    med = float(np.median(beat_sz))
    mad = float(np.median(np.abs(beat_sz - med)))
    size_dispersion = mad / med if med > 0 else (0.0 if mad == 0 else 1.0)
    size = float(np.clip(1 - size_dispersion / 0.3, 0, 1))

    span = float(beats[-1] - beats[0])
    coverage = min(1.0, len(d) * period / span) if span > 0 else 0.0
    persistence = 0.5 * coverage + 0.5 * min(1.0, span / full_span_ms)
    score = 100 * timing * (0.4 + 0.4 * size + 0.2 * persistence)
    parts = {
        "events": n,
        "period_s": round(period / 1000, 1),
        "fit": round(fitted / len(d), 3),
        "dispersion": round(dispersion, 3),
        "timing": round(timing, 3),
        "median_bytes": round(med),
        "size_dispersion": round(size_dispersion, 3),
        "size": round(size, 3),
        "coverage": round(coverage, 3),
        "persistence": round(persistence, 3),
        "span_s": round(span / 1000),
    }
    return round(float(score), 1), parts


def service_codes(entries: list[str]) -> np.ndarray:
    """'udp/123'-style entries as ``transport * 65536 + port`` codes."""
    out = []
    for e in entries:
        proto, _, port = e.partition("/")
        num = _TRANSPORTS.get(proto.strip().lower())
        if num is None and proto.strip().isdigit():
            num = int(proto)
        if num is None or not port.strip().isdigit():
            raise ValueError(f"exempt service {e!r}: expected 'transport/port', e.g. 'udp/123'")
        out.append(num * 65536 + int(port))
    return np.asarray(out, np.int64)


class Beaconing(WindowedDetector):
    """Periodic connections from an internal host to one outside destination (C2 beaconing)."""

    id = "beaconing"
    name = "C2 beaconing"
    techniques = ("T1071", "T1573")
    Params = BeaconingParams
    params: BeaconingParams

    def __init__(self, params: BeaconingParams | None = None) -> None:
        super().__init__(params)
        self._exempt = service_codes(self.params.exempt_services)
        # "org|src|dst|proto/port" -> {"ts": times, "sz": bytes (both numpy, at most `history`), "tls",
        # "sensor", "name" (TLS SNI), "fired": end of the window it last fired in}
        self._pairs: dict[str, dict[str, Any]] = {}

    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        m = flows["taishi.source.internal"].to_numpy(bool) & ~flows["taishi.destination.internal"].to_numpy(
            bool
        )
        proto = flows["network.iana_number"].to_numpy().astype(np.int64)
        port = flows["destination.port"].to_numpy().astype(np.int64)
        if len(self._exempt):
            m &= ~np.isin(proto * 65536 + port, self._exempt)
        if not m.any():
            return flows.iloc[:0]
        # Group on integer codes; spell out a pair's key once per pair, not once per flow.
        cols = [column_codes(flows[c], m) for c in ("organization.id", "source.ip", "destination.ip")]
        service = proto[m] * 65536 + port[m] if self.params.per_port else np.zeros(int(m.sum()), np.int64)
        code = np.zeros(len(service), np.int64)
        for c, u in cols:
            code, _ = dense_ids(code * len(u) + c)  # re-densified each step: no overflow
        code, first = dense_ids(code * (1 << 24) + service)
        org, src, dst = (u[c[first]] for c, u in cols)
        svc = service[first]
        keys = np.array(
            [
                f"{o}|{s}|{d}|{v >> 16}/{v & 0xFFFF}" if self.params.per_port else f"{o}|{s}|{d}"
                for o, s, d, v in zip(org, src, dst, svc, strict=True)
            ],
            dtype=object,
        )
        sensor, sensors = column_codes(flows["observer.name"], m)
        server_name = np.full(len(code), "", dtype=object)
        if "tls.client.server_name" in flows.columns:
            name, names = column_codes(flows["tls.client.server_name"], m)
            server_name = names[name]
        named = server_name != ""
        return pd.DataFrame(
            {
                "key": pd.Series(keys[code], dtype=object, copy=False),
                "ts": epoch_ms(flows["@timestamp"])[m],
                "bytes": flows["network.bytes"].to_numpy()[m],
                "tls": np.isin(port[m], self.params.tls_ports) | named,
                "name": pd.Series(server_name, dtype=object, copy=False),
                "sensor": pd.Series(sensors[sensor], dtype=object, copy=False),
            }
        )

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        gid, _ = pd.factorize(frame["key"].to_numpy(dtype=object))
        ts_all = frame["ts"].to_numpy()
        order = np.lexsort((ts_all, gid))
        g = gid[order]
        ts, sz = ts_all[order], frame["bytes"].to_numpy()[order]
        starts = np.flatnonzero(np.diff(g, prepend=-1))
        ends = np.append(starts[1:], len(g))
        keys = frame["key"].to_numpy(dtype=object)[order[starts]]
        sensors = frame["sensor"].to_numpy(dtype=object)[order[starts]]
        tls = np.maximum.reduceat(frame["tls"].to_numpy(bool)[order], starts)
        names = frame["name"].to_numpy(dtype=object)[order]
        out: list[Finding] = []
        for i, key in enumerate(keys):
            a, b = int(starts[i]), int(ends[i])
            pair = self._remember(key, ts[a:b], sz[a:b])
            pair["sensor"] = sensors[i]
            if tls[i] and not pair["tls"]:
                pair["tls"] = True
                named = names[a:b][names[a:b] != ""]
                pair["name"] = str(named[0]) if len(named) else pair["name"]
            finding = self._judge(start_ms, end_ms, key, pair)
            if finding is not None:
                out.append(finding)
        self._forget(end_ms)
        return out

    def _remember(self, key: str, ts: np.ndarray, sz: np.ndarray) -> dict[str, Any]:
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = {
                "ts": ts.astype(np.int64),
                "sz": sz.astype(np.int64),
                "tls": False,
                "sensor": "",
                "name": "",
                "fired": 0,
            }
        else:
            t = np.concatenate([pair["ts"], ts])
            s = np.concatenate([pair["sz"], sz])
            if len(pair["ts"]) and len(ts) and ts[0] < pair["ts"][-1]:  # a window closed out of order
                o = np.argsort(t, kind="stable")
                t, s = t[o], s[o]
            pair["ts"], pair["sz"] = t, s
        h = self.params.history
        if len(pair["ts"]) > h:  # copies: a view would keep the whole window's array alive
            pair["ts"], pair["sz"] = pair["ts"][-h:].copy(), pair["sz"][-h:].copy()
        return pair

    def _judge(self, start_ms: int, end_ms: int, key: str, pair: dict[str, Any]) -> Finding | None:
        p = self.params
        ts: np.ndarray = pair["ts"]
        if len(ts) < p.min_connections or ts[-1] - ts[0] < p.min_span_s * 1000:
            return None
        if pair["fired"] and end_ms - pair["fired"] < p.realert_s * 1000:
            return None
        score, parts = beacon_score(
            ts,
            pair["sz"],
            merge_ms=p.merge_s * 1000,
            tolerance=p.tolerance,
            max_multiple=p.max_multiple,
            full_span_ms=p.full_span_s * 1000,
        )
        if parts["events"] < p.min_connections or score < p.threshold:
            return None
        pair["fired"] = end_ms
        org, src, dst, *service = key.split("|")
        evidence: dict[str, Any] = {
            "kind": "tls" if pair["tls"] else "periodic",
            "score": score,
            "connections": len(ts),
            "service": _service_name(service[0]) if service else "",
            "threshold": p.threshold,
            **parts,
        }
        if pair["name"]:
            evidence["server_name"] = pair["name"]
        return Finding(
            rule_id=self.id,
            org=org,
            entity_ip=src,
            window_start_ms=start_ms,
            window_end_ms=end_ms,
            score=score,
            evidence=evidence,
            technique="T1573" if pair["tls"] else "T1071",
            sensor=pair["sensor"],
            source_ip=src,
            destination_ip=dst,
            related_ips=[src, dst],
            first_seen_ms=int(ts[0]),
            last_seen_ms=int(ts[-1]),
        )

    def _forget(self, now_ms: int) -> None:
        """Drop pairs silent for the TTL, then the least established ones over ``max_pairs``."""
        p = self.params
        horizon = now_ms - p.pair_ttl_s * 1000
        for key in [k for k, v in self._pairs.items() if v["ts"][-1] < horizon]:
            del self._pairs[key]
        excess = len(self._pairs) - p.max_pairs
        if excess > 0:
            rank = sorted(
                self._pairs,
                key=lambda k: (len(self._pairs[k]["ts"]) >= p.min_connections, int(self._pairs[k]["ts"][-1])),
            )
            for key in rank[:excess]:
                del self._pairs[key]

    def snapshot(self) -> dict[str, Any]:
        return {
            "pairs": {
                k: {**v, "ts": [int(x) for x in v["ts"]], "sz": [int(x) for x in v["sz"]]}
                for k, v in self._pairs.items()
            }
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._pairs = {
            k: {
                "ts": np.asarray(v["ts"], np.int64),
                "sz": np.asarray(v["sz"], np.int64),
                "tls": bool(v["tls"]),
                "sensor": str(v["sensor"]),
                "name": str(v["name"]),
                "fired": int(v["fired"]),
            }
            for k, v in state.get("pairs", {}).items()
        }


def _service_name(code: str) -> str:
    """'6/443' -> 'tcp/443'."""
    proto, _, port = code.partition("/")
    names = {v: k for k, v in _TRANSPORTS.items()}
    return f"{names.get(int(proto), proto)}/{port}"


def column_codes(col: pd.Series, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the selected rows of a string column and its values ("" for missing ones)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()[m].astype(np.int64)
        values = np.asarray(col.cat.categories, dtype=object)
    else:
        codes, uniq = pd.factorize(col.to_numpy(dtype=object)[m])
        values = np.asarray(uniq, dtype=object)
    if len(codes) and codes.min() < 0:
        codes = np.where(codes < 0, len(values), codes)
    return codes, np.append(values, "")


def dense_ids(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense 0..k-1 ids of integer keys, and the first row of each."""
    ids, _ = pd.factorize(code)
    _, first = np.unique(ids, return_index=True)
    return ids.astype(np.int64), first
