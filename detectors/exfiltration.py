"""Exfiltration: a host suddenly uploads far more than it ever does, and more than its peers, somewhere new.

ATT&CK T1048 Exfiltration Over Alternative Protocol, T1041 Exfiltration Over C2 Channel when the
destination is one the host only ever talked to in small, recurring amounts (what a command channel
looks like before it carries the haul). A window's volume of a host is the bytes it sent on connections
it opened to outside destinations. A host fires when, in one window, all of these hold:

- the volume is at least ``min_bytes``;
- it is far above the host's own history: the bytes of its last ``baseline_windows`` active windows
  (robust: median + ``mad_k`` scaled MADs, and ``own_factor`` times the median), after ``min_history``
  windows of history — a host never seen before is not judged;
- it is far above its peers: ``peer_factor`` times the ``peer_quantile`` of the other hosts of the same
  institution active in the window (skipped when fewer than ``min_peers`` are; the peers are the hosts
  this detector instance sees, i.e. those behind the sensors of its partition);
- most of it (``min_new_share``) goes to unfamiliar destinations: ones the host never sent to (within
  ``destination_ttl_s``), or only ever sent at most ``c2_max_bytes`` per window.

A destination is learned in the window it is first used, so one transfer alerts once, where it starts;
a host's usual services stay familiar however much it sends them (a large upload to the corporate cloud
drive is not exfiltration here) — and so would an attacker's destination warmed up beforehand with more
than ``c2_max_bytes`` in a window.

The nightly backup to the usual off-site store goes to a familiar destination; a software-distribution
server that pushes gigabytes every window does not exceed its own history.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms
from taishi.detectors.beaconing import column_codes, dense_ids

_MAD_TO_SIGMA = 1.4826  # scales a MAD to a standard deviation for normal data


class ExfiltrationParams(DetectorParams):
    """Tunables of the exfiltration detector."""

    min_bytes: int = Field(
        100_000_000, ge=1, description="bytes a host sends outside in one window before it is judged"
    )
    baseline_windows: int = Field(96, ge=4, description="active windows of a host's own volume remembered")
    min_history: int = Field(6, ge=1, description="windows of history before a host can be judged")
    mad_k: float = Field(8.0, gt=0, description="scaled MADs above the host's median volume")
    own_factor: float = Field(10.0, ge=1, description="times the host's median volume")
    peer_factor: float = Field(10.0, ge=1, description="times the peer group's volume quantile")
    peer_quantile: float = Field(0.9, ge=0.5, le=1, description="quantile of the other hosts' volumes")
    min_peers: int = Field(5, ge=1, description="other active hosts needed for the peer comparison")
    min_new_share: float = Field(
        0.5, gt=0, le=1, description="share of the volume that must go to unfamiliar destinations"
    )
    c2_max_bytes: int = Field(
        65_536, ge=0, description="a destination only ever sent this much per window is still unfamiliar"
    )
    c2_min_windows: int = Field(
        6, ge=1, description="windows of such small talk that make a destination a likely C2 (T1041)"
    )
    max_destinations: int = Field(1_024, ge=8, description="destinations remembered per host")
    destination_ttl_s: int = Field(30 * 86_400, ge=3600, description="a destination unused this long is new")
    host_ttl_s: int = Field(30 * 86_400, ge=3600, description="a host silent this long is forgotten")
    max_hosts: int = Field(100_000, ge=10, description="hosts remembered (least recently seen evicted)")


def exfil_score(
    bytes_out: float,
    unfamiliar_bytes: float,
    history: Any,
    peers: Any,
    *,
    min_history: int = 6,
    mad_k: float = 8.0,
    own_factor: float = 10.0,
    peer_factor: float = 10.0,
    peer_quantile: float = 0.9,
    min_peers: int = 5,
    min_new_share: float = 0.5,
) -> tuple[float, dict[str, float]]:
    """0..100: 60 when the volume just clears both bounds, +10 per doubling beyond the nearer one,
    scaled by the unfamiliar share (0.6 + 0.4 · share); 0 when any condition fails.

    ``history``: the host's earlier window volumes; ``peers``: the other hosts' volumes in this window.
    """
    hist = np.asarray(history, np.float64)
    peer = np.asarray(peers, np.float64)
    share = unfamiliar_bytes / bytes_out if bytes_out > 0 else 0.0
    parts: dict[str, float] = {"history_windows": len(hist), "peers": len(peer), "new_share": round(share, 3)}
    if len(hist) < min_history or bytes_out <= 0:
        return 0.0, parts
    med = float(np.median(hist))
    mad = float(np.median(np.abs(hist - med)))
    own_bound = max(med + mad_k * _MAD_TO_SIGMA * mad, own_factor * med, 1.0)
    parts.update(baseline_median=round(med), baseline_mad=round(mad), own_bound=round(own_bound))
    excess = bytes_out / own_bound
    if len(peer) >= min_peers:
        peer_bound = max(peer_factor * float(np.quantile(peer, peer_quantile)), 1.0)
        parts["peer_bound"] = round(peer_bound)
        excess = min(excess, bytes_out / peer_bound)
    parts["excess"] = round(excess, 2)
    if excess < 1 or share < min_new_share:
        return 0.0, parts
    score = min(100.0, 60.0 + 10.0 * math.log2(excess)) * (0.6 + 0.4 * share)
    return round(score, 1), parts


class Exfiltration(WindowedDetector):
    """Upload volume far above the host's history and its peers, to unfamiliar destinations."""

    id = "exfiltration"
    name = "Data exfiltration"
    techniques = ("T1048", "T1041")
    Params = ExfiltrationParams
    params: ExfiltrationParams

    def __init__(self, params: ExfiltrationParams | None = None) -> None:
        super().__init__(params)
        # "org|host" -> {"last": ms, "vols": [bytes per active window], "dsts": {ip: [last ms, windows, max]}}
        self._hosts: dict[str, dict[str, Any]] = {}

    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        m = flows["taishi.source.internal"].to_numpy(bool) & ~flows["taishi.destination.internal"].to_numpy(
            bool
        )
        if not m.any():
            return flows.iloc[:0]
        cols = [column_codes(flows[c], m) for c in ("organization.id", "source.ip", "destination.ip")]
        code = np.zeros(int(m.sum()), np.int64)
        for c, u in cols:
            code, _ = dense_ids(code * len(u) + c)
        order = np.argsort(code, kind="stable")
        starts = np.flatnonzero(np.diff(code[order], prepend=-1))
        pick = order[starts]
        sensor, sensors = column_codes(flows["observer.name"], m)
        ts = epoch_ms(flows["@timestamp"])[m][order]
        end = epoch_ms(flows["event.end"])[m][order] if "event.end" in flows.columns else ts
        org, src, dst = (pd.Series(u[c[pick]], dtype=object, copy=False) for c, u in cols)
        return pd.DataFrame(
            {
                "org": org,
                "src": src,
                "dst": dst,
                "bytes": np.add.reduceat(flows["source.bytes"].to_numpy()[m][order], starts),
                "flows": np.diff(np.append(starts, len(order))),
                "first": np.minimum.reduceat(ts, starts),
                "last": np.maximum.reduceat(end, starts),
                "sensor": pd.Series(sensors[sensor[pick]], dtype=object, copy=False),
            }
        )

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        p = self.params
        g = _reduce(frame)
        order, starts = _groups(g["org"].to_numpy(), g["src"].to_numpy())
        hosts = pd.DataFrame(
            {
                "org": pd.Series(g["org"].to_numpy()[order[starts]], dtype=object, copy=False),
                "src": pd.Series(g["src"].to_numpy()[order[starts]], dtype=object, copy=False),
                "bytes": np.add.reduceat(g["bytes"].to_numpy()[order], starts),
                "flows": np.add.reduceat(g["flows"].to_numpy()[order], starts),
                "last": np.maximum.reduceat(g["last"].to_numpy()[order], starts),
            }
        )
        out: list[Finding] = []
        heavy = hosts[hosts["bytes"] >= p.min_bytes]
        for row in heavy.itertuples(index=False):
            org, src = str(row.org), str(row.src)
            peers = hosts.loc[(hosts["org"] == org) & (hosts["src"] != src), "bytes"].to_numpy()
            rows = g[(g["org"] == org) & (g["src"] == src)]
            finding = self._judge(start_ms, end_ms, org, src, row, rows, peers)
            if finding is not None:
                out.append(finding)
        self._remember(g, hosts)
        return out

    def _judge(
        self,
        start_ms: int,
        end_ms: int,
        org: str,
        src: str,
        row: Any,
        rows: pd.DataFrame,
        peers: np.ndarray,
    ) -> Finding | None:
        p = self.params
        mem = self._hosts.get(f"{org}|{src}", {"vols": [], "dsts": {}})
        horizon = start_ms - p.destination_ttl_s * 1000
        unfamiliar: list[tuple[int, str, str]] = []  # (bytes, destination, kind)
        for dst, b in zip(rows["dst"], rows["bytes"], strict=True):
            seen = mem["dsts"].get(dst)
            if seen is None or seen[0] < horizon:
                unfamiliar.append((int(b), str(dst), "new_destination"))
            elif seen[2] <= p.c2_max_bytes:
                kind = "c2_channel" if seen[1] >= p.c2_min_windows else "rare_destination"
                unfamiliar.append((int(b), str(dst), kind))
        unfamiliar.sort(reverse=True)
        score, parts = exfil_score(
            float(row.bytes),
            float(sum(u[0] for u in unfamiliar)),
            mem["vols"],
            peers,
            min_history=p.min_history,
            mad_k=p.mad_k,
            own_factor=p.own_factor,
            peer_factor=p.peer_factor,
            peer_quantile=p.peer_quantile,
            min_peers=p.min_peers,
            min_new_share=p.min_new_share,
        )
        if score <= 0:
            return None
        top_bytes, top_dst, kind = unfamiliar[0]
        evidence: dict[str, Any] = {
            "kind": kind,
            "bytes_out": int(row.bytes),
            "flows": int(row.flows),
            "destination_bytes": top_bytes,
            "unfamiliar_destinations": [{"ip": d, "bytes": b, "kind": k} for b, d, k in unfamiliar[:5]],
            "min_bytes": p.min_bytes,
            **parts,
        }
        top = rows[rows["dst"] == top_dst]
        return Finding(
            rule_id=self.id,
            org=org,
            entity_ip=src,
            window_start_ms=start_ms,
            window_end_ms=end_ms,
            score=score,
            evidence=evidence,
            technique="T1041" if kind == "c2_channel" else "T1048",
            sensor=str(top["sensor"].iloc[0]),
            source_ip=src,
            destination_ip=top_dst,
            related_ips=[src] + [d for _, d, _ in unfamiliar[:10]],
            first_seen_ms=int(top["first"].min()),
            last_seen_ms=int(top["last"].max()),
        )

    def _remember(self, g: pd.DataFrame, hosts: pd.DataFrame) -> None:
        """Fold the window into each host's volume history and destination memory, within bounds."""
        p = self.params
        for org, src, vol, last in zip(
            hosts["org"], hosts["src"], hosts["bytes"], hosts["last"], strict=True
        ):
            key = f"{org}|{src}"
            mem = self._hosts.get(key)
            if mem is None:
                mem = self._hosts[key] = {"last": 0, "vols": [], "dsts": {}}
            mem["last"] = max(mem["last"], int(last))
            mem["vols"].append(int(vol))
            del mem["vols"][: -p.baseline_windows]
        cols = zip(g["org"], g["src"], g["dst"], g["bytes"], g["last"], strict=True)
        for org, src, dst, b, last in cols:
            dsts = self._hosts[f"{org}|{src}"]["dsts"]
            seen = dsts.get(dst)
            if seen is None:
                dsts[str(dst)] = [int(last), 1, int(b)]
            else:
                seen[0], seen[1], seen[2] = max(seen[0], int(last)), seen[1] + 1, max(seen[2], int(b))
        for org, src in zip(hosts["org"], hosts["src"], strict=True):
            dsts = self._hosts[f"{org}|{src}"]["dsts"]
            if len(dsts) > p.max_destinations:  # forget the least recently used (expired ones first)
                for d in sorted(dsts, key=lambda d: dsts[d][0])[: len(dsts) - p.max_destinations]:
                    del dsts[d]
        now = int(hosts["last"].max()) if len(hosts) else 0
        horizon = now - p.host_ttl_s * 1000
        for key in [k for k, v in self._hosts.items() if v["last"] < horizon]:
            del self._hosts[key]
        if len(self._hosts) > p.max_hosts:
            for key in sorted(self._hosts, key=lambda k: self._hosts[k]["last"])[
                : len(self._hosts) - p.max_hosts
            ]:
                del self._hosts[key]

    def snapshot(self) -> dict[str, Any]:
        return {"hosts": self._hosts}

    def restore(self, state: dict[str, Any]) -> None:
        self._hosts = {
            k: {
                "last": int(v["last"]),
                "vols": [int(x) for x in v["vols"]],
                "dsts": {d: [int(a), int(b), int(c)] for d, (a, b, c) in v["dsts"].items()},
            }
            for k, v in state.get("hosts", {}).items()
        }


