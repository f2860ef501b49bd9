"""Injected command-and-control and exfiltration traffic, and the benign look-alikes of each.

Same conventions as ``attacks``: every injector returns ``(columns, label)`` with flow records in the
contract's columns (int64 epoch-ms timestamps) and the ground truth; deterministic by seed. Only what
the detectors need is generated, so scenarios can span hours and stay fast.
"""

from __future__ import annotations

import numpy as np

from taishi.pipeline.attacks import Label, flows, merge

_HOUR_MS = 3_600_000


def beacon(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    period_s: float = 60,
    jitter: float = 0.2,
    duration_s: int = 7200,
    dport: int = 443,
    server_name: str = "static-cdn-assets.example",
    missed: float = 0.0,
    seed: int = 31,
) -> tuple[dict[str, np.ndarray], Label]:
    """An implant polling its C2 every ``period_s`` ± ``jitter`` (uniform), small alike exchanges."""
    rng = np.random.default_rng(seed)
    n = int(duration_s / period_s) + 1
    gaps = period_s * 1000 * (1 + rng.uniform(-jitter, jitter, n))
    ts = start_ms + np.concatenate([[0.0], np.cumsum(gaps[:-1])]).astype(np.int64)
    ts = ts[rng.random(n) >= missed]
    k = len(ts)
    cols = flows(
        ts,
        org,
        src,
        dst,
        dport,
        sbytes=rng.integers(360, 420, k),
        dbytes=rng.integers(900, 1000, k),
        spackets=5,
        dpackets=4,
        duration_ms=rng.integers(150, 400, k),
        seed=seed,
        tls__client__server_name=server_name if dport == 443 else "",
    )
    return cols, Label("beaconing", org, src, int(ts[0]), int(ts[-1]), "tls" if dport == 443 else "periodic")


