"""DNS tunnels and DNS command channels: one client sending data in the names it looks up under one domain.

ATT&CK T1572 Protocol Tunneling (data encoded in long subdomains) and T1071.004 Application Layer
Protocol: DNS (many unique names or TXT/NULL answers as a command channel). A tunnel needs the attacker
to run the authoritative server of the domain, so everything is counted per client and *registered
domain* (see ``domains.py``) in a window:

- ``long_subdomains`` (after Elastic's rule): at least 25 queries and 15 distinct names whose subdomain
  is 50 characters or longer, or 30 or longer with high character entropy (encoded data);
- ``many_subdomains`` (after RITA's subdomain bands 100/500/800/1000): at least 100 distinct names under
  one domain with random-looking subdomains;
- ``txt_volume``: most of at least 25 queries under the domain ask for TXT or NULL records, over at least
  15 distinct names.

Benign look-alikes are filtered by what they are, not by volume alone: a busy resolver spreads its
queries over many domains; CDN and cloud host names are short (and their domains are on the default
allowlist: nobody but the provider answers for them, so they cannot carry a tunnel); anti-virus and
reputation services that put hashes in names are on the allowlist of registered domains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms, strings
from taishi.detectors.dga import score_labels
from taishi.detectors.domains import split_many

# Registered domains whose names are answered by their owner only and that legitimately carry hashes or
# many generated names: reputation and anti-virus look-ups, DNS block lists, CDN and cloud hosting.
DEFAULT_ALLOW_DOMAINS: tuple[str, ...] = (
    # anti-virus, reputation and block-list look-ups
    "sophosxl.net",
    "mcafee.com",
    "trendmicro.com",
    "eset.com",
    "e5.sk",
    "avast.com",
    "avcdn.net",
    "spamhaus.org",
    "spamcop.net",
    "surbl.org",
    "uribl.com",
    "senderbase.org",
    "barracudacentral.org",
    "sorbs.net",
    "mailspike.net",
    "dnswl.org",
    # CDN and cloud host names
    "akamaiedge.net",
    "akamai.net",
    "akamaihd.net",
    "akamaized.net",
    "edgekey.net",
    "edgesuite.net",
    "cloudfront.net",
    "amazonaws.com",
    "azureedge.net",
    "azurefd.net",
    "trafficmanager.net",
    "windows.net",
    "cloudapp.net",
    "googleusercontent.com",
    "googlevideo.com",
    "gvt1.com",
    "1e100.net",
    "fastly.net",
    "cloudflare.net",
    "cdn77.org",
)

_TXT_NULL = ("TXT", "NULL")


class DnsTunnelParams(DetectorParams):
    """Tunables of the DNS tunnel detector."""

    long_subdomain: int = Field(
        50, ge=8, le=253, description="a subdomain this long counts as encoded data (Elastic rule: 50)"
    )
    entropy_subdomain: int = Field(
        30, ge=8, le=253, description="a subdomain this long counts as encoded when its entropy is high too"
    )
    min_entropy: float = Field(
        4.0, ge=0, le=8, description="Shannon entropy (bits per character) of an encoded subdomain"
    )
    min_queries: int = Field(25, ge=1, description="queries by one client under one domain in a window")
    min_distinct: int = Field(15, ge=1, description="distinct encoded (or TXT/NULL) names under one domain")
    subdomain_bands: tuple[int, ...] = Field(
        (100, 500, 800, 1000),
        min_length=1,
        description="distinct names under one domain by one client; the first fires, each raises the score (RITA)",
    )
    band_min_randomness: float = Field(
        0.5,
        ge=0,
        le=1,
        description="mean DGA-model probability of the names' first labels in the many-subdomains case",
    )
    min_txt_share: float = Field(
        0.5, ge=0, le=1, description="share of TXT/NULL queries that makes the TXT-volume case"
    )
    allow_domains: tuple[str, ...] = Field(
        DEFAULT_ALLOW_DOMAINS,
        description="registered domains never reported (reputation services, block lists, CDN and cloud)",
    )
    public_only: bool = Field(
        True,
        description="skip names outside the public suffixes (corp.local, .internal): no outside server answers",
    )


def shannon_entropy(texts: np.ndarray) -> np.ndarray:
    """Bits per character of each string (dots ignored), vectorised over an object array."""
    texts = np.asarray([t.replace(".", "") for t in texts], dtype=object)
    n = len(texts)
    if n == 0:
        return np.zeros(0)
    lengths = np.fromiter(map(len, texts), np.int64, n)
    buf = np.frombuffer("".join(texts).encode("ascii", "replace"), np.uint8)  # one byte per character
    rows = np.repeat(np.arange(n), lengths)
    key, count = np.unique(rows * 256 + buf, return_counts=True)  # (string, character) pairs
    row = key // 256
    p = count / lengths[row]
    return np.abs(np.bincount(row, weights=-p * np.log2(p), minlength=n))


def tunnel_score(
    distinct: int, encoded_share: float, txt_share: float, bands: tuple[int, ...] = (100, 500, 800, 1000)
) -> float:
    """0..100: 60 for a window that fired, +8 per subdomain band reached, up to +15 for encoded names and
    +10 for TXT/NULL answers."""
    reached = sum(distinct >= b for b in bands)
    score = 60.0 + 8.0 * reached + 15.0 * min(1.0, max(0.0, encoded_share)) + 10.0 * min(1.0, txt_share)
    return round(min(100.0, score), 1)


class DnsTunnel(WindowedDetector):
    """Data or commands carried in DNS names (tunnels, DNS C2) per client and registered domain."""

    id = "dns_tunnel"
    name = "DNS tunnel"
    techniques = ("T1572", "T1071.004")
    Params = DnsTunnelParams
    params: DnsTunnelParams

    def __init__(self, params: DnsTunnelParams | None = None) -> None:
        super().__init__(params)
        self._allow = frozenset(d.lower().rstrip(".") for d in self.params.allow_domains)

    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        if "dns.question.name" not in flows.columns:
            return pd.DataFrame()
        col = flows["dns.question.name"]
        if isinstance(col.dtype, pd.CategoricalDtype):
            codes = col.cat.codes.to_numpy()
            uniq = col.cat.categories.to_numpy(dtype=object)
        else:
            codes, uniq = pd.factorize(strings(col))
            uniq = np.asarray(uniq, dtype=object)
        present = np.zeros(len(uniq), bool)
        present[codes[codes >= 0]] = True
        reg_u = np.full(len(uniq), "", dtype=object)
        sub_u = np.full(len(uniq), "", dtype=object)
        public_u = np.zeros(len(uniq), bool)
        if present.any():
            reg_u[present], _, sub_u[present], public_u[present] = split_many(str(u) for u in uniq[present])
        keep_u = (reg_u != "") & (sub_u != "") & ~np.isin(reg_u, list(self._allow))
        if self.params.public_only:
            keep_u &= public_u
        m = (codes >= 0) & keep_u[np.maximum(codes, 0)]
        if not m.any():
            return pd.DataFrame()
        f = flows[m]
        c = codes[m]
        qtype = strings(f["dns.question.type"]) if "dns.question.type" in f.columns else np.full(len(f), "")
        frame = pd.DataFrame(
            {
                "org": strings(f["organization.id"]),
                "src": strings(f["source.ip"]),
                "reg": reg_u[c],
                "name": uniq[c],
                "sub": sub_u[c],
                "txt": np.isin(qtype, _TXT_NULL).astype(np.int64),
                "n": np.ones(len(f), np.int64),
                "bytes": f["source.bytes"].to_numpy(np.int64),
                "resolver": strings(f["destination.ip"]),
                "sensor": strings(f["observer.name"]),
                "ts": epoch_ms(f["@timestamp"]),
            }
        )
        return self._reduce(frame, "ts", "ts")

    @staticmethod
    def _reduce(frame: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
        return (
            frame.groupby(["org", "src", "reg", "name"], sort=False)
            .agg(
                sub=("sub", "first"),
                txt=("txt", "sum"),
                n=("n", "sum"),
                bytes=("bytes", "sum"),
                resolver=("resolver", "first"),
                sensor=("sensor", "first"),
                first=(first, "min"),
                last=(last, "max"),
            )
            .reset_index()
        )

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        p = self.params
        if frame.groupby(["org", "src", "reg"], sort=False)["n"].sum().max() < p.min_queries:
            return []  # no client asked often enough under any one domain
        g = self._reduce(frame, "first", "last")
        # A client and domain need enough queries and names before their names are inspected.
        per = g.groupby(["org", "src", "reg"], sort=False).agg(q=("n", "sum"), d=("name", "size"))
        cand = per[(per["q"] >= p.min_queries) & (per["d"] >= min(p.min_distinct, p.subdomain_bands[0]))]
        if cand.empty:
            return []
        g = g.join(cand, on=["org", "src", "reg"], how="inner")
        sub = g["sub"].to_numpy(dtype=object)
        sub_len = np.fromiter(map(len, sub), np.int64, len(sub))
        ent = shannon_entropy(sub)
        encoded = (sub_len >= p.long_subdomain) | ((sub_len >= p.entropy_subdomain) & (ent >= p.min_entropy))
        # Randomness of the first label, only where the many-subdomains case could fire (it costs a model run).
        rand = np.zeros(len(g))
        maybe = (g["d"] >= p.subdomain_bands[0]).to_numpy()
        if maybe.any():
            first = [str(x).split(".", 1)[0] for x in sub[maybe]]
            r = score_labels([x for x in first])
            r[np.array([x.startswith("_") for x in first], dtype=bool)] = 0.0  # _ldap._tcp, _dmarc: services
            rand[maybe] = r
        g = g.assign(
            sub_len=sub_len,
            ent=ent,
            rand=rand,
            enc=encoded.astype(np.int64),
            txt_name=(g["txt"] > 0).astype(np.int64),
        )
        agg = (
            g.groupby(["org", "src", "reg"], sort=True)
            .agg(
                queries=("n", "sum"),
                distinct=("name", "size"),
                encoded=("enc", "sum"),
                txt=("txt", "sum"),
                txt_names=("txt_name", "sum"),
                max_len=("sub_len", "max"),
                mean_len=("sub_len", "mean"),
                mean_entropy=("ent", "mean"),
                randomness=("rand", "mean"),
                bytes=("bytes", "sum"),
                resolver=("resolver", "first"),
                sensor=("sensor", "first"),
                first=("first", "min"),
                last=("last", "max"),
            )
            .reset_index()
        )
        long_ = (agg["queries"] >= p.min_queries) & (agg["encoded"] >= p.min_distinct)
        many = (agg["distinct"] >= p.subdomain_bands[0]) & (agg["randomness"] >= p.band_min_randomness)
        txt = (
            (agg["queries"] >= p.min_queries)
            & (agg["txt"] >= p.min_txt_share * agg["queries"])
            & (agg["txt_names"] >= p.min_distinct)
        )
        kind = np.where(
            long_, "long_subdomains", np.where(many, "many_subdomains", np.where(txt, "txt_volume", ""))
        )
        hits = (
            agg[kind != ""]
            .assign(kind=kind[kind != ""])
            .sort_values(["distinct", "queries", "reg"], ascending=[False, False, True], kind="stable")
        )
        out: list[Finding] = []
        fired: set[tuple[str, str]] = set()
        for r in hits.itertuples(index=False):
            if (r.org, r.src) in fired:
                continue  # one finding per client and window: the busiest domain
            fired.add((r.org, r.src))
            names = g[(g["org"] == r.org) & (g["src"] == r.src) & (g["reg"] == r.reg)]
            sample = names.sort_values("sub_len", ascending=False)["name"].head(3).tolist()
            encoded_share = r.encoded / max(1, r.distinct)
            txt_share = r.txt / max(1, r.queries)
            out.append(
                Finding(
                    rule_id=self.id,
                    org=str(r.org),
                    entity_ip=str(r.src),
                    window_start_ms=start_ms,
                    window_end_ms=end_ms,
                    score=tunnel_score(int(r.distinct), encoded_share, txt_share, p.subdomain_bands),
                    evidence={
                        "kind": str(r.kind),
                        "registered_domain": str(r.reg),
                        "queries": int(r.queries),
                        "distinct_names": int(r.distinct),
                        "encoded_names": int(r.encoded),
                        "txt_null_queries": int(r.txt),
                        "max_subdomain_length": int(r.max_len),
                        "mean_subdomain_length": round(float(r.mean_len), 1),
                        "mean_subdomain_entropy": round(float(r.mean_entropy), 2),
                        "mean_label_randomness": round(float(r.randomness), 3),
                        "bytes_out": int(r.bytes),
                        "subdomain_band": max([b for b in p.subdomain_bands if r.distinct >= b], default=0),
                        "sample": [str(s) for s in sample],
                    },
                    technique="T1572" if r.kind == "long_subdomains" else "T1071.004",
                    sensor=str(r.sensor),
                    source_ip=str(r.src),
                    destination_ip=str(r.resolver),
                    related_ips=[str(r.src), str(r.resolver)],
                    first_seen_ms=int(r.first),
                    last_seen_ms=int(r.last),
                )
            )
        return out
