"""Hosts running domain generation algorithms: many machine-made names looked up, most of them failing.

ATT&CK T1568.002 Dynamic Resolution: Domain Generation Algorithms. Each DNS query name is reduced to its
registered domain (``domains.py``: ICANN suffix plus one label, one more under dynamic-DNS zones) and
that domain's owner label is scored by the shipped lexical model (``dga_model.py``): random CDN host
names under a well-known registered domain are scored by the CDN's own label, never by their
random-looking subdomain. A host fires in a window when

- ``nxdomain``: at least ``min_nx`` distinct DGA-looking domains it asked for did not exist (DGA malware
  tries many names until one resolves) and they are at least ``min_nx_share`` of its failed domains, or
- ``names``: at least ``min_names`` distinct domains scored above ``name_threshold`` and they are at least
  ``min_share`` of the distinct domains it asked for (so a resolver with a few odd names among
  thousands stays silent), or
- ``slow``: over ``slow_period_s`` it accumulated ``slow_names`` distinct DGA-looking failed domains
  (a DGA that tries one name every few minutes).
"""

from __future__ import annotations

import math
import sys
from typing import IO, Any

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms, strings
from taishi.detectors.dga_model import DgaModel, shipped_model
from taishi.detectors.domains import split_many


class DgaParams(DetectorParams):
    """Tunables of the DGA detector."""

    name_threshold: float = Field(
        0.9, gt=0, lt=1, description="model probability above which a name counts as DGA-looking"
    )
    nx_threshold: float = Field(
        0.7, gt=0, lt=1, description="lower probability that suffices for names that got NXDOMAIN"
    )
    min_names: int = Field(8, ge=1, description="distinct DGA-looking domains from one host in a window")
    min_share: float = Field(
        0.2, ge=0, le=1, description="share of the host's distinct domains that must look DGA-made"
    )
    min_nx: int = Field(10, ge=1, description="distinct DGA-looking domains that got NXDOMAIN in a window")
    min_nx_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="share of the host's NXDOMAIN domains that must look DGA-made (a resolver has many others)",
    )
    min_label_length: int = Field(
        6, ge=1, description="shorter owner labels are not scored (too little text to judge)"
    )
    slow_names: int = Field(
        25, ge=2, description="distinct DGA-looking NXDOMAIN domains over the slow period"
    )
    slow_period_s: int = Field(6 * 3600, ge=600, description="memory of the slow-DGA case")
    max_hosts: int = Field(20_000, ge=10, description="hosts remembered for the slow case (bounded state)")
    max_names_per_host: int = Field(500, ge=10, description="domains remembered per host")
    allow_domains: tuple[str, ...] = Field(
        (), description="registered domains never scored (e.g. the institution's own generated names)"
    )


def dga_score(
    names: int, min_names: int, nx_names: int, min_nx: int, mean_probability: float, nx_share: float
) -> float:
    """0..100: 60 where a case fires, +10 per doubling beyond it, +10 for mostly failed look-ups, scaled by
    how sure the model is about the names (0.75 at probability 0, 1 at probability 1)."""
    strength = max(names / max(1, min_names), nx_names / max(1, min_nx))
    if strength < 1:
        return 0.0
    base = 60.0 + 10.0 * math.log2(strength) + 10.0 * min(1.0, max(0.0, nx_share))
    return round(min(100.0, base) * (0.75 + 0.25 * min(1.0, max(0.0, mean_probability))), 1)


def score_labels(labels: list[str], model: DgaModel | None = None) -> np.ndarray:
    """Model probability for owner labels (pure given the model; punycode and empty labels score 0)."""
    m = model or shipped_model()
    out = np.zeros(len(labels))
    ok = np.array([bool(x) and not x.startswith("xn--") for x in labels], dtype=bool)
    if ok.any():
        out[ok] = m.predict_proba([x for x, k in zip(labels, ok, strict=True) if k])
    return out


def score_names(names: list[str], model: DgaModel | None = None) -> np.ndarray:
    """Model probability for DNS names, each judged by the owner label of its registered domain."""
    _, labels, _, _ = split_many(names)
    return score_labels([str(x) for x in labels], model)


