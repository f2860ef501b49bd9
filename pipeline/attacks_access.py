"""Injected access attacks and their look-alikes: brute force, lateral movement, denial of service.

Same shape as ``attacks.py``: each injector returns ``(columns, label)`` with flow records in the contract's
columns (timestamps int64 epoch ms) and the ground truth. Deterministic by seed. Sizes follow what the
protocols exchange: a failed SSH login is a key exchange and a refusal (a few KB, the same every time), an
RDP or SMB session carries hundreds of KB, a spoofed SYN is one or a few 60-byte packets.
"""

from __future__ import annotations

import numpy as np

from taishi.pipeline.attacks import Label, flows, merge

_WINDOW_S = 300  # the pipeline's default window: injectors that repeat "per window" use it
_ESTABLISHED, _CONTINUED = 0x1B, 0x18  # SYN|FIN|PSH|ACK for a whole connection, PSH|ACK for a later record


def _jitter(rng: np.random.Generator, centre: float, spread: float, n: int) -> np.ndarray:
    return np.maximum(1, centre * (1 + rng.uniform(-spread, spread, n))).astype(np.int64)


def _external(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random public unicast addresses for outside sources."""
    a = rng.choice([23, 31, 45, 62, 77, 89, 103, 141, 178, 185, 195, 203], n)
    return np.array(
        [f"{w}.{x}.{y}.{z}" for w, x, y, z in zip(a, *rng.integers(0, 256, (3, n)), strict=True)],
        dtype=object,
    )


def _times(rng: np.random.Generator, start_ms: int, n: int, span_s: float) -> np.ndarray:
    return start_ms + np.sort(rng.uniform(0, span_s * 1000, n)).astype(np.int64)


# Brute force -----------------------------------------------------------------------------------------------
def password_guessing(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    attempts: int = 300,
    rate_per_s: float = 0.5,
    port: int = 22,
    seed: int = 11,
) -> tuple[dict[str, np.ndarray], Label]:
    """One source trying passwords against one service: short connections of nearly one size."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, attempts, attempts / rate_per_s)
    cols = flows(
        ts,
        org,
        src,
        dst,
        port,
        sbytes=_jitter(rng, 2_300, 0.04, attempts),
        dbytes=_jitter(rng, 3_100, 0.04, attempts),
        spackets=14,
        dpackets=12,
        duration_ms=rng.integers(1_500, 4_000, attempts),
        seed=seed,
    )
    cols["taishi.flow.tcp_flags"][:] = _ESTABLISHED
    return cols, Label("brute_force", org, src, int(ts[0]), int(ts[-1]), "password_guessing")


def web_login_guessing(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    attempts: int = 200,
    rate_per_s: float = 1.0,
    port: int = 80,
    seed: int = 12,
) -> tuple[dict[str, np.ndarray], Label]:
    """One source posting credentials to a login page over plain HTTP (the sensor sees the URI)."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, attempts, attempts / rate_per_s)
    cols = flows(
        ts,
        org,
        src,
        dst,
        port,
        sbytes=_jitter(rng, 900, 0.05, attempts),
        dbytes=_jitter(rng, 1_400, 0.05, attempts),
        spackets=5,
        dpackets=4,
        duration_ms=rng.integers(50, 300, attempts),
        seed=seed,
        http__request__method="POST",
        url__domain="portal.example.test",
        url__original="/account/login",
    )
    cols["taishi.flow.tcp_flags"][:] = _ESTABLISHED
    return cols, Label("brute_force", org, src, int(ts[0]), int(ts[-1]), "password_guessing")


def distributed_guessing(
    org: str,
    dst: str,
    start_ms: int,
    sources: int = 60,
    attempts_per_source: int = 5,
    duration_s: int = 1200,
    port: int = 3389,
    seed: int = 13,
) -> tuple[dict[str, np.ndarray], Label]:
    """Many outside sources, a few failed RDP logins each, against one server: no single source stands out."""
    rng = np.random.default_rng(seed)
    n = sources * attempts_per_source
    src = np.repeat(_external(rng, sources), attempts_per_source)
    ts = start_ms + rng.uniform(0, duration_s * 1000, n).astype(np.int64)
    order = np.argsort(ts, kind="stable")
    cols = flows(
        ts[order],
        org,
        src[order],
        dst,
        port,
        sbytes=_jitter(rng, 4_200, 0.05, n),
        dbytes=_jitter(rng, 5_600, 0.05, n),
        spackets=16,
        dpackets=14,
        duration_ms=rng.integers(800, 2_500, n),
        seed=seed,
    )
    cols["taishi.flow.tcp_flags"][:] = _ESTABLISHED
    return cols, Label("brute_force", org, dst, int(ts.min()), int(ts.max()), "distributed")


def ssh_health_checks(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    duration_s: int = 7200,
    interval_s: float = 60,
    seed: int = 14,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a monitoring system opens port 22 every minute, reads the banner and leaves."""
    rng = np.random.default_rng(seed)
    n = int(duration_s // interval_s)
    ts = start_ms + (np.arange(n) * interval_s * 1000).astype(np.int64) + rng.integers(0, 500, n)
    cols = flows(
        ts, org, src, dst, 22, sbytes=320, dbytes=380, spackets=5, dpackets=4, duration_ms=40, seed=seed
    )
    cols["taishi.flow.tcp_flags"][:] = _ESTABLISHED
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "health checks")


def _long_connections(
    rng: np.random.Generator,
    org: str,
    src: str,
    dst: str,
    port: int,
    start_ms: int,
    connections: int,
    duration_s: int,
    record_s: int,
    bytes_out: float,
    bytes_in: float,
) -> dict[str, np.ndarray]:
    """Long-lived connections exported as one record per active timeout (NetFlow's way)."""
    records = duration_s // record_s
    conn = np.repeat(np.arange(connections), records)
    k = np.tile(np.arange(records), connections)
    ts = start_ms + k * record_s * 1000 + rng.integers(0, 1000, connections)[conn]
    sport = rng.integers(49152, 65000, connections).astype(np.int32)[conn]
    n = len(ts)
    order = np.argsort(ts, kind="stable")
    out = np.maximum(200, bytes_out * rng.lognormal(0, 0.8, n)).astype(np.int64)
    back = np.maximum(200, bytes_in * rng.lognormal(0, 0.8, n)).astype(np.int64)
    cols = flows(
        ts[order],
        org,
        src,
        dst,
        port,
        sport=sport[order],
        sbytes=out[order],
        dbytes=back[order],
        spackets=np.maximum(1, out[order] // 1000),
        dpackets=np.maximum(1, back[order] // 1000),
        duration_ms=record_s * 1000,
    )
    cols["taishi.flow.tcp_flags"][:] = np.where(k[order] == 0, _ESTABLISHED & ~0x01, _CONTINUED)
    return cols


def db_connection_pool(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    connections: int = 20,
    duration_s: int = 3600,
    port: int = 1433,
    seed: int = 15,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: an application server's pool of long database connections carrying queries and results."""
    rng = np.random.default_rng(seed)
    cols = _long_connections(rng, org, src, dst, port, start_ms, connections, duration_s, 60, 20_000, 150_000)
    ts = cols["@timestamp"]
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "connection pool")


def backup_smb_session(
    org: str, src: str, dst: str, start_ms: int, duration_s: int = 3600, seed: int = 16
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a backup job reading a file share for an hour over a few SMB connections."""
    rng = np.random.default_rng(seed)
    cols = _long_connections(rng, org, src, dst, 445, start_ms, 2, duration_s, 60, 200_000, 40_000_000)
    ts = cols["@timestamp"]
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "backup session")


# Lateral movement ------------------------------------------------------------------------------------------
def _sessions(
    rng: np.random.Generator,
    org: str,
    src: str,
    peers: np.ndarray,
    port: int | np.ndarray,
    ts: np.ndarray,
    sent: float,
    back: float,
) -> dict[str, np.ndarray]:
    n = len(ts)
    order = np.argsort(ts, kind="stable")
    sb = np.maximum(2_000, sent * rng.lognormal(0, 0.5, n)).astype(np.int64)
    db = np.maximum(2_000, back * rng.lognormal(0, 0.5, n)).astype(np.int64)
    ports = np.broadcast_to(np.asarray(port, np.int32), (n,))
    cols = flows(
        ts[order],
        org,
        src,
        peers[order],
        ports[order],
        sbytes=sb,
        dbytes=db,
        spackets=np.maximum(1, sb // 1200),
        dpackets=np.maximum(1, db // 1200),
        duration_ms=rng.integers(5_000, 600_000, n),
    )
    cols["taishi.flow.tcp_flags"][:] = _ESTABLISHED
    return cols


def jump_host(
    org: str,
    src: str,
    subnet: str,
    start_ms: int,
    hosts: int = 30,
    duration_s: int = 7200,
    per_window: int = 20,
    port: int = 3389,
    seed: int = 21,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: administrators' jump host opening RDP to the same servers, window after window."""
    rng = np.random.default_rng(seed)
    pool = np.array([f"{subnet}.{i}" for i in range(10, 10 + hosts)], dtype=object)
    windows = duration_s // _WINDOW_S
    ts = np.concatenate(
        [start_ms + w * _WINDOW_S * 1000 + rng.integers(0, 290_000, per_window) for w in range(windows)]
    )
    peers = np.concatenate([rng.choice(pool, per_window, replace=False) for _ in range(windows)])
    cols = _sessions(rng, org, src, peers, port, ts, 30_000, 400_000)
    return cols, Label("", org, src, int(ts.min()), int(ts.max()), "jump host")


def patch_server(
    org: str,
    src: str,
    prefix: str,
    start_ms: int,
    fleet: int = 2000,
    duration_s: int = 7200,
    per_window: int = 40,
    seed: int = 22,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: patch management pushing packages over SMB to a large fleet, always new hosts each window."""
    rng = np.random.default_rng(seed)
    pool = np.array([f"{prefix}.{i // 250}.{1 + i % 250}" for i in range(fleet)], dtype=object)
    windows = duration_s // _WINDOW_S
    idx = (np.arange(windows * per_window)) % fleet
    ts = np.concatenate(
        [start_ms + w * _WINDOW_S * 1000 + rng.integers(0, 290_000, per_window) for w in range(windows)]
    )
    cols = _sessions(rng, org, src, pool[idx], 445, ts, 6_000_000, 20_000)
    return cols, Label("", org, src, int(ts.min()), int(ts.max()), "patch server")


def lateral_fanout(
    org: str,
    src: str,
    subnet: str,
    start_ms: int,
    hosts: int = 25,
    port: int = 445,
    spread_s: int = 180,
    transfer_bytes: int = 2_500_000,
    seed: int = 23,
) -> tuple[dict[str, np.ndarray], Label]:
    """A workstation that never administered anything opens sessions to many hosts (and copies a tool)."""
    rng = np.random.default_rng(seed)
    peers = np.array([f"{subnet}.{i}" for i in rng.permutation(np.arange(2, 250))[:hosts]], dtype=object)
    ts = _times(rng, start_ms, hosts, spread_s)
    cols = _sessions(rng, org, src, peers, port, ts, max(transfer_bytes, 8_000), 12_000)
    kind = "tool_transfer" if transfer_bytes >= 1_000_000 else "remote_services"
    return cols, Label("lateral", org, src, int(ts[0]), int(ts[-1]), kind)


def admin_routine(
    org: str,
    src: str,
    peers: list[str],
    start_ms: int,
    duration_s: int = 7200,
    port: int = 3389,
    seed: int = 24,
) -> tuple[dict[str, np.ndarray], Label]:
    """A host's everyday admin sessions to a few servers (its remembered peers)."""
    rng = np.random.default_rng(seed)
    n = max(1, duration_s // 600) * len(peers)
    ts = _times(rng, start_ms, n, duration_s)
    cols = _sessions(
        rng, org, src, np.array(peers * (n // len(peers)), dtype=object), port, ts, 20_000, 300_000
    )
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "admin routine")


# Denial of service -----------------------------------------------------------------------------------------
def _web_clients(
    rng: np.random.Generator,
    org: str,
    dst: str,
    start_ms: int,
    duration_s: float,
    rate_per_s: float,
    port: int,
) -> dict[str, np.ndarray]:
    """Ordinary answered HTTPS exchanges from outside clients."""
    n = max(1, int(duration_s * rate_per_s))
    ts = _times(rng, start_ms, n, duration_s)
    sb = np.maximum(300, 1_500 * rng.lognormal(0, 0.8, n)).astype(np.int64)
    db = np.maximum(300, 40_000 * rng.lognormal(0, 1.0, n)).astype(np.int64)
    cols = flows(
        ts,
        org,
        _external(rng, n),
        dst,
        port,
        sbytes=sb,
        dbytes=db,
        spackets=np.maximum(3, sb // 500),
        dpackets=np.maximum(3, db // 1400),
        duration_ms=rng.integers(50, 5_000, n),
    )
    cols["taishi.flow.tcp_flags"][:] = _ESTABLISHED
    return cols


def syn_flood(
    org: str,
    dst: str,
    start_ms: int,
    port: int = 443,
    warmup_s: int = 1800,
    flood_s: int = 150,
    flows_n: int = 40_000,
    sources: int = 20_000,
    normal_rate_per_s: float = 3.0,
    seed: int = 31,
) -> tuple[dict[str, np.ndarray], Label]:
    """Normal web traffic to a server for ``warmup_s``, then spoofed SYNs from many sources, unanswered."""
    rng = np.random.default_rng(seed)
    normal = _web_clients(rng, org, dst, start_ms, warmup_s + flood_s, normal_rate_per_s, port)
    t0 = start_ms + warmup_s * 1000
    ts = _times(rng, t0, flows_n, flood_s)
    spk = rng.integers(1, 4, flows_n)
    answered = rng.random(flows_n) < 0.3  # the server's backlog overflows: most SYNs never get a SYN-ACK
    flood = flows(
        ts,
        org,
        _external(rng, sources)[rng.integers(0, sources, flows_n)],
        dst,
        port,
        sbytes=60 * spk,
        spackets=spk,
        dbytes=np.where(answered, 44, 0),
        dpackets=answered.astype(np.int64),
        duration_ms=rng.integers(0, 3_000, flows_n),
        seed=seed,
    )
    return merge(normal, flood), Label("ddos", org, dst, int(ts[0]), int(ts[-1]), "syn_flood")


def udp_amplification(
    org: str,
    victim: str,
    start_ms: int,
    reflectors: int = 300,
    flows_n: int = 20_000,
    flood_s: int = 150,
    ports: tuple[int, ...] = (53, 123),
    victim_ports: int = 8,
    seed: int = 32,
) -> tuple[dict[str, np.ndarray], Label]:
    """Large responses from many DNS/NTP reflectors to a victim that never asked (spoofed queries).

    The responses go to the few source ports the attacker wrote into its spoofed queries.
    """
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, flows_n, flood_s)
    pool = _external(rng, reflectors)
    spk = rng.integers(20, 80, flows_n)
    cols = flows(
        ts,
        org,
        pool[rng.integers(0, reflectors, flows_n)],
        victim,
        rng.integers(1024, 65535, victim_ports)[rng.integers(0, victim_ports, flows_n)],
        proto=17,
        sport=rng.choice(np.asarray(ports), flows_n),
        sbytes=spk * rng.integers(1_200, 1_480, flows_n),
        spackets=spk,
        dbytes=0,
        dpackets=0,
        duration_ms=rng.integers(1_000, 30_000, flows_n),
        seed=seed,
    )
    return cols, Label("ddos", org, victim, int(ts[0]), int(ts[-1]), "amplification")


def udp_flood(
    org: str,
    dst: str,
    start_ms: int,
    warmup_s: int = 1800,
    flood_s: int = 150,
    flows_n: int = 20_000,
    sources: int = 5_000,
    seed: int = 33,
) -> tuple[dict[str, np.ndarray], Label]:
    """Normal web traffic, then UDP junk to random ports from many sources that the server never answers."""
    rng = np.random.default_rng(seed)
    normal = _web_clients(rng, org, dst, start_ms, warmup_s + flood_s, 3.0, 443)
    ts = _times(rng, start_ms + warmup_s * 1000, flows_n, flood_s)
    spk = rng.integers(5, 40, flows_n)
    flood = flows(
        ts,
        org,
        _external(rng, sources)[rng.integers(0, sources, flows_n)],
        dst,
        rng.integers(1, 65535, flows_n),
        proto=17,
        sbytes=spk * 512,
        spackets=spk,
        duration_ms=rng.integers(100, 10_000, flows_n),
        seed=seed,
    )
    return merge(normal, flood), Label("ddos", org, dst, int(ts[0]), int(ts[-1]), "flood")


def flash_crowd(
    org: str,
    dst: str,
    start_ms: int,
    warmup_s: int = 1800,
    surge_s: int = 600,
    normal_rate_per_s: float = 3.0,
    surge_factor: float = 25.0,
    port: int = 443,
    seed: int = 34,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a web server's normal day, then a news-driven rush of real clients it keeps answering."""
    rng = np.random.default_rng(seed)
    normal = _web_clients(rng, org, dst, start_ms, warmup_s + surge_s, normal_rate_per_s, port)
    t0 = start_ms + warmup_s * 1000
    rush = _web_clients(rng, org, dst, t0, surge_s, normal_rate_per_s * surge_factor, port)
    ts = rush["@timestamp"]
    return merge(normal, rush), Label("", org, dst, int(ts[0]), int(ts[-1]), "flash crowd")


def busy_resolver(
    org: str,
    resolver: str,
    start_ms: int,
    duration_s: int = 1800,
    rate_per_s: float = 40.0,
    servers: int = 2000,
    seed: int = 35,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a recursive resolver querying many authoritative servers, exported one record per direction.

    Unidirectional export is the hard case: every answer arrives as its own record from port 53 with
    nothing sent back in it, exactly like a reflected response — except that the resolver asked.
    """
    rng = np.random.default_rng(seed)
    n = int(duration_s * rate_per_s)
    ts = _times(rng, start_ms, n, duration_s)
    pool = _external(rng, servers)
    server = pool[(rng.zipf(1.4, n) - 1) % servers]
    sport = rng.integers(1024, 65535, n).astype(np.int32)
    qbytes = rng.integers(60, 110, n)
    rbytes = np.where(rng.random(n) < 0.2, rng.integers(900, 1_500, n), rng.integers(120, 500, n))
    queries = flows(ts, org, resolver, server, 53, proto=17, sport=sport, sbytes=qbytes, seed=seed)
    answers = flows(
        ts + rng.integers(5, 80, n),
        org,
        server,
        resolver,
        sport,
        proto=17,
        sport=53,
        sbytes=rbytes,
        spackets=1,
        seed=seed + 1,
    )
    return merge(queries, answers), Label("", org, resolver, int(ts[0]), int(ts[-1]), "busy resolver")
