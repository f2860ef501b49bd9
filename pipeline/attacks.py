"""Injected attacks (and benign look-alikes) for the simulator, with ground-truth labels.

Each injector returns ``(columns, label)``: flow records in the contract's columns (timestamps int64 epoch
ms) and what a detector should report — rule, institution, entity, time span. ``merge`` lays injected
records into background traffic in time order. Deterministic by seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taishi.pipeline.community_id import community_ids


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth: ``rule`` should fire about ``entity`` of ``org`` between ``start_ms`` and ``end_ms``.

    ``rule`` is empty for a benign look-alike, which must stay silent.
    """

    rule: str
    org: str
    entity: str
    start_ms: int
    end_ms: int
    kind: str = ""


def flows(
    ts: np.ndarray,
    org: str,
    src: Any,
    dst: Any,
    dport: Any,
    *,
    proto: int = 6,
    sport: Any = None,
    sbytes: Any = 60,
    dbytes: Any = 0,
    spackets: Any = 1,
    dpackets: Any = 0,
    sensor: str | None = None,
    duration_ms: Any = 1,
    seed: int = 0,
    **metadata: Any,
) -> dict[str, np.ndarray]:
    """Flow records from scalars or per-flow arrays (scalars are broadcast to ``len(ts)``)."""
    n = len(ts)
    rng = np.random.default_rng(seed)

    def arr(v: Any, dtype: Any) -> np.ndarray:
        a = np.asarray(v, dtype=dtype)
        return np.full(n, a.item() if a.ndim == 0 else a[0], dtype=dtype) if a.ndim == 0 else a

    ts = np.asarray(ts, np.int64)
    cols = {
        "@timestamp": ts,
        "event.end": ts + arr(duration_ms, np.int64),
        "event.dataset": np.full(n, "simulated", dtype=object),
        "organization.id": np.full(n, org, dtype=object),
        "observer.name": np.full(n, sensor or f"{org}-sensor-0", dtype=object),
        "source.ip": arr(src, object),
        "source.port": arr(sport, np.int32)
        if sport is not None
        else rng.integers(32768, 61000, n).astype(np.int32),
        "destination.ip": arr(dst, object),
        "destination.port": arr(dport, np.int32),
        "network.iana_number": np.full(n, proto, np.int16),
        "source.bytes": arr(sbytes, np.int64),
        "source.packets": arr(spackets, np.int64),
        "destination.bytes": arr(dbytes, np.int64),
        "destination.packets": arr(dpackets, np.int64),
        "taishi.flow.tcp_flags": np.full(n, 0x02 if proto == 6 else 0, np.int16),
    }
    for name, v in metadata.items():
        cols[name.replace("__", ".")] = arr(v, object)
    cols["network.community_id"] = community_ids(
        cols["source.ip"],
        cols["destination.ip"],
        cols["source.port"],
        cols["destination.port"],
        cols["network.iana_number"],
    )
    return cols


def merge(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate record sets (missing columns filled with empty values) and sort by time."""
    names: list[str] = []
    for p in parts:
        names.extend(k for k in p if k not in names)
    out: dict[str, np.ndarray] = {}
    for name in names:
        chunks = []
        for p in parts:
            n = len(p["@timestamp"])
            if name in p:
                chunks.append(np.asarray(p[name]))
            else:
                kind = next(np.asarray(q[name]).dtype for q in parts if name in q)
                chunks.append(np.full(n, "" if kind.kind == "O" else 0, dtype=kind))
        out[name] = np.concatenate(chunks)
    order = np.argsort(out["@timestamp"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def vertical_scan(
    org: str, src: str, dst: str, start_ms: int, ports: int = 1000, rate_per_s: float = 50, seed: int = 1
) -> tuple[dict[str, np.ndarray], Label]:
    """One source probing many TCP ports of one host; closed ports answer with nothing."""
    rng = np.random.default_rng(seed)
    ts = start_ms + np.sort(rng.uniform(0, ports / rate_per_s * 1000, ports)).astype(np.int64)
    port = rng.permutation(np.arange(1, 65536))[:ports]
    open_ = np.isin(port, [22, 80, 443, 445, 3389])
    cols = flows(
        ts, org, src, dst, port, dbytes=np.where(open_, 60, 0), dpackets=np.where(open_, 1, 0), seed=seed
    )
    return cols, Label("scan", org, src, int(ts[0]), int(ts[-1]), "vertical")


def horizontal_scan(
    org: str,
    src: str,
    subnet: str,
    port: int,
    start_ms: int,
    hosts: int = 254,
    rate_per_s: float = 20,
    seed: int = 2,
) -> tuple[dict[str, np.ndarray], Label]:
    """One source probing one port across a /24 (``subnet`` like ``10.9.8``)."""
    rng = np.random.default_rng(seed)
    ts = start_ms + np.sort(rng.uniform(0, hosts / rate_per_s * 1000, hosts)).astype(np.int64)
    dst = [f"{subnet}.{i}" for i in rng.permutation(np.arange(1, 255))[:hosts]]
    answered = rng.random(hosts) < 0.1
    cols = flows(
        ts,
        org,
        src,
        dst,
        port,
        dbytes=np.where(answered, 120, 0),
        dpackets=np.where(answered, 1, 0),
        seed=seed,
    )
    return cols, Label("scan", org, src, int(ts[0]), int(ts[-1]), "horizontal")


def slow_scan(
    org: str, src: str, subnet: str, start_ms: int, probes: int = 300, period_s: int = 4 * 3600, seed: int = 3
) -> tuple[dict[str, np.ndarray], Label]:
    """A few probes per window over hours: under every per-window threshold."""
    rng = np.random.default_rng(seed)
    ts = start_ms + np.sort(rng.uniform(0, period_s * 1000, probes)).astype(np.int64)
    dst = [f"{subnet}.{i}" for i in rng.integers(1, 255, probes)]
    port = rng.choice([21, 22, 23, 25, 80, 110, 139, 143, 443, 445, 1433, 3306, 3389, 5900, 8080], probes)
    cols = flows(ts, org, src, dst, port, seed=seed)
    return cols, Label("scan", org, src, int(ts[0]), int(ts[-1]), "slow")


def busy_client(
    org: str, src: str, dst: str, start_ms: int, flows_n: int = 2000, seed: int = 4
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: one client opening many connections to one web server (many source ports, one port)."""
    rng = np.random.default_rng(seed)
    ts = start_ms + np.sort(rng.uniform(0, 600_000, flows_n)).astype(np.int64)
    cols = flows(
        ts,
        org,
        src,
        dst,
        443,
        sbytes=rng.integers(500, 3000, flows_n),
        dbytes=rng.integers(2000, 90000, flows_n),
        spackets=5,
        dpackets=8,
        seed=seed,
    )
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "busy client")