def ntp_sync(
    org: str, src: str, server: str, start_ms: int, poll_s: int = 64, duration_s: int = 7200, seed: int = 32
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a host polling an outside time server (UDP 123) on a fixed interval, identical packets."""
    rng = np.random.default_rng(seed)
    n = duration_s // poll_s + 1
    ts = start_ms + np.arange(n, dtype=np.int64) * poll_s * 1000 + rng.integers(0, 30, n)
    cols = flows(ts, org, src, server, 123, proto=17, sport=123, sbytes=76, dbytes=76, dpackets=1, seed=seed)
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "ntp")


def update_checks(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    period_s: int = 3600,
    jitter: float = 0.1,
    duration_s: int = 86_400,
    seed: int = 33,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: an OS asking its update CDN about every hour; manifests and downloads vary widely in size."""
    rng = np.random.default_rng(seed)
    n = int(duration_s / period_s) + 1
    offs = (np.arange(n) + rng.uniform(-jitter, jitter, n)) * period_s * 1000
    ts = start_ms + np.sort(offs - offs.min()).astype(np.int64)
    download = rng.random(n) < 0.3
    dbytes = np.where(download, rng.lognormal(np.log(40e6), 1.0, n), rng.lognormal(np.log(30e3), 1.2, n))
    cols = flows(
        ts,
        org,
        src,
        dst,
        443,
        sbytes=np.maximum(400, rng.lognormal(np.log(3000), 1.0, n)).astype(np.int64),
        dbytes=dbytes.astype(np.int64),
        spackets=12,
        dpackets=np.maximum(2, dbytes // 1400).astype(np.int64),
        seed=seed,
        tls__client__server_name="update.os-vendor.example",
    )
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "update checks")


def web_browsing(
    org: str,
    src: str,
    start_ms: int,
    sites: int = 12,
    duration_s: int = 7200,
    session_gap_s: float = 240,
    seed: int = 34,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a person browsing: sessions at random times, each a burst of connections to a favourite site."""
    rng = np.random.default_rng(seed)
    pool = np.array([f"198.51.100.{10 + i}" for i in range(sites)], dtype=object)
    parts = []
    t = float(start_ms)
    while True:
        t += rng.exponential(session_gap_s * 1000)
        if t > start_ms + duration_s * 1000:
            break
        m = int(rng.geometric(1 / 10))
        ts = (t + np.cumsum(rng.exponential(4000, m))).astype(np.int64)
        site = pool[(rng.zipf(1.5) - 1) % sites]
        parts.append(
            flows(
                ts,
                org,
                src,
                site,
                443,
                sbytes=np.maximum(300, rng.lognormal(np.log(1500), 1.0, m)).astype(np.int64),
                dbytes=np.maximum(0, rng.lognormal(np.log(40_000), 1.5, m)).astype(np.int64),
                spackets=8,
                dpackets=30,
                seed=int(rng.integers(1 << 30)),
            )
        )
        t = float(ts[-1])
    cols = merge(*parts)
    return cols, Label("", org, src, int(cols["@timestamp"][0]), int(cols["@timestamp"][-1]), "browsing")


def _routine(
    rng: np.random.Generator,
    org: str,
    src: str,
    start_ms: int,
    end_ms: int,
    per_window_bytes: float,
    window_s: int = 300,
    destinations: int = 3,
) -> dict[str, np.ndarray]:
    """A host's everyday uploads: a few flows per window to a few usual outside services."""
    pool = np.array([f"192.0.2.{20 + i}" for i in range(destinations)], dtype=object)
    per_window = 4
    n = max(1, int((end_ms - start_ms) / (window_s * 1000)) * per_window)
    ts = np.sort(rng.integers(start_ms, end_ms, n)).astype(np.int64)
    sbytes = (per_window_bytes / per_window * rng.lognormal(0, 0.3, n)).astype(np.int64)
    return flows(
        ts,
        org,
        src,
        pool[rng.integers(0, destinations, n)],
        443,
        sbytes=sbytes,
        dbytes=rng.integers(5_000, 60_000, n),
        spackets=np.maximum(1, sbytes // 1400),
        dpackets=20,
        seed=int(rng.integers(1 << 30)),
    )


def _upload(
    rng: np.random.Generator,
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    total_bytes: float,
    flows_n: int,
    span_s: float,
    dport: int = 443,
) -> dict[str, np.ndarray]:
    """A bulk transfer split into ``flows_n`` long connections over ``span_s`` seconds."""
    ts = start_ms + np.sort(rng.uniform(0, span_s * 1000, flows_n)).astype(np.int64)
    sbytes = (total_bytes / flows_n * rng.uniform(0.8, 1.2, flows_n)).astype(np.int64)
    return flows(
        ts,
        org,
        src,
        dst,
        dport,
        sbytes=sbytes,
        dbytes=sbytes // 40,
        spackets=sbytes // 1400,
        dpackets=sbytes // 2800,
        duration_ms=rng.integers(5_000, 20_000, flows_n),
        seed=int(rng.integers(1 << 30)),
    )


def exfiltration(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    history_s: int = 3000,
    usual_bytes: float = 1e6,
    volume_bytes: float = 2e9,
    seed: int = 35,
) -> tuple[dict[str, np.ndarray], Label]:
    """A host that uploads ~``usual_bytes`` per 5 minutes suddenly sends ``volume_bytes`` to a new address."""
    rng = np.random.default_rng(seed)
    burst = start_ms + history_s * 1000
    normal = _routine(rng, org, src, start_ms, burst + 600_000, usual_bytes)
    haul = _upload(rng, org, src, dst, burst + 10_000, volume_bytes, 20, 240)
    cols = merge(normal, haul)
    return cols, Label(
        "exfiltration", org, src, int(haul["@timestamp"][0]), int(haul["event.end"][-1]), "new"
    )


def exfiltration_over_c2(
    org: str,
    src: str,
    c2: str,
    start_ms: int,
    beacon_s: int = 3600,
    volume_bytes: float = 8e8,
    seed: int = 36,
) -> tuple[dict[str, np.ndarray], Label]:
    """An implant beacons to its C2 for ``beacon_s`` seconds, then pushes ``volume_bytes`` up the channel."""
    rng = np.random.default_rng(seed)
    polls, _ = beacon(org, src, c2, start_ms, duration_s=beacon_s + 900, seed=seed)
    haul = _upload(rng, org, src, c2, start_ms + beacon_s * 1000 + 20_000, volume_bytes, 8, 200)
    cols = merge(polls, haul)
    return cols, Label("exfiltration", org, src, int(haul["@timestamp"][0]), int(haul["event.end"][-1]), "c2")


def nightly_backup(
    org: str,
    src: str,
    dst: str,
    start_ms: int,
    hours: int = 24,
    incremental_bytes: float = 2e7,
    full_bytes: float = 3e9,
    full_hour_utc: int = 1,
    seed: int = 37,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: hourly incremental backups to the off-site store, and a full backup there every night."""
    rng = np.random.default_rng(seed)
    parts = []
    first_hour = start_ms // _HOUR_MS + 1
    label_ts = 0
    for h in range(first_hour, first_hour + hours):
        t = h * _HOUR_MS + int(rng.integers(60_000, 300_000))
        if h % 24 == full_hour_utc:
            parts.append(_upload(rng, org, src, dst, t, full_bytes, 30, 2400, dport=22))
            label_ts = label_ts or t
        else:
            parts.append(_upload(rng, org, src, dst, t, incremental_bytes * rng.uniform(0.5, 1.5), 2, 60, 22))
    cols = merge(*parts)
    return cols, Label(
        "", org, src, label_ts or int(cols["@timestamp"][0]), int(cols["event.end"][-1]), "backup"
    )


def distribution_server(
    org: str,
    src: str,
    start_ms: int,
    windows: int = 12,
    window_s: int = 300,
    per_window_bytes: float = 1.5e9,
    mirrors: int = 5,
    seed: int = 38,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a software-distribution server pushing packages to outside mirrors every window, and now and
    then to a mirror it never used before — gigabytes, but no more than it always sends."""
    rng = np.random.default_rng(seed)
    known = [f"203.0.113.{100 + i}" for i in range(mirrors)]
    parts = []
    for w in range(windows):
        t = start_ms + w * window_s * 1000 + 5_000
        total = per_window_bytes * rng.uniform(0.8, 1.2)
        if w >= 8 and w % 2 == 0:  # a new mirror takes a share of this window's pushes
            new = f"203.0.113.{200 + w}"
            parts.append(_upload(rng, org, src, new, t, total * 0.6, 6, window_s - 60))
            total *= 0.4
        for m in known:
            parts.append(_upload(rng, org, src, m, t, total / mirrors, 2, window_s - 60))
    cols = merge(*parts)
    return cols, Label("", org, src, int(cols["@timestamp"][0]), int(cols["event.end"][-1]), "distribution")
