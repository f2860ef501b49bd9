"""Injected DNS attacks (tunnels, DNS command channels, DGA malware) and their benign look-alikes.

Each injector returns ``(columns, label)`` like those in ``attacks.py``: DNS flows (UDP to a resolver) with
``dns.question.name``, ``dns.question.type`` and ``dns.response_code``. The DGA names come from small
generators written for these tests (random letters, hashed dates, hex), not from any malware family, so
they are also names the shipped model never saw. Deterministic by seed.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np

from taishi.pipeline.attacks import Label, flows
from taishi.pipeline.simulator import benign_names

_RESOLVER = "10.0.0.53"


def _times(rng: np.random.Generator, start_ms: int, n: int, duration_s: float) -> np.ndarray:
    return start_ms + np.sort(rng.uniform(0, duration_s * 1000, n)).astype(np.int64)


def _dns(
    ts: np.ndarray,
    org: str,
    src: str,
    names: Any,
    qtype: Any = "A",
    rcode: Any = "NOERROR",
    resolver: str = _RESOLVER,
    answer_bytes: Any = 120,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    names = np.asarray(names, dtype=object)
    qlen = np.fromiter(map(len, names), np.int64, len(names))
    return flows(
        ts,
        org,
        src,
        resolver,
        53,
        proto=17,
        sbytes=40 + qlen,
        dbytes=np.asarray(answer_bytes, np.int64) + qlen,
        spackets=1,
        dpackets=1,
        seed=seed,
        dns__question__name=names,
        dns__question__type=qtype,
        dns__response_code=rcode,
    )


def _labels_of(payload: str, size: int = 63) -> str:
    return ".".join(payload[i : i + size] for i in range(0, len(payload), size))


# DNS tunnels ---------------------------------------------------------------------------------------------
def dns_tunnel(
    org: str,
    src: str,
    start_ms: int,
    domain: str = "t.example-sync.net",
    queries: int = 600,
    duration_s: float = 600,
    qtype: str = "NULL",
    seed: int = 31,
) -> tuple[dict[str, np.ndarray], Label]:
    """A tunnel (iodine-like): every query carries ~100 base32 characters of data, NULL answers."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, queries, duration_s)
    names = []
    for i in range(queries):
        chunk = base64.b32encode(rng.bytes(int(rng.integers(50, 75)))).decode().rstrip("=").lower()
        names.append(f"{_labels_of(f'p{i % 4096:03x}{chunk}')}.{domain}")
    cols = _dns(ts, org, src, names, qtype=qtype, answer_bytes=rng.integers(100, 600, queries), seed=seed)
    return cols, Label("dns_tunnel", org, src, int(ts[0]), int(ts[-1]), "long_subdomains")


def dns_beacon(
    org: str,
    src: str,
    start_ms: int,
    domain: str = "cdn-metrics.example.org",
    queries: int = 900,
    duration_s: float = 900,
    seed: int = 32,
) -> tuple[dict[str, np.ndarray], Label]:
    """A DNS command channel: one short random hex name per query (no cache hits), A and TXT answers."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, queries, duration_s)
    names = [f"{rng.bytes(int(rng.integers(5, 9))).hex()}.{domain}" for _ in range(queries)]
    qtype = rng.choice(np.array(["A", "TXT"], dtype=object), queries, p=[0.7, 0.3])
    cols = _dns(ts, org, src, names, qtype=qtype, seed=seed)
    return cols, Label("dns_tunnel", org, src, int(ts[0]), int(ts[-1]), "many_subdomains")


def busy_resolver(
    org: str,
    src: str,
    start_ms: int,
    upstream: str = "192.0.2.53",
    queries: int = 8000,
    duration_s: float = 900,
    seed: int = 33,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: the institution's resolver asks upstream for many popular names (and their hosts)."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, queries, duration_s)
    popular = benign_names()
    hosts = ["", "www", "api", "cdn", "static", "img", "mail", "login", "m", "assets", "clients"]
    base = popular[(rng.zipf(1.15, queries) - 1) % len(popular)]
    prefix = rng.integers(0, len(hosts), queries)
    numbered = rng.random(queries) < 0.3  # clients4.google.com, img12.example.com
    number = rng.integers(1, 40, queries)
    names = np.array(
        [
            f"{hosts[p]}{k if num else ''}.{b}" if p else b
            for p, b, num, k in zip(prefix, base, numbered, number, strict=True)
        ],
        dtype=object,
    )
    rcode = np.where(rng.random(queries) < 0.03, "NXDOMAIN", "NOERROR").astype(object)
    qtype = rng.choice(
        np.array(["A", "AAAA", "HTTPS", "TXT"], dtype=object), queries, p=[0.6, 0.3, 0.07, 0.03]
    )
    cols = _dns(ts, org, src, names, qtype=qtype, rcode=rcode, resolver=upstream, seed=seed)
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "busy resolver")


def av_reputation_lookups(
    org: str,
    src: str,
    start_ms: int,
    domain: str = "sophosxl.net",
    lookups: int = 500,
    duration_s: float = 600,
    seed: int = 34,
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: an anti-virus agent looks up file hashes as long hex subdomains of its vendor's domain."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, lookups, duration_s)
    names = [
        f"{hashlib.sha1(rng.bytes(16)).hexdigest()}.{rng.bytes(4).hex()}.4.v3.{domain}"
        for _ in range(lookups)
    ]
    qtype = np.full(lookups, "A", dtype=object)
    cols = _dns(ts, org, src, names, qtype=qtype, seed=seed)
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "anti-virus reputation look-ups")


def cdn_hostnames(
    org: str, src: str, start_ms: int, queries: int = 400, duration_s: float = 600, seed: int = 35
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a client loading media-heavy pages, with random-looking CDN and cloud host names."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, queries, duration_s)

    def alnum(k: int) -> str:
        return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), k))

    makers = [
        lambda: f"d{alnum(13)}.cloudfront.net",
        lambda: f"e{rng.integers(1000, 99999)}.{alnum(4)}.akamaiedge.net",
        lambda: f"scontent-{alnum(3)}{rng.integers(1, 9)}-{rng.integers(1, 3)}.xx.fbcdn.net",
        lambda: f"r{rng.integers(1, 9)}---sn-{alnum(8)}.googlevideo.com",
        lambda: f"{alnum(10)}.b-cdn.net",
        lambda: f"{alnum(12)}.cdn.jsdelivr.net",
        lambda: f"i{rng.integers(1, 4)}.ytimg.com",
    ]
    names = np.array([makers[int(k)]() for k in rng.integers(0, len(makers), queries)], dtype=object)
    qtype = rng.choice(np.array(["A", "AAAA", "HTTPS"], dtype=object), queries, p=[0.6, 0.3, 0.1])
    cols = _dns(ts, org, src, names, qtype=qtype, seed=seed)
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "CDN host names")


# DGA -----------------------------------------------------------------------------------------------------
_TLDS = np.array(["com", "net", "org", "info", "biz", "ru", "xyz", "top"], dtype=object)


def dga_names(algorithm: str, count: int, seed: int = 0) -> list[str]:
    """Generated domain names: ``letters`` (random letters, 10-18), ``hashed`` (hex of a hashed date and
    counter, 12-16) or ``mixed`` (letters and digits, 8-14)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        tld = _TLDS[int(rng.integers(0, len(_TLDS)))]
        if algorithm == "letters":
            label = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(rng.integers(10, 19))))
        elif algorithm == "hashed":
            label = hashlib.md5(f"{seed}-2026-11-18-{i}".encode()).hexdigest()[: int(rng.integers(12, 17))]
            label = "".join(c if c.isalpha() or rng.random() < 0.4 else chr(ord("g") + int(c)) for c in label)
        elif algorithm == "mixed":
            label = "".join(
                rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), int(rng.integers(8, 15)))
            )
        else:
            raise ValueError(f"algorithm {algorithm!r}: expected letters, hashed or mixed")
        out.append(f"{label}.{tld}")
    return out


