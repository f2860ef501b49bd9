"""Port scans: vertical (many ports on one host), horizontal (one port on many hosts), and slow scans.

ATT&CK T1046 Network Service Discovery (internal scanners) and T1595 Active Scanning (from outside).
A window's probes are the flows whose responder sent nothing back or refused (TCP with no bytes back);
a source fires when it probes many distinct ports of one host, or one port on many hosts. Slow scans stay
under those counts in every window: each source keeps a bounded memory of the (host, port) pairs it
probed over a long period and fires when that set grows large.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms, frame, strings


class ScanParams(DetectorParams):
    """Tunables of the scan detector."""

    vertical_ports: int = Field(50, ge=2, description="distinct ports probed on one host in a window")
    horizontal_hosts: int = Field(50, ge=2, description="distinct hosts probed on one port in a window")
    min_failed_ratio: float = Field(
        0.6, ge=0, le=1, description="share of the source's flows to those targets that got no answer"
    )
    slow_pairs: int = Field(100, ge=2, description="distinct (host, port) probes over the slow period")
    slow_period_s: int = Field(6 * 3600, ge=600, description="memory of the slow-scan detector")
    max_sources: int = Field(20_000, ge=10, description="sources remembered for slow scans (bounded state)")
    max_pairs_per_source: int = Field(2_000, ge=10, description="pairs remembered per source")


def scan_score(distinct: int, threshold: int, failed_ratio: float) -> float:
    """0..100: 60 at the threshold, +10 per doubling beyond it, scaled by how many probes failed."""
    if distinct < threshold:
        return 0.0
    base = min(100.0, 60.0 + 10.0 * math.log2(distinct / threshold))
    return round(base * (0.6 + 0.4 * failed_ratio), 1)


class PortScan(WindowedDetector):
    """Vertical, horizontal and slow port scans by one source."""

    id = "scan"
    name = "Port scan"
    techniques = ("T1046", "T1595")
    Params = ScanParams
    params: ScanParams

    def __init__(self, params: ScanParams | None = None) -> None:
        super().__init__(params)
        # (org, source) -> {"pairs": {"dst|port": last seen ms}, "fired": last slow alert window}
        self._slow: dict[str, dict[str, Any]] = {}

    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        proto = flows["network.iana_number"].to_numpy()
        m = (proto == 6) | (proto == 17)
        if not m.any():
            return flows.iloc[:0]
        # One-way exports (NetFlow/IPFIX: one record per direction) cannot tell an unanswered UDP probe
        # from any UDP record, and a UDP record from a service port is a server's reply, not a probe.
        udp = proto == 17
        one_way = strings(flows["event.dataset"]).astype(str)
        one_way = np.char.startswith(one_way, "netflow") | np.char.startswith(one_way, "ipfix")
        m &= ~(udp & ((flows["source.port"].to_numpy() < 1024) | one_way))
        if not m.any():
            return flows.iloc[:0]
        f = flows[m]
        failed = (f["destination.bytes"].to_numpy() == 0) & (f["network.iana_number"].to_numpy() == 6)
        udp_silent = (f["network.iana_number"].to_numpy() == 17) & (f["destination.packets"].to_numpy() == 0)
        rows = frame(
            {
                "org": strings(f["organization.id"]),
                "src": strings(f["source.ip"]),
                "dst": strings(f["destination.ip"]),
                "port": f["destination.port"].to_numpy(),
                "failed": (failed | udp_silent).astype(np.int64),
                "n": np.ones(len(f), np.int64),
                "sensor": strings(f["observer.name"]),
                "ts": epoch_ms(f["@timestamp"]),
                "internal": f["taishi.source.internal"].to_numpy(bool),
            }
        )
        return (
            rows.groupby(["org", "src", "dst", "port"], sort=False)
            .agg(
                failed=("failed", "sum"),
                n=("n", "sum"),
                sensor=("sensor", "first"),
                first=("ts", "min"),
                last=("ts", "max"),
                internal=("internal", "max"),
            )
            .reset_index()
        )

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        p = self.params
        g = (
            frame.groupby(["org", "src", "dst", "port"], sort=False)
            .agg(
                failed=("failed", "sum"),
                n=("n", "sum"),
                sensor=("sensor", "first"),
                first=("first", "min"),
                last=("last", "max"),
                internal=("internal", "max"),
            )
            .reset_index()
        )
        out: list[Finding] = []
        fired: set[tuple[str, str]] = set()
        for kind, key, target, threshold in (
            ("vertical", ["org", "src", "dst"], "port", p.vertical_ports),
            ("horizontal", ["org", "src", "port"], "dst", p.horizontal_hosts),
        ):
            per = (
                g.groupby(key, sort=False)
                .agg(
                    distinct=(target, "nunique"),
                    failed=("failed", "sum"),
                    n=("n", "sum"),
                    sensor=("sensor", "first"),
                    first=("first", "min"),
                    last=("last", "max"),
                    internal=("internal", "max"),
                )
                .reset_index()
            )
            hits = per[(per["distinct"] >= threshold) & (per["failed"] >= p.min_failed_ratio * per["n"])]
            for row in hits.sort_values(key).itertuples(index=False):
                r = row._asdict()
                if (r["org"], r["src"]) in fired:
                    continue  # one finding per source and window: the vertical one names the host
                fired.add((r["org"], r["src"]))
                sel = g[(g["org"] == r["org"]) & (g["src"] == r["src"])]
                sel = sel[sel["dst"] == r["dst"]] if kind == "vertical" else sel[sel["port"] == r["port"]]
                ratio = r["failed"] / max(1, r["n"])
                sample = sorted(sel[target].unique().tolist())[:20]
                evidence = {
                    "kind": kind,
                    "distinct_" + ("ports" if kind == "vertical" else "hosts"): int(r["distinct"]),
                    "threshold": threshold,
                    "flows": int(r["n"]),
                    "failed_ratio": round(ratio, 3),
                    "sample": [str(x) for x in sample],
                }
                if kind == "vertical":
                    evidence["target_host"] = r["dst"]
                else:
                    evidence["target_port"] = int(r["port"])
                out.append(
                    Finding(
                        rule_id=self.id,
                        org=r["org"],
                        entity_ip=r["src"],
                        window_start_ms=start_ms,
                        window_end_ms=end_ms,
                        score=scan_score(int(r["distinct"]), threshold, ratio),
                        evidence=evidence,
                        technique=_technique(bool(r["internal"])),
                        sensor=r["sensor"],
                        source_ip=r["src"],
                        destination_ip=r["dst"] if kind == "vertical" else "",
                        related_ips=[r["src"]]
                        + ([r["dst"]] if kind == "vertical" else [str(x) for x in sample[:10]]),
                        first_seen_ms=int(r["first"]),
                        last_seen_ms=int(r["last"]),
                    )
                )
        out.extend(self._slow_scans(start_ms, end_ms, g, fired))
        return out

    def _slow_scans(
        self, start_ms: int, end_ms: int, g: pd.DataFrame, fired: set[tuple[str, str]]
    ) -> list[Finding]:
        p = self.params
        probes = g[g["failed"] >= p.min_failed_ratio * g["n"]]
        horizon = end_ms - p.slow_period_s * 1000
        out: list[Finding] = []
        for (org, src), rows in probes.groupby(["org", "src"], sort=True):
            key = f"{org}|{src}"
            mem = self._slow.get(key)
            if mem is None:
                if len(self._slow) >= p.max_sources:
                    oldest = min(self._slow, key=lambda k: max(self._slow[k]["pairs"].values(), default=0))
                    del self._slow[oldest]
                mem = self._slow[key] = {"pairs": {}, "fired": 0, "internal": bool(rows["internal"].any())}
            pairs: dict[str, int] = mem["pairs"]
            for dst, port, last in zip(rows["dst"], rows["port"], rows["last"], strict=True):
                pairs[f"{dst}|{int(port)}"] = int(last)
            for k in [k for k, t in pairs.items() if t < horizon]:
                del pairs[k]
            if len(pairs) > p.max_pairs_per_source:
                for k in sorted(pairs, key=pairs.__getitem__)[: len(pairs) - p.max_pairs_per_source]:
                    del pairs[k]
            if (org, src) in fired or len(pairs) < p.slow_pairs or mem["fired"] > horizon:
                continue
            mem["fired"] = end_ms
            hosts = {k.split("|")[0] for k in pairs}
            out.append(
                Finding(
                    rule_id=self.id,
                    org=str(org),
                    entity_ip=str(src),
                    window_start_ms=start_ms,
                    window_end_ms=end_ms,
                    score=scan_score(len(pairs), p.slow_pairs, 1.0),
                    evidence={
                        "kind": "slow",
                        "distinct_pairs": len(pairs),
                        "distinct_hosts": len(hosts),
                        "period_s": p.slow_period_s,
                        "threshold": p.slow_pairs,
                    },
                    technique=_technique(bool(mem.get("internal"))),
                    source_ip=str(src),
                    related_ips=[str(src)],
                    first_seen_ms=min(pairs.values()),
                    last_seen_ms=max(pairs.values()),
                )
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"slow": self._slow}

    def restore(self, state: dict[str, Any]) -> None:
        self._slow = {
            k: {"pairs": dict(v["pairs"]), "fired": int(v["fired"]), "internal": bool(v.get("internal"))}
            for k, v in state.get("slow", {}).items()
        }


def _technique(internal_source: bool) -> str:
    """T1046 when the source is inside the institution (discovery from within), T1595 from outside."""
    return "T1046" if internal_source else "T1595"
