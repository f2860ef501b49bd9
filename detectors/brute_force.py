"""Password guessing: many short, small and alike logins from one source to one service, or from many.

ATT&CK T1110.001 Password Guessing (one source against one service) and T1110 Brute Force (the
distributed variant: many outside sources against one service). A flow is a login *attempt* when it goes
to an authentication service (SSH, RDP, SMB, FTP, Telnet, databases, LDAP — or an HTTP request whose URI
names a login page, when the sensor saw HTTP) and is short, small and a new connection: a failed login
is the same small exchange repeated, a real session carries data or lasts. Attempts are counted per
source and service over a sliding period held in bounded memory (Zeek's SSH rule: 30 failures in 30
minutes; FTP: 20 in 15 minutes), and fire only when the answered attempts are mostly of one size and the
source is really hammering (a monitoring system's banner check every minute stays under the rate).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms
from taishi.detectors.base import group_reduce as _reduce
from taishi.detectors.base import rows_text as _text

_SERVICES = {
    21: "ftp",
    22: "ssh",
    23: "telnet",
    389: "ldap",
    445: "smb",
    1433: "mssql",
    1521: "oracle",
    3306: "mysql",
    3389: "rdp",
    5432: "postgresql",
}
_BINS_PER_OCTAVE = 8  # size classes ~9% wide; two neighbouring ones span ~19%


class BruteForceParams(DetectorParams):
    """Tunables of the brute-force detector."""

    services: dict[int, str] = Field(
        default_factory=lambda: dict(_SERVICES), description="TCP ports of authentication services -> name"
    )
    web_login_pattern: str = Field(
        r"log_?in|sign_?in|log_?on", description="regex (case-insensitive) on url.original of a login page"
    )
    attempts: int = Field(30, ge=2, description="attempts from one source to one service within the period")
    port_attempts: dict[int, int] = Field(
        default_factory=lambda: {21: 20},
        description="per-port overrides of `attempts` (Zeek: FTP 20, counted here over the same period)",
    )
    period_s: int = Field(1800, ge=60, description="sliding period over which attempts add up")
    min_rate_per_min: float = Field(
        2.0, ge=0, description="attempts per minute in the current window (periodic health checks stay below)"
    )
    max_attempt_bytes: int = Field(
        20_000, ge=100, description="bytes both ways above which a flow is a session"
    )
    max_attempt_s: float = Field(30.0, gt=0, description="duration above which a flow is a session")
    min_answered_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of attempts the service answered (a dead service is not guessed at)",
    )
    min_similarity: float = Field(
        0.6, ge=0, le=1, description="share of answered attempts within one ~19%-wide size band"
    )
    distributed_attempts: int = Field(100, ge=2, description="attempts on one service from many sources")
    distributed_sources: int = Field(20, ge=2, description="distinct sources behind a distributed attack")
    distributed_external_only: bool = Field(
        True, description="count only outside sources (workstations all talk to their LDAP/SMB servers)"
    )
    max_keys: int = Field(50_000, ge=10, description="(source, service) and (service) keys remembered")
    max_sources_per_target: int = Field(1_000, ge=10, description="sources remembered per attacked service")
    remember_attempts: int = Field(2, ge=1, description="window attempts that put a key in memory")


def brute_force_score(attempts: int, threshold: int, similarity: float, answered_ratio: float) -> float:
    """0..100: 60 at the threshold, +10 per doubling beyond it, scaled by how alike and answered they were."""
    if attempts < threshold or threshold <= 0:
        return 0.0
    base = min(100.0, 60.0 + 10.0 * math.log2(attempts / threshold))
    return round(base * (0.7 + 0.2 * similarity + 0.1 * answered_ratio), 1)


def size_band_share(bins: np.ndarray, counts: np.ndarray) -> float:
    """Largest share of counts falling in two neighbouring size bins (``bins`` are integer bin ids)."""
    total = float(np.sum(counts))
    if total <= 0:
        return 0.0
    by_bin: dict[int, float] = {}
    for b, c in zip(bins.tolist(), counts.tolist(), strict=True):
        by_bin[b] = by_bin.get(b, 0.0) + c
    best = max(by_bin.get(b, 0.0) + by_bin.get(b + 1, 0.0) for b in by_bin)
    return best / total


def size_bin(total_bytes: np.ndarray) -> np.ndarray:
    """Logarithmic size class of flows (eighths of an octave)."""
    return np.floor(np.log2(np.maximum(total_bytes, 1)) * _BINS_PER_OCTAVE).astype(np.int64)


class BruteForce(WindowedDetector):
    """Password guessing against authentication services, by one source or by many."""

    id = "brute_force"
    name = "Brute force"
    techniques = ("T1110.001", "T1110")
    Params = BruteForceParams
    params: BruteForceParams

    def __init__(self, params: BruteForceParams | None = None) -> None:
        super().__init__(params)
        # "org|src|dst|port" -> {"w": [[window start, attempts, answered, alike], ...], "int": internal src}
        self._pairs: dict[str, dict[str, Any]] = {}
        # "org|dst|port" -> {"w": [[window start, attempts, answered, alike], ...], "src": {ip: last ms}}
        self._targets: dict[str, dict[str, Any]] = {}
        self._ports = np.array(sorted(self.params.services), np.int64)
        self._login = re.compile(self.params.web_login_pattern, re.IGNORECASE)

    # Per batch ------------------------------------------------------------------------------------------
    def _web_login(self, col: pd.Series) -> np.ndarray:
        """Rows whose url.original names a login page (evaluated once per distinct URI)."""
        if isinstance(col.dtype, pd.CategoricalDtype):
            codes = col.cat.codes.to_numpy()
            cats = np.asarray(col.cat.categories, dtype=object)
        else:
            codes, cats = pd.factorize(col.to_numpy(dtype=object))
        hit = np.array([isinstance(c, str) and bool(c) and bool(self._login.search(c)) for c in cats], bool)
        if not hit.any():
            return np.zeros(len(col), bool)
        return np.where(codes >= 0, hit[np.maximum(codes, 0)], False)

    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        p = self.params
        tcp = flows["network.iana_number"].to_numpy() == 6
        dport = flows["destination.port"].to_numpy().astype(np.int64)
        m = tcp & np.isin(dport, self._ports)
        web = np.zeros(len(flows), bool)
        if "url.original" in flows.columns:
            web = tcp & self._web_login(flows["url.original"])
            m |= web
        if not m.any():
            return flows.iloc[:0]
        sb = flows["source.bytes"].to_numpy()[m].astype(np.int64)
        db = flows["destination.bytes"].to_numpy()[m].astype(np.int64)
        ts_all = epoch_ms(flows["@timestamp"])
        ts = ts_all[m]
        dur = (
            epoch_ms(flows["event.end"])[m] - ts
            if "event.end" in flows.columns
            else np.zeros(len(ts), np.int64)
        )
        flags = (
            flows["taishi.flow.tcp_flags"].to_numpy()[m].astype(np.int64)
            if "taishi.flow.tcp_flags" in flows.columns
            else np.zeros(len(ts), np.int64)
        )
        continuation = (flags != 0) & ((flags & 0x02) == 0)  # a record of a connection opened earlier
        attempt = (sb + db <= p.max_attempt_bytes) & (dur <= p.max_attempt_s * 1000) & ~continuation
        if not attempt.any():
            return flows.iloc[:0]
        rows = np.flatnonzero(m)[attempt]  # the attempts, as row positions of the batch
        sb, db = sb[attempt], db[attempt]
        answered = db > 0
        return _reduce(
            {
                "org": _text(flows["organization.id"], rows),
                "src": _text(flows["source.ip"], rows),
                "dst": _text(flows["destination.ip"], rows),
                # Web-login attempts are keyed by the negated HTTP port, apart from other services on it.
                "port": np.where(web[rows], -1, 1) * dport[rows],
                "bin": np.where(answered, size_bin(sb + db), -1),
            },
            {"n": np.ones(len(rows), np.int64), "answered": answered.astype(np.int64)},
            {
                "sensor": _text(flows["observer.name"], rows),
                "internal": flows["taishi.source.internal"].to_numpy(bool)[rows],
            },
            ts_all[rows],
            ts_all[rows],
        )

    # Per window ----------------------------------------------------------------------------------------
    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        p = self.params
        g = _merge(frame, ["org", "src", "dst", "port", "bin"])
        minutes = max((end_ms - start_ms) / 60_000, 1e-9)
        horizon = end_ms - p.period_s * 1000
        per = _merge(g, ["org", "src", "dst", "port"])
        alike = _alike_counts(g, ["org", "src", "dst", "port"])
        per["alike"] = [
            alike.get(k, 0) for k in zip(per["org"], per["src"], per["dst"], per["port"], strict=True)
        ]
        # Only windows that look like guessing on their own enter the memory (keeps it small and relevant).
        per = per[
            (per["n"] >= p.remember_attempts)
            & (per["answered"] >= p.min_answered_ratio * per["n"])
            & (per["alike"] >= p.min_similarity * per["answered"])
        ]
        out: list[Finding] = []
        fired: set[tuple[str, str, str, int]] = set()
        for r in per.sort_values(["org", "src", "dst", "port"]).itertuples(index=False):
            org, src, dst, port = str(r.org), str(r.src), str(r.dst), int(r.port)
            key = f"{org}|{src}|{dst}|{port}"
            mem = self._remember(self._pairs, key)
            mem["int"] = bool(r.internal)
            windows = _slide(
                [*mem["w"], [start_ms, int(r.n), int(r.answered), int(r.alike)]],
                horizon,
                start_ms,
            )
            mem["w"] = windows
            attempts = sum(w[1] for w in windows)
            answered = sum(w[2] for w in windows)
            similar = sum(w[3] for w in windows)
            threshold = p.port_attempts.get(port, p.attempts)
            ratio = answered / max(1, attempts)
            similarity = similar / max(1, answered)
            if (
                attempts < threshold
                or r.n / minutes < p.min_rate_per_min
                or ratio < p.min_answered_ratio
                or similarity < p.min_similarity
            ):
                continue
            fired.add((org, src, dst, port))
            service = "web-login" if port < 0 else p.services.get(port, str(port))
            out.append(
                Finding(
                    rule_id=self.id,
                    org=org,
                    entity_ip=src,
                    window_start_ms=start_ms,
                    window_end_ms=end_ms,
                    score=brute_force_score(attempts, threshold, similarity, ratio),
                    evidence={
                        "kind": "password_guessing",
                        "service": service,
                        "target_host": dst,
                        "target_port": abs(port),
                        "attempts": attempts,
                        "attempts_window": int(r.n),
                        "threshold": threshold,
                        "period_s": p.period_s,
                        "answered_ratio": round(ratio, 3),
                        "size_similarity": round(similarity, 3),
                        "rate_per_min": round(r.n / minutes, 2),
                    },
                    technique="T1110.001",
                    sensor=str(r.sensor),
                    source_ip=src,
                    destination_ip=dst,
                    related_ips=[src, dst],
                    first_seen_ms=int(r.first),
                    last_seen_ms=int(r.last),
                )
            )
        self._bound(self._pairs)
        out.extend(self._distributed(start_ms, end_ms, g, fired))
        return out

    def _distributed(
        self, start_ms: int, end_ms: int, g: pd.DataFrame, fired: set[tuple[str, str, str, int]]
    ) -> list[Finding]:
        p = self.params
        g = g[g["port"] > 0]  # a morning rush of customers logging in is many sources, small and alike
        if p.distributed_external_only:
            g = g[~g["internal"].astype(bool)]
        if g.empty:
            return []
        horizon = end_ms - p.period_s * 1000
        alike = _alike_counts(g, ["org", "dst", "port"])
        per = (
            g.groupby(["org", "dst", "port"], sort=False)
            .agg(
                n=("n", "sum"),
                answered=("answered", "sum"),
                sources=("src", "nunique"),
                sensor=("sensor", "first"),
                first=("first", "min"),
                last=("last", "max"),
            )
            .reset_index()
        )
        per["alike"] = [alike.get(k, 0) for k in zip(per["org"], per["dst"], per["port"], strict=True)]
        per = per[
            (per["n"] >= p.remember_attempts)
            & (per["sources"] >= 2)
            & (per["answered"] >= p.min_answered_ratio * per["n"])
            & (per["alike"] >= p.min_similarity * per["answered"])
        ]
        if per.empty:
            return []
        cand = g.merge(per[["org", "dst", "port"]], on=["org", "dst", "port"])
        last_by_source: dict[tuple[str, str, int], list[tuple[str, int]]] = {}
        for (org, dst, port, src), last in (
            cand.groupby(["org", "dst", "port", "src"], sort=True)["last"].max().items()
        ):
            last_by_source.setdefault((str(org), str(dst), int(port)), []).append((str(src), int(last)))
        out: list[Finding] = []
        for r in per.sort_values(["org", "dst", "port"]).itertuples(index=False):
            org, dst, port = str(r.org), str(r.dst), int(r.port)
            key = f"{org}|{dst}|{port}"
            mem = self._remember(self._targets, key)
            seen: dict[str, int] = mem.setdefault("src", {})
            for s, last in last_by_source.get((org, dst, port), []):
                seen.pop(s, None)
                seen[s] = last
            for s in [s for s, t in seen.items() if t < horizon]:
                del seen[s]
            while len(seen) > p.max_sources_per_target:
                del seen[next(iter(seen))]
            windows = _slide(
                [*mem["w"], [start_ms, int(r.n), int(r.answered), int(r.alike)]],
                horizon,
                start_ms,
            )
            mem["w"] = windows
            attempts = sum(w[1] for w in windows)
            answered = sum(w[2] for w in windows)
            similarity = sum(w[3] for w in windows) / max(1, answered)
            ratio = answered / max(1, attempts)
            if (
                attempts < p.distributed_attempts
                or len(seen) < p.distributed_sources
                or ratio < p.min_answered_ratio
                or similarity < p.min_similarity
                or all((org, s, dst, port) in fired for s in seen)
            ):
                continue
            sample = sorted(seen)[:20]
            out.append(
                Finding(
                    rule_id=self.id,
                    org=org,
                    entity_ip=dst,
                    window_start_ms=start_ms,
                    window_end_ms=end_ms,
                    score=brute_force_score(attempts, p.distributed_attempts, similarity, ratio),
                    evidence={
                        "kind": "distributed",
                        "service": p.services.get(port, str(port)),
                        "target_port": port,
                        "attempts": attempts,
                        "sources": len(seen),
                        "threshold": p.distributed_attempts,
                        "period_s": p.period_s,
                        "answered_ratio": round(ratio, 3),
                        "size_similarity": round(similarity, 3),
                        "sample_sources": sample,
                    },
                    technique="T1110",
                    sensor=str(r.sensor),
                    destination_ip=dst,
                    related_ips=[dst, *sample[:10]],
                    first_seen_ms=int(r.first),
                    last_seen_ms=int(r.last),
                )
            )
        self._bound(self._targets)
        return out

    # Memory ----------------------------------------------------------------------------------------------
    def _remember(self, table: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
        """The key's memory, moved to the most recent end (dict order is the eviction order)."""
        mem = table.pop(key, None)
        if mem is None:
            mem = {"w": []}
        table[key] = mem
        return mem

    def _bound(self, table: dict[str, dict[str, Any]]) -> None:
        while len(table) > self.params.max_keys:
            del table[next(iter(table))]

    def snapshot(self) -> dict[str, Any]:
        return {"pairs": self._pairs, "targets": self._targets}

    def restore(self, state: dict[str, Any]) -> None:
        self._pairs = {
            k: {"w": [[int(x) for x in w] for w in v["w"]], "int": bool(v.get("int"))}
            for k, v in state.get("pairs", {}).items()
        }
        self._targets = {
            k: {
                "w": [[int(x) for x in w] for w in v["w"]],
                "src": {s: int(t) for s, t in v.get("src", {}).items()},
            }
            for k, v in state.get("targets", {}).items()
        }