def _reduce(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (institution, host, destination): bytes, flows, first and last time, a sensor."""
    if len(frame) == 0:
        return frame
    order, starts = _groups(frame["org"].to_numpy(), frame["src"].to_numpy(), frame["dst"].to_numpy())
    pick = order[starts]
    return pd.DataFrame(
        {
            "org": pd.Series(frame["org"].to_numpy()[pick], dtype=object, copy=False),
            "src": pd.Series(frame["src"].to_numpy()[pick], dtype=object, copy=False),
            "dst": pd.Series(frame["dst"].to_numpy()[pick], dtype=object, copy=False),
            "bytes": np.add.reduceat(frame["bytes"].to_numpy()[order], starts),
            "flows": np.add.reduceat(frame["flows"].to_numpy()[order], starts),
            "first": np.minimum.reduceat(frame["first"].to_numpy()[order], starts),
            "last": np.maximum.reduceat(frame["last"].to_numpy()[order], starts),
            "sensor": pd.Series(frame["sensor"].to_numpy()[pick], dtype=object, copy=False),
        }
    )


def _groups(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by group (in key order) and where each group starts: a cheap groupby for reduceat."""
    code = np.zeros(len(keys[0]), np.int64)
    for k in keys:
        c, u = pd.factorize(k)
        code, _ = dense_ids(code * len(u) + c)  # re-densified each step: no overflow
    order = np.argsort(code, kind="stable")
    starts = np.flatnonzero(np.diff(code[order], prepend=-1))
    return order, starts