def dga_host(
    org: str,
    src: str,
    start_ms: int,
    algorithm: str = "letters",
    names: int = 150,
    resolved: int = 2,
    duration_s: float = 600,
    seed: int = 41,
) -> tuple[dict[str, np.ndarray], Label]:
    """An infected host cycling through generated names: all NXDOMAIN but the ``resolved`` few (its C2)."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, names, duration_s)
    qnames = dga_names(algorithm, names, seed)
    rcode = np.full(names, "NXDOMAIN", dtype=object)
    rcode[rng.choice(names, min(resolved, names), replace=False)] = "NOERROR"
    cols = _dns(
        ts, org, src, qnames, rcode=rcode, answer_bytes=np.where(rcode == "NOERROR", 60, 20), seed=seed
    )
    return cols, Label("dga", org, src, int(ts[0]), int(ts[-1]), "nxdomain")


def nxdomain_typos(
    org: str, src: str, start_ms: int, queries: int = 600, duration_s: float = 600, seed: int = 42
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: a misconfigured host appends its search suffix and asks for retired internal hosts: a
    burst of NXDOMAIN answers for ordinary names."""
    rng = np.random.default_rng(seed)
    ts = _times(rng, start_ms, queries, duration_s)
    popular = benign_names()
    internal = [
        "wpad",
        "isatap",
        "printer-3f",
        "fileserver02",
        "sharepoint-old",
        "_ldap._tcp.dc._msdcs",
        "backup-nas",
        "intranet",
    ]
    names = []
    for k in rng.integers(0, 3, queries):
        if k == 0:
            names.append(f"{popular[int(rng.integers(0, len(popular)))]}.corp.bank.internal")
        elif k == 1:
            names.append(f"{internal[int(rng.integers(0, len(internal)))]}.corp.bank.internal")
        else:
            names.append(str(popular[int(rng.integers(0, len(popular)))]))
    rcode = np.where(np.arange(queries) % 3 == 2, "NOERROR", "NXDOMAIN").astype(object)
    rcode[np.array([not n.endswith(".internal") for n in names])] = "NOERROR"
    cols = _dns(ts, org, src, names, rcode=rcode, seed=seed)
    return cols, Label("", org, src, int(ts[0]), int(ts[-1]), "NXDOMAIN burst of ordinary names")


def popular_and_cdn(
    org: str, src: str, start_ms: int, queries: int = 800, duration_s: float = 600, seed: int = 43
) -> tuple[dict[str, np.ndarray], Label]:
    """Benign: one host browsing hundreds of popular sites and their CDN hosts, a few NXDOMAIN among them."""
    pop, _ = busy_resolver(
        org, src, start_ms, upstream=_RESOLVER, queries=queries, duration_s=duration_s, seed=seed
    )
    cdn, _ = cdn_hostnames(org, src, start_ms, queries=queries // 2, duration_s=duration_s, seed=seed + 1)
    from taishi.pipeline.attacks import merge

    cols = merge(pop, cdn)
    return cols, Label(
        "", org, src, int(cols["@timestamp"][0]), int(cols["@timestamp"][-1]), "popular and CDN"
    )
