"""Injectors for the threat-intel and entity-behaviour detectors, with ground-truth labels.

Threat intel: an internal host reaching an address or domain (``indicator_contact``, ``indicator_lookups``)
and an outside address probing an internal host (``indicator_probe``); the scenario decides whether the
address is on the list, near it, weakly trusted or expired. Entity behaviour: hosts with a per-window
profile over hours (``steady_host``, ``host_fleet``, ``drifting_host``) and a host whose behaviour jumps on
several features at once (``behaviour_jump``). Deterministic by seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from taishi.pipeline.attacks import Label, flows, merge

WINDOW_S = 300
_EXTERNAL_PORTS = np.array([443, 443, 443, 80, 8443], np.int32)
_INTERNAL_PORTS = np.array(
    [445, 53, 389, 88, 135, 3389, 1433, 22, 5985, 139, 636, 3268, 8080, 5432], np.int32
)


# Threat intel --------------------------------------------------------------------------------------------
def indicator_contact(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    contacts: int = 30,
    interval_s: float = 60,
    port: int = 443,
    seed: int = 11,
) -> tuple[dict[str, np.ndarray], Label]:
    """An internal host calling one outside address at a steady pace (C2-like check-ins, answered)."""
    rng = np.random.default_rng(seed)
    ts = start_ms + (np.arange(contacts) * interval_s * 1000 + rng.uniform(0, 2000, contacts)).astype(
        np.int64
    )
    cols = flows(
        ts,
        org,
        src,
        dst,
        port,
        sbytes=rng.integers(300, 900, contacts),
        dbytes=rng.integers(200, 4000, contacts),
        spackets=4,
        dpackets=4,
        seed=seed,
    )
    return cols, Label("intel", org, src, int(ts[0]), int(ts[-1]), "outbound")


def indicator_lookups(
    org: str,
    src: str,
    names: list[str],
    start_ms: int,
    resolver: str = "10.0.0.53",
    lookups: int = 12,
    interval_s: float = 120,
    seed: int = 12,
) -> tuple[dict[str, np.ndarray], Label]:
    """An internal host asking its resolver for names (round robin over ``names``)."""
    rng = np.random.default_rng(seed)
    ts = start_ms + (np.arange(lookups) * interval_s * 1000 + rng.uniform(0, 1000, lookups)).astype(np.int64)
    qnames = np.array([names[i % len(names)] for i in range(lookups)], dtype=object)
    cols = flows(
        ts,
        org,
        src,
        resolver,
        53,
        proto=17,
        sbytes=rng.integers(60, 90, lookups),
        dbytes=rng.integers(90, 300, lookups),
        dpackets=1,
        seed=seed,
        dns__question__name=qnames,
        dns__question__type="A",
        dns__response_code="NOERROR",
    )
    return cols, Label("intel", org, src, int(ts[0]), int(ts[-1]), "outbound")


def indicator_probe(
    org: str, src: str, dst: str, start_ms: int, ports: int = 12, seed: int = 13
) -> tuple[dict[str, np.ndarray], Label]:
    """An outside address touching a few ports of an internal host (too few for a scan rule)."""
    rng = np.random.default_rng(seed)
    port = rng.choice(_INTERNAL_PORTS, ports, replace=False)
    ts = start_ms + np.sort(rng.uniform(0, 60_000, ports)).astype(np.int64)
    answered = np.isin(port, [22, 3389])
    cols = flows(
        ts,
        org,
        src,
        dst,
        port,
        dbytes=np.where(answered, 80, 0),
        dpackets=np.where(answered, 1, 0),
        seed=seed,
    )
    return cols, Label("intel", org, dst, int(ts[0]), int(ts[-1]), "inbound")


# Entity behaviour -----------------------------------------------------------------------------------------
def _profile(v: Any, windows: int) -> np.ndarray:
    """A per-window profile from a scalar (constant) or a [first, last] pair (linear ramp)."""
    a = np.asarray(v, np.float64)
    if a.ndim == 0:
        return np.full(windows, float(a))
    if a.shape == (2,):
        return np.linspace(a[0], a[1], windows)
    if a.shape != (windows,):
        raise ValueError(f"profile {v!r}: expected a number, [first, last] or {windows} values")
    return a


def _host_traffic(
    org: str,
    host: str,
    start_ms: int,
    windows: int,
    *,
    connections: Any = 40,
    external_share: Any = 0.7,
    external_peers: Any = 12,
    internal_peers: Any = 4,
    internal_ports: Any = 3,
    failed_ratio: Any = 0.02,
    bytes_out: Any = 1500,
    bytes_in: Any = 30_000,
    internal_subnet: str = "10.0.1",
    failing_pairs: int = 40,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Flows a host starts over ``windows`` windows, each window drawn from that window's profile values."""
    rng = np.random.default_rng(seed)
    conn = _profile(connections, windows)
    ext = _profile(external_share, windows)
    n_ext = np.maximum(1, _profile(external_peers, windows)).astype(np.int64)
    n_int = np.maximum(1, _profile(internal_peers, windows)).astype(np.int64)
    n_port = np.clip(_profile(internal_ports, windows), 1, len(_INTERNAL_PORTS)).astype(np.int64)
    fail = _profile(failed_ratio, windows)
    med_out, med_in = _profile(bytes_out, windows), _profile(bytes_in, windows)

    counts = rng.poisson(conn)
    w = np.repeat(np.arange(windows), counts)
    n = len(w)
    ts = start_ms + w * WINDOW_S * 1000 + rng.integers(0, WINDOW_S * 1000, n)
    ext_pool = np.array(
        [f"{a}.{b}.{c}.{d}" for a, b, c, d in rng.integers([20, 0, 0, 1], [220, 256, 256, 255], (400, 4))],
        dtype=object,
    )
    int_pool = np.array([f"{internal_subnet}.{i}" for i in range(10, 250)], dtype=object)
    to_ext = rng.random(n) < ext[w]
    failed = ~to_ext & (rng.random(n) < fail[w] / np.maximum(1e-9, 1 - ext[w]))
    int_idx = (rng.random(n) * n_int[w]).astype(np.int64)
    port_idx = (rng.random(n) * n_port[w]).astype(np.int64)
    # Failures keep to a few (peer, port) pairs, as repeated attempts at a handful of services do.
    pairs_peers = max(1, failing_pairs // 4)
    int_idx = np.where(failed, int_idx % pairs_peers, int_idx)
    port_idx = np.where(failed, port_idx % 4, port_idx)
    dst = np.where(to_ext, ext_pool[(rng.random(n) * n_ext[w]).astype(np.int64)], int_pool[int_idx])
    dport = np.where(
        to_ext, _EXTERNAL_PORTS[rng.integers(0, len(_EXTERNAL_PORTS), n)], _INTERNAL_PORTS[port_idx]
    )
    sbytes = np.maximum(40, med_out[w] * rng.lognormal(0, 0.8, n)).astype(np.int64)
    dbytes = np.where(failed, 0, np.maximum(40, med_in[w] * rng.lognormal(0, 0.8, n))).astype(np.int64)
    order = np.argsort(ts, kind="stable")
    return flows(
        ts[order],
        org,
        host,
        dst[order],
        dport[order].astype(np.int32),
        sbytes=sbytes[order],
        dbytes=dbytes[order],
        spackets=np.maximum(1, sbytes[order] // 1200),
        dpackets=np.where(failed[order], 0, np.maximum(1, dbytes[order] // 1200)),
        seed=seed,
    )


def steady_host(
    org: str, host: str, start_ms: int, windows: int = 48, connections: float = 60, seed: int = 31
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a workstation doing the same things every window (Poisson noise only)."""
    cols = _host_traffic(org, host, start_ms, windows, connections=connections, seed=seed)
    return cols, Label("", org, host, start_ms, start_ms + windows * WINDOW_S * 1000, "steady")


def host_fleet(
    org: str, subnet: str, start_ms: int, hosts: int = 24, windows: int = 48, seed: int = 30
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: ``hosts`` steady hosts ``<subnet>.10``… of different habits (the population the model learns)."""
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(hosts):
        parts.append(
            _host_traffic(
                org,
                f"{subnet}.{10 + i}",
                start_ms,
                windows,
                connections=float(rng.uniform(20, 60)),
                external_share=float(rng.uniform(0.3, 0.9)),
                external_peers=int(rng.integers(4, 30)),
                internal_peers=int(rng.integers(2, 8)),
                internal_ports=int(rng.integers(1, 5)),
                failed_ratio=float(rng.uniform(0.0, 0.05)),
                bytes_out=float(rng.uniform(500, 5000)),
                bytes_in=float(rng.uniform(5_000, 80_000)),
                seed=seed * 1000 + i,
            )
        )
    cols = merge(*parts)
    return cols, Label("", org, f"{subnet}.10", start_ms, start_ms + windows * WINDOW_S * 1000, "fleet")


def drifting_host(
    org: str, host: str, start_ms: int, windows: int = 48, growth: float = 4.0, seed: int = 32
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a host whose work grows gradually — ``growth``× connections, peers, ports and bytes over
    the span, more of it outside — as a new application rolls out over an afternoon."""
    cols = _host_traffic(
        org,
        host,
        start_ms,
        windows,
        connections=[40, 40 * growth],
        external_share=[0.5, 0.8],
        external_peers=[8, 8 * growth],
        internal_peers=[3, 3 * growth],
        internal_ports=[2, 2 * growth],
        failed_ratio=[0.01, 0.04],
        bytes_out=[1500, 1500 * growth],
        bytes_in=[20_000, 20_000 * growth],
        seed=seed,
    )
    return cols, Label("", org, host, start_ms, start_ms + windows * WINDOW_S * 1000, "drift")


def behaviour_jump(
    org: str,
    host: str,
    start_ms: int,
    windows: int = 48,
    jump_at: int = 34,
    jump_windows: int = 6,
    seed: int = 33,
) -> tuple[dict[str, np.ndarray], Label]:
    """A workstation that, from window ``jump_at`` for ``jump_windows`` windows, sweeps a neighbouring
    subnet on many service ports (many failing, below scan thresholds) and uploads far more than it used to.
    """

    def prof(calm: float, jump: float) -> np.ndarray:
        v = np.full(windows, calm)
        v[jump_at : jump_at + jump_windows] = jump
        return v

    cols = _host_traffic(
        org,
        host,
        start_ms,
        windows,
        connections=prof(60, 320),
        external_share=prof(0.7, 0.2),
        external_peers=prof(12, 14),
        internal_peers=prof(4, 45),
        internal_ports=prof(3, 12),
        failed_ratio=prof(0.02, 0.4),
        bytes_out=prof(1500, 12_000),
        bytes_in=prof(30_000, 20_000),
        internal_subnet="10.0.7",
        seed=seed,
    )
    first = start_ms + jump_at * WINDOW_S * 1000
    return cols, Label("ueba", org, host, first, first + jump_windows * WINDOW_S * 1000, "behaviour jump")
