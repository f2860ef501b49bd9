"""Lateral movement: an internal host that newly opens admin sessions to many internal hosts.

ATT&CK T1021 Remote Services (SMB, RDP, WinRM, SSH sessions fanning out) and T1570 Lateral Tool Transfer
(large transfers to those new peers). Each internal host remembers, within bounds, the internal peers it
held admin-port sessions with and the most peers it ever reached in one window. A window fires when the
host reached many peers it never reached before — more than its own habit: a jump host or a
patch-management server that has always fanned out stays silent, a workstation that suddenly does is the
finding. A session is an answered exchange carrying a handshake's worth of bytes back (a scan's refusals
are the scan detector's). Until an institution has been watched for the warm-up period the detector only
learns, so a fresh start does not flag every habitual jump host.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms
from taishi.detectors.base import group_reduce as _reduce
from taishi.detectors.base import rows_text as _text


class LateralParams(DetectorParams):
    """Tunables of the lateral-movement detector."""

    admin_ports: list[int] = Field(
        default_factory=lambda: [22, 445, 3389, 5985, 5986],
        description="TCP ports of remote administration (SSH, SMB, RDP, WinRM http/https)",
    )
    new_peers: int = Field(10, ge=2, description="internal peers never reached before, in one window")
    habit_factor: float = Field(
        2.0, ge=1, description="new peers must exceed this many times the most peers the host ever reached"
    )
    min_session_bytes: int = Field(1_000, ge=0, description="bytes back that make a connection a session")
    transfer_bytes: int = Field(
        1_000_000, ge=1, description="bytes sent to one peer that count as a transfer"
    )
    transfer_peers: int = Field(3, ge=1, description="new peers receiving transfers that make it T1570")
    history_s: int = Field(14 * 86400, ge=600, description="how long a remembered peer stays known")
    warmup_s: int = Field(3600, ge=0, description="event time an institution is watched before findings")
    max_hosts: int = Field(50_000, ge=10, description="hosts remembered (least recently active evicted)")
    max_peers_per_host: int = Field(1_024, ge=10, description="peers remembered per host (oldest evicted)")


def lateral_score(new_peers: int, threshold: int, transfer_peers: int, prior_peak: int) -> float:
    """0..100: 60 at the threshold, +10 per doubling, +up to 15 for transfers, less for a host with a habit."""
    if new_peers < threshold or threshold <= 0:
        return 0.0
    base = 60.0 + 10.0 * math.log2(new_peers / threshold) + min(15.0, 5.0 * transfer_peers)
    habit = 1.0 - 0.3 * min(1.0, prior_peak / new_peers)
    return round(min(100.0, base) * habit, 1)


class LateralMovement(WindowedDetector):
    """An internal host newly fanning out to many internal hosts on admin ports."""

    id = "lateral"
    name = "Lateral movement"
    techniques = ("T1021", "T1570")
    Params = LateralParams
    params: LateralParams

    def __init__(self, params: LateralParams | None = None) -> None:
        super().__init__(params)
        self._orgs: dict[str, int] = {}  # institution -> first window it was watched in
        # "org|ip" -> {"peers": {ip: last ms}, "peak": most peers in a window, "peak_ms": when}
        self._hosts: dict[str, dict[str, Any]] = {}
        self._ports = np.array(sorted(self.params.admin_ports), np.int64)

    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        p = self.params
        m = (
            flows["taishi.source.internal"].to_numpy(bool)
            & flows["taishi.destination.internal"].to_numpy(bool)
            & (flows["network.iana_number"].to_numpy() == 6)
            & np.isin(flows["destination.port"].to_numpy().astype(np.int64), self._ports)
            & (flows["destination.bytes"].to_numpy() >= max(1, p.min_session_bytes))
        )
        if not m.any():
            return flows.iloc[:0]
        rows = np.flatnonzero(m)
        src, dst = _text(flows["source.ip"], rows), _text(flows["destination.ip"], rows)
        keep = src != dst
        rows = rows[keep]
        ts = epoch_ms(flows["@timestamp"])[rows]
        return _reduce(
            {
                "org": _text(flows["organization.id"], rows),
                "src": src[keep],
                "dst": dst[keep],
                "port": flows["destination.port"].to_numpy()[rows].astype(np.int64),
            },
            {
                "sent": flows["source.bytes"].to_numpy()[rows].astype(np.int64),
                "n": np.ones(len(rows), np.int64),
            },
            {"sensor": _text(flows["observer.name"], rows)},
            ts,
            ts,
        )

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        p = self.params
        g = _merge(frame, ["org", "src", "dst", "port"])
        pairs = _merge(g, ["org", "src", "dst"]).sort_values(["org", "src", "dst"], ignore_index=True)
        horizon = end_ms - p.history_s * 1000
        for org in pairs["org"].unique():
            self._orgs[str(org)] = min(self._orgs.get(str(org), start_ms), start_ms)
        org_a, src_a, dst_a = (pairs[c].to_numpy(object) for c in ("org", "src", "dst"))
        last_a = pairs["last"].to_numpy()
        host = org_a + "|" + src_a
        cuts = np.flatnonzero(host[1:] != host[:-1]) + 1
        out: list[Finding] = []
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(pairs)], strict=True):
            org, src, key = str(org_a[lo]), str(src_a[lo]), str(host[lo])
            mem = self._hosts.pop(key, None) or {"peers": {}, "peak": 0, "peak_ms": 0}
            self._hosts[key] = mem  # most recently active last: dict order is the eviction order
            peers: dict[str, int] = mem["peers"]
            dsts = [str(d) for d in dst_a[lo:hi]]
            is_new = np.array([peers.get(d, horizon - 1) < horizon for d in dsts], bool)
            new_n = int(is_new.sum())
            prior_peak = mem["peak"] if mem["peak_ms"] >= horizon else 0
            watched = start_ms >= self._orgs[org] + p.warmup_s * 1000
            fire = watched and new_n >= p.new_peers and new_n > p.habit_factor * prior_peak
            for d, last in zip(dsts, last_a[lo:hi].tolist(), strict=True):
                peers.pop(d, None)
                peers[d] = int(last)
            for d in [d for d, t in peers.items() if t < horizon]:
                del peers[d]
            while len(peers) > p.max_peers_per_host:
                del peers[next(iter(peers))]
            if hi - lo >= mem["peak"] or mem["peak_ms"] < horizon:
                mem["peak"], mem["peak_ms"] = int(hi - lo), start_ms
            if fire:
                new = pairs.iloc[lo:hi][is_new]
                out.append(self._finding(start_ms, end_ms, org, src, new, g, hi - lo, prior_peak))
        while len(self._hosts) > p.max_hosts:
            del self._hosts[next(iter(self._hosts))]
        return out

    def _finding(
        self,
        start_ms: int,
        end_ms: int,
        org: str,
        src: str,
        new: pd.DataFrame,
        g: pd.DataFrame,
        peers_window: int,
        prior_peak: int,
    ) -> Finding:
        p = self.params
        transfers = int((new["sent"] >= p.transfer_bytes).sum())
        tool = transfers >= min(p.transfer_peers, len(new))
        new_dst = set(new["dst"])
        mine = g[(g["org"] == org) & (g["src"] == src)]
        ports = sorted({int(x) for x in mine.loc[mine["dst"].isin(new_dst), "port"]})
        sample = [str(d) for d in new["dst"].iloc[:20]]
        return Finding(
            rule_id=self.id,
            org=org,
            entity_ip=src,
            window_start_ms=start_ms,
            window_end_ms=end_ms,
            score=lateral_score(len(new), p.new_peers, transfers, prior_peak),
            evidence={
                "kind": "tool_transfer" if tool else "remote_services",
                "new_peers": len(new),
                "peers_window": int(peers_window),
                "threshold": p.new_peers,
                "prior_peak_peers": prior_peak,
                "ports": ports,
                "sessions": int(new["n"].sum()),
                "transfer_peers": transfers,
                "bytes_to_new_peers": int(new["sent"].sum()),
                "sample_peers": sample,
            },
            technique="T1570" if tool else "T1021",
            sensor=str(new["sensor"].iloc[0]),
            source_ip=src,
            related_ips=[src, *sample[:10]],
            first_seen_ms=int(new["first"].min()),
            last_seen_ms=int(new["last"].max()),
        )

    def snapshot(self) -> dict[str, Any]:
        return {"orgs": self._orgs, "hosts": self._hosts}

    def restore(self, state: dict[str, Any]) -> None:
        self._orgs = {k: int(v) for k, v in state.get("orgs", {}).items()}
        self._hosts = {
            k: {
                "peers": {d: int(t) for d, t in v["peers"].items()},
                "peak": int(v["peak"]),
                "peak_ms": int(v["peak_ms"]),
            }
            for k, v in state.get("hosts", {}).items()
        }


def _merge(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Re-group partial aggregates on ``keys`` (a subset of theirs)."""
    return _reduce(
        {k: frame[k].to_numpy() for k in keys},
        {k: frame[k].to_numpy() for k in ("sent", "n")},
        {"sensor": frame["sensor"].to_numpy()},
        frame["first"].to_numpy(),
        frame["last"].to_numpy(),
    )