def _slide(windows: list[list[int]], horizon_ms: int, current: int) -> list[list[int]]:
    """Windows inside the period, one entry per window start (a re-closed window replaces its entry)."""
    by_start: dict[int, list[int]] = {}
    for w in windows:
        if w[0] >= horizon_ms or w[0] == current:
            by_start[int(w[0])] = [int(x) for x in w]
    return [by_start[s] for s in sorted(by_start)]


def _alike_counts(g: pd.DataFrame, key: list[str]) -> dict[tuple[Any, ...], int]:
    """Answered attempts in each key's most common two-bin size band."""
    answered = g[g["bin"] >= 0]
    if answered.empty:
        return {}
    per_bin = answered.groupby([*key, "bin"], sort=False)["answered"].sum().reset_index()
    nxt = per_bin.copy()
    nxt["bin"] = nxt["bin"] - 1  # count each bin also in the band starting one below it
    band = pd.concat([per_bin, nxt], ignore_index=True).groupby([*key, "bin"], sort=False)["answered"].sum()
    best = band.groupby(level=list(range(len(key))), sort=False).max()
    return {(k if isinstance(k, tuple) else (k,)): int(v) for k, v in best.items()}


def _merge(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Re-group partial aggregates on ``keys`` (a subset of theirs)."""
    return _reduce(
        {k: frame[k].to_numpy() for k in keys},
        {k: frame[k].to_numpy() for k in ("n", "answered")},
        {k: frame[k].to_numpy() for k in ("sensor", "internal")},
        frame["first"].to_numpy(),
        frame["last"].to_numpy(),
    )