def score_lines(stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """``taishi dga score``: DNS names on stdin, one per line; ``<probability>\\t<name>`` per line out."""
    src = stdin or sys.stdin
    dst = stdout or sys.stdout
    batch: list[str] = []

    def flush() -> None:
        for name, s in zip(batch, score_names(batch), strict=True):
            dst.write(f"{s:.4f}\t{name}\n")
        batch.clear()

    for line in src:
        name = line.strip()
        if name and not name.startswith("#"):
            batch.append(name)
            if len(batch) >= 10_000:
                flush()
    flush()
    dst.flush()
    return 0


class Dga(WindowedDetector):
    """Hosts that look up many machine-generated domain names (DGA malware looking for its server)."""

    id = "dga"
    name = "Domain generation algorithm"
    techniques = ("T1568.002",)
    Params = DgaParams
    params: DgaParams

    def __init__(self, params: DgaParams | None = None) -> None:
        super().__init__(params)
        self._allow = frozenset(d.lower().rstrip(".") for d in self.params.allow_domains)
        self._scores: dict[str, float] = {}  # registered domain -> probability (bounded cache)
        # org|host -> {"names": {domain: last seen ms}, "fired": end of the last slow alert window}
        self._slow: dict[str, dict[str, Any]] = {}

    def _score(self, regs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        p = self.params
        missing = [i for i, r in enumerate(regs) if r not in self._scores]
        if missing:
            if len(self._scores) + len(missing) > 200_000:
                self._scores.clear()
            lab = [str(labels[i]) for i in missing]
            s = score_labels(lab)
            short = np.array([len(x) < p.min_label_length for x in lab], dtype=bool)
            s[short] = 0.0
            for i, v in zip(missing, s, strict=True):
                self._scores[str(regs[i])] = float(v)
        return np.array([self._scores[str(r)] for r in regs], dtype=np.float64)

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
        lab_u = np.full(len(uniq), "", dtype=object)
        if present.any():
            r, lab, _, _ = split_many(str(u) for u in uniq[present])
            reg_u[present], lab_u[present] = r, lab
        keep_u = (reg_u != "") & ~np.isin(reg_u, list(self._allow))
        m = (codes >= 0) & keep_u[np.maximum(codes, 0)]
        if not m.any():
            return pd.DataFrame()
        f = flows[m]
        c = codes[m]
        rcode = strings(f["dns.response_code"]) if "dns.response_code" in f.columns else np.full(len(f), "")
        frame = pd.DataFrame(
            {
                "org": strings(f["organization.id"]),
                "src": strings(f["source.ip"]),
                "reg": reg_u[c],
                "nx": (rcode == "NXDOMAIN").astype(np.int64),
                "n": np.ones(len(f), np.int64),
                "sensor": strings(f["observer.name"]),
                "ts": epoch_ms(f["@timestamp"]),
            }
        )
        g = (
            frame.groupby(["org", "src", "reg"], sort=False)
            .agg(
                nx=("nx", "sum"),
                n=("n", "sum"),
                sensor=("sensor", "first"),
                first=("ts", "min"),
                last=("ts", "max"),
            )
            .reset_index()
        )
        label_of = dict(zip(reg_u[present], lab_u[present], strict=True))
        uniq_regs, inv = np.unique(g["reg"].to_numpy(dtype=object), return_inverse=True)
        labels = np.array([label_of[r] for r in uniq_regs], dtype=object)
        g["score"] = self._score(uniq_regs, labels)[inv]
        return g

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        p = self.params
        if frame["score"].max() < min(p.name_threshold, p.nx_threshold):
            return []  # nothing DGA-looking in the window: no case can fire, no slow memory to add
        # Only hosts that asked for at least one DGA-looking name can fire: drop the others first.
        host = frame["org"].to_numpy(dtype=object) + "|" + frame["src"].to_numpy(dtype=object)
        suspect = host[frame["score"].to_numpy() >= min(p.name_threshold, p.nx_threshold)]
        frame = frame[np.isin(host, np.unique(suspect))]
        g = (
            frame.groupby(["org", "src", "reg"], sort=False)
            .agg(
                nx=("nx", "sum"),
                n=("n", "sum"),
                score=("score", "max"),
                sensor=("sensor", "first"),
                first=("first", "min"),
                last=("last", "max"),
            )
            .reset_index()
        )
        high = g["score"].to_numpy() >= p.name_threshold
        nx_any = g["nx"].to_numpy() > 0
        nx_dga = nx_any & (g["score"].to_numpy() >= p.nx_threshold)
        g = g.assign(
            high=high.astype(np.int64), nx_any=nx_any.astype(np.int64), nx_dga=nx_dga.astype(np.int64)
        )
        per = (
            g.groupby(["org", "src"], sort=True)
            .agg(
                domains=("reg", "size"),
                high=("high", "sum"),
                nx_domains=("nx_any", "sum"),
                nx_dga=("nx_dga", "sum"),
                sensor=("sensor", "first"),
                first=("first", "min"),
                last=("last", "max"),
            )
            .reset_index()
        )
        share = per["high"] / per["domains"].clip(lower=1)
        nx_share = per["nx_dga"] / per["nx_domains"].clip(lower=1)
        names_case = (per["high"] >= p.min_names) & (share >= p.min_share)
        nx_case = (per["nx_dga"] >= p.min_nx) & (nx_share >= p.min_nx_share)
        out: list[Finding] = []
        fired: set[tuple[str, str]] = set()
        for r in per[names_case | nx_case].itertuples(index=False):
            fired.add((r.org, r.src))
            rows = g[(g["org"] == r.org) & (g["src"] == r.src) & ((g["high"] > 0) | (g["nx_dga"] > 0))]
            kind = (
                "nxdomain" if r.nx_dga >= p.min_nx and r.nx_dga >= p.min_nx_share * r.nx_domains else "names"
            )
            out.append(self._finding(start_ms, end_ms, r._asdict(), rows, kind))
        # The slow case remembers failed DGA-looking names only of hosts whose failures mostly look so.
        slow_hosts = per.loc[nx_share >= p.min_nx_share, ["org", "src"]]
        nx = g[g["nx_dga"] > 0].merge(slow_hosts, on=["org", "src"])
        out.extend(self._slow_dga(start_ms, end_ms, nx, fired))
        return out

    def _finding(
        self, start_ms: int, end_ms: int, r: dict[str, Any], rows: pd.DataFrame, kind: str
    ) -> Finding:
        p = self.params
        top = rows.sort_values(["score", "reg"], ascending=[False, True]).head(10)
        nx_share = float((rows["nx"] > 0).mean()) if len(rows) else 0.0
        mean_p = float(rows["score"].mean()) if len(rows) else 0.0
        return Finding(
            rule_id=self.id,
            org=str(r["org"]),
            entity_ip=str(r["src"]),
            window_start_ms=start_ms,
            window_end_ms=end_ms,
            score=dga_score(int(r["high"]), p.min_names, int(r["nx_dga"]), p.min_nx, mean_p, nx_share),
            evidence={
                "kind": kind,
                "dga_domains": int(r["high"]),
                "nxdomain_dga_domains": int(r["nx_dga"]),
                "nxdomain_domains": int(r["nx_domains"]),
                "distinct_domains": int(r["domains"]),
                "dga_share": round(int(r["high"]) / max(1, int(r["domains"])), 3),
                "mean_probability": round(mean_p, 3),
                "name_threshold": p.name_threshold,
                "sample": {str(d): round(float(s), 3) for d, s in zip(top["reg"], top["score"], strict=True)},
            },
            technique="T1568.002",
            sensor=str(r["sensor"]),
            source_ip=str(r["src"]),
            related_ips=[str(r["src"])],
            first_seen_ms=int(r["first"]),
            last_seen_ms=int(r["last"]),
        )

    def _slow_dga(
        self, start_ms: int, end_ms: int, nx: pd.DataFrame, fired: set[tuple[str, str]]
    ) -> list[Finding]:
        p = self.params
        horizon = end_ms - p.slow_period_s * 1000
        out: list[Finding] = []
        for (org, src), rows in nx.groupby(["org", "src"], sort=True):
            key = f"{org}|{src}"
            mem = self._slow.get(key)
            if mem is None:
                if len(self._slow) >= p.max_hosts:
                    oldest = min(self._slow, key=lambda k: max(self._slow[k]["names"].values(), default=0))
                    del self._slow[oldest]
                mem = self._slow[key] = {"names": {}, "fired": 0}
            names: dict[str, int] = mem["names"]
            for reg, last in zip(rows["reg"], rows["last"], strict=True):
                names[str(reg)] = int(last)
            for k in [k for k, t in names.items() if t < horizon]:
                del names[k]
            if len(names) > p.max_names_per_host:
                for k in sorted(names, key=names.__getitem__)[: len(names) - p.max_names_per_host]:
                    del names[k]
            if (org, src) in fired:
                mem["fired"] = end_ms  # the window case already reported this host
                continue
            if len(names) < p.slow_names or mem["fired"] > horizon:
                continue
            mem["fired"] = end_ms
            sample = sorted(names, key=names.__getitem__)[-10:]
            out.append(
                Finding(
                    rule_id=self.id,
                    org=str(org),
                    entity_ip=str(src),
                    window_start_ms=start_ms,
                    window_end_ms=end_ms,
                    score=dga_score(0, p.min_names, len(names), p.slow_names, p.nx_threshold, 1.0),
                    evidence={
                        "kind": "slow",
                        "nxdomain_dga_domains": len(names),
                        "period_s": p.slow_period_s,
                        "threshold": p.slow_names,
                        "sample": sample,
                    },
                    technique="T1568.002",
                    source_ip=str(src),
                    related_ips=[str(src)],
                    first_seen_ms=min(names.values()),
                    last_seen_ms=max(names.values()),
                )
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"slow": self._slow}

    def restore(self, state: dict[str, Any]) -> None:
        self._slow = {
            k: {"names": {n: int(t) for n, t in v["names"].items()}, "fired": int(v["fired"])}
            for k, v in state.get("slow", {}).items()
        }
