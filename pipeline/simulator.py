"""A deterministic traffic simulator for a sector of institutions (background traffic only).

Generates flow records columnar (numpy) for the demo, the tests and the benchmarks: several institutions
reusing the same RFC1918 space, a few sensors each, clients talking to web, DNS, mail and database
services, heavy-tailed sizes, more traffic in office hours. Same seed, same records. DNS flows carry
query names drawn (popular ones more often) from a bundled sample of popular benign names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from taishi.pipeline.community_id import community_ids

# (destination port, transport, share, internal service?, median bytes out, median bytes in)
_SERVICES = [
    (443, 6, 0.45, False, 1_500, 40_000),
    (80, 6, 0.10, False, 600, 12_000),
    (53, 17, 0.20, True, 70, 140),
    (25, 6, 0.03, False, 20_000, 800),
    (1433, 6, 0.07, True, 2_000, 60_000),
    (445, 6, 0.05, True, 5_000, 200_000),
    (123, 17, 0.02, False, 90, 90),
    (22, 6, 0.03, True, 4_000, 5_000),
    (3389, 6, 0.05, True, 30_000, 400_000),
]


@dataclass(frozen=True, slots=True)
class SectorSpec:
    """Shape of the simulated sector."""

    institutions: int = 5
    hosts_per_institution: int = 40
    sensors_per_institution: int = 2
    flows: int = 100_000
    start_ms: int = 1_795_000_000_000  # 2026-11-18T07:06:40Z: a weekday morning
    duration_s: int = 1800
    seed: int = 7


def institution_ids(n: int) -> list[str]:
    """Stable institution ids: bank-a, bank-b, ..."""
    names = []
    for i in range(n):
        kind = ("bank", "insurer", "broker")[i % 3] if i >= 3 else "bank"
        names.append(f"{kind}-{chr(ord('a') + i % 26)}{'' if i < 26 else i // 26}")
    return names


def simulate(spec: SectorSpec) -> dict[str, np.ndarray]:
    """Return flow records as contract columns (timestamps int64 epoch ms), sorted by time."""
    rng = np.random.default_rng(spec.seed)
    n = spec.flows
    orgs = np.array(institution_ids(spec.institutions), dtype=object)
    org_idx = rng.integers(0, spec.institutions, n)
    sensor_idx = rng.integers(0, spec.sensors_per_institution, n)
    host = rng.zipf(1.6, n) % spec.hosts_per_institution  # a few busy hosts, many quiet ones
    client_ip = np.array(
        [f"10.{1 + h // 200}.{(h // 50) % 4}.{10 + h % 200}" for h in range(spec.hosts_per_institution)],
        dtype=object,
    )[host]

    shares = np.array([s[2] for s in _SERVICES])
    svc = rng.choice(len(_SERVICES), n, p=shares / shares.sum())
    dport = np.array([s[0] for s in _SERVICES], np.int32)[svc]
    proto = np.array([s[1] for s in _SERVICES], np.int16)[svc]
    internal_svc = np.array([s[3] for s in _SERVICES])[svc]
    ext_pool = _public_pool(rng, 3000)
    ext = ext_pool[(rng.zipf(1.3, n) - 1) % len(ext_pool)]
    int_servers = np.array(["10.0.0.53", "10.0.0.25", "10.0.1.10", "10.0.1.11", "10.0.2.20"], dtype=object)
    dst = np.where(internal_svc, int_servers[rng.integers(0, len(int_servers), n)], ext)

    med_out = np.array([s[4] for s in _SERVICES], float)[svc]
    med_in = np.array([s[5] for s in _SERVICES], float)[svc]
    sbytes = np.maximum(40, med_out * rng.lognormal(0, 1.0, n)).astype(np.int64)
    dbytes = np.maximum(0, med_in * rng.lognormal(0, 1.2, n)).astype(np.int64)
    refused = (proto == 6) & (rng.random(n) < 0.02)
    dbytes[refused] = 0
    spk = np.maximum(1, sbytes // 700).astype(np.int64)
    dpk = np.where(dbytes > 0, np.maximum(1, dbytes // 1200), 0).astype(np.int64)
    flags = np.where(proto == 6, np.where(refused, 0x02 | 0x04, 0x1B), 0).astype(np.int16)

    # Office-hours shape within the simulated span: denser in the middle.
    offs = np.sort((rng.beta(2.0, 2.0, n) * spec.duration_s * 1000).astype(np.int64))
    order = rng.permutation(n)  # decouple time order from the other draws
    ts = spec.start_ms + offs[np.argsort(order)]
    dur = (rng.exponential(2_000, n)).astype(np.int64)
    sport = rng.integers(32768, 61000, n).astype(np.int32)

    cols: dict[str, np.ndarray] = {
        "@timestamp": ts,
        "event.end": ts + dur,
        "event.dataset": np.full(n, "simulated", dtype=object),
        "organization.id": orgs[org_idx],
        "observer.name": np.array(
            [f"{o}-sensor-{s}" for o, s in zip(orgs[org_idx], sensor_idx, strict=True)], dtype=object
        ),
        "source.ip": client_ip,
        "source.port": sport,
        "destination.ip": dst,
        "destination.port": dport,
        "network.iana_number": proto,
        "source.bytes": sbytes,
        "source.packets": spk,
        "destination.bytes": dbytes,
        "destination.packets": dpk,
        "taishi.flow.tcp_flags": flags,
    }
    cols["network.community_id"] = community_ids(
        cols["source.ip"], cols["destination.ip"], sport, dport, proto
    )
    cols.update(_dns_metadata(spec.seed, dport == 53))
    sort = np.argsort(cols["@timestamp"], kind="stable")
    return {k: v[sort] for k, v in cols.items()}


_QTYPES = (("A", 0.68), ("AAAA", 0.25), ("HTTPS", 0.04), ("MX", 0.01), ("TXT", 0.01), ("SRV", 0.01))
_RCODES = (("NOERROR", 0.965), ("NXDOMAIN", 0.03), ("SERVFAIL", 0.005))


@lru_cache(maxsize=1)
def benign_names() -> np.ndarray:
    """The bundled sample of popular benign DNS names, in rank order."""
    text = (resources.files("taishi.pipeline") / "benign_domains.txt").read_text()
    return np.array([ln for ln in text.splitlines() if ln and not ln.startswith("#")], dtype=object)


def _dns_metadata(seed: int, is_dns: np.ndarray) -> dict[str, np.ndarray]:
    """Query name, type and response code of DNS flows ("" elsewhere), from their own random stream so
    the other columns do not change."""
    rng = np.random.default_rng([seed, 53])
    n, k = len(is_dns), int(is_dns.sum())
    names = benign_names()
    out = {
        c: np.full(n, "", dtype=object)
        for c in ("dns.question.name", "dns.question.type", "dns.response_code")
    }
    out["dns.question.name"][is_dns] = names[(rng.zipf(1.2, k) - 1) % len(names)]
    for col, table in (("dns.question.type", _QTYPES), ("dns.response_code", _RCODES)):
        values = np.array([v for v, _ in table], dtype=object)
        p = np.array([w for _, w in table])
        out[col][is_dns] = values[rng.choice(len(values), k, p=p / p.sum())]
    return out


def _public_pool(rng: np.random.Generator, n: int) -> np.ndarray:
    a = rng.integers(1, 224, n)
    bad = (a == 10) | (a == 127) | (a == 100) | (a == 172) | (a == 192) | (a == 169)
    a[bad] = 45
    b, c, d = rng.integers(0, 256, n), rng.integers(0, 256, n), rng.integers(1, 255, n)
    return np.array([f"{w}.{x}.{y}.{z}" for w, x, y, z in zip(a, b, c, d, strict=True)], dtype=object)
