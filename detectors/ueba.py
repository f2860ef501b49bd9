"""Entity behaviour anomalies: an internal host whose behaviour jumps on several features at once.

Per (institution, internal host, window) the detector computes eight features (``ueba_model.FEATURES``):
bytes out and in, connections started and received, the share of started connections that failed, distinct
peers, distinct destination ports, and the share of started connections that went outside the institution.
Counts and bytes are read on a log scale, shares as they are.

Each host keeps an EWMA mean and variance per feature (the idea of ``pipeline/baselines.py``; a cumulative
mean while young; a host's first, mostly partial window only makes it known), so a feature's *z-score* says
how far this window sits from the host's own habits, in deviations floored so that Poisson noise of a quiet
host is not news. Updates are Huber-capped: an odd window moves the baseline as if it were ``huber_k``
deviations away at most, and an alerted one with a quarter of the weight. A gradual change is absorbed by
the baseline window by window and stays quiet; a jump does not. An
IsolationForest (``ueba_model.BehaviourModel``) trained on recent hosts' z-score vectors says whether the
combination is rare in this network. A host fires when (1) it has enough history, (2) the forest calls the
window an outlier, and (3) at least ``min_features`` features rose by ``z_threshold`` deviations, spanning
at least ``min_aspects`` of three aspects — volume (bytes, connections), breadth (peers, ports) and mix
(failures, external share) — so a host that is merely busier (volume alone) stays quiet. The evidence names
the features that moved most with their values, baselines and z-scores.

Retraining: the detector keeps a bounded FIFO reservoir of recent, unalerted z-score vectors and ``retrain()``
fits a new forest on it — every ``retrain_every_windows`` closed windows (event time: replays and tests
repeat exactly), and/or on the wall clock via ``ueba_model.schedule_retraining``. New vectors wait in a
pending list until the next retraining, so the current model is always ``fit(reservoir)``: a snapshot holds
the baselines, reservoir, pending vectors and a reference (path + SHA-256) to the versioned model file when
``model_dir`` is set; restore loads that file, or refits the same model from the reservoir when it is
missing or differs (the exception: a snapshot taken while a scheduled retraining is still fitting restores
the newer model). Until the first model exists (``min_train`` vectors) the detector does not fire.

ATT&CK: no single technique. The profile of what moved picks one: ports or failures → T1046 Network Service
Discovery; bytes out → T1048 Exfiltration Over Alternative Protocol; otherwise T1071 Application Layer
Protocol (a new pattern of talking out).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from taishi.detectors.base import DetectorParams, Finding, WindowedDetector, epoch_ms
from taishi.detectors.ueba_model import (
    FEATURES,
    SCHEMA,
    BehaviourModel,
    ModelRef,
    load_model,
    ref_from_json,
    ref_to_json,
    save_model,
)
from taishi.pipeline.baselines import ewma_update
from taishi.pipeline.codes import codes_of, union_codes

log = logging.getLogger(__name__)

NF = len(FEATURES)
LOG_FEATURES = np.array([f not in ("failed_ratio", "external_share") for f in FEATURES])
ASPECTS = {
    "volume": ("bytes_out", "bytes_in", "connections_out", "connections_in"),
    "breadth": ("distinct_peers", "distinct_ports"),
    "mix": ("failed_ratio", "external_share"),
}
_ASPECT_OF = np.array([next(i for i, fs in enumerate(ASPECTS.values()) if f in fs) for f in FEATURES])
_STATE_VERSION = 1
_SWEEP_EVERY = 16  # windows between TTL sweeps of the entity baselines


class UebaParams(DetectorParams):
    """Tunables of the entity-behaviour detector."""

    alpha: float = Field(0.1, gt=0, le=1, description="EWMA weight of a host's newest window in its baseline")
    min_history: int = Field(12, ge=2, description="windows a host must have been seen in before it can fire")
    z_threshold: float = Field(3.0, gt=0, description="a feature moved when it rose this many deviations")
    min_features: int = Field(3, ge=1, le=NF, description="features that must move together to fire")
    min_aspects: int = Field(
        2, ge=1, le=3, description="aspects (volume, breadth, mix) the moved features must span"
    )
    min_connections: int = Field(
        20,
        ge=0,
        description="connections (started + received) in the window needed to fire: quiet hosts' shares are noise",
    )
    log_std_floor: float = Field(
        0.25, gt=0, description="smallest deviation of a log-scale feature (0.25: about a quarter up or down)"
    )
    ratio_std_floor: float = Field(0.05, gt=0, description="smallest deviation of a share (failed, external)")
    huber_k: float = Field(
        3.0, gt=0, description="a window moves its host's baseline as if at most this many deviations away"
    )
    anomalous_weight: float = Field(
        0.25, ge=0, le=1, description="share of alpha with which an alerted window still updates the baseline"
    )
    reservoir_size: int = Field(1000, ge=50, description="recent z-score vectors the model is trained on")
    min_train: int = Field(100, ge=10, description="vectors needed before the first model is trained")
    retrain_every_windows: int = Field(
        12, ge=0, description="retrain every N closed windows (event time); 0: only when retrain() is called"
    )
    n_estimators: int = Field(100, ge=10, description="trees of the IsolationForest")
    max_samples: int = Field(256, ge=16, description="vectors per tree (the forest paper's default)")
    contamination: float = Field(
        0.02, gt=0, lt=0.5, description="share of training vectors the forest sets apart as outliers"
    )
    random_state: int = Field(0, description="seed of the forest: same reservoir, same model")
    model_dir: Path | None = Field(
        None, description="directory of versioned model files; None keeps models in memory (refit on restore)"
    )
    max_entities: int = Field(20_000, ge=10, description="hosts whose baselines are kept (bounded state)")
    entity_ttl_s: int = Field(7 * 86400, ge=3600, description="a host unseen this long is forgotten")


def model_scale(raw: np.ndarray) -> np.ndarray:
    """Raw feature values (rows × ``FEATURES``) on the scale baselines are kept: log1p for counts and bytes."""
    x = np.array(raw, dtype=np.float64)
    x[:, LOG_FEATURES] = np.log1p(np.maximum(x[:, LOG_FEATURES], 0))
    return x


def zscores(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, log_floor: float, ratio_floor: float
) -> np.ndarray:
    """Deviation of each feature from the host's baseline in floored standard deviations; 0 where unknown."""
    floor = np.where(LOG_FEATURES, log_floor, ratio_floor)
    std = np.maximum(np.sqrt(np.maximum(np.nan_to_num(var), 0)), floor)
    z = (x - mean) / std
    return np.where(np.isfinite(z), z, 0.0)


def moved_aspects(moved: np.ndarray) -> np.ndarray:
    """How many of the aspects (volume, breadth, mix) each row's moved features span."""
    return np.stack([moved[:, a == _ASPECT_OF].any(axis=1) for a in range(len(ASPECTS))], axis=1).sum(axis=1)


def ueba_score(anomaly: float, moved: int, max_z: float, z_threshold: float) -> float:
    """0..100: 40 for a firing window, up to +30 for the forest's anomaly score (0.5 → 0, 0.75 → full),
    +15 for how many features moved (3 → a quarter, 6 → full), +15 for how far (threshold → 0, 4× → full)."""
    if moved <= 0 or max_z < z_threshold:
        return 0.0
    a = min(1.0, max(0.0, (anomaly - 0.5) / 0.25))
    b = min(1.0, max(0.0, (moved - 2) / 4))
    c = min(1.0, max(0.0, math.log2(max_z / z_threshold) / 2))
    return round(40 + 30 * a + 15 * b + 15 * c, 1)


def baseline_step(
    mean: np.ndarray, var: np.ndarray, x: np.ndarray, alpha: np.ndarray, reach: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """EWMA update of per-host baselines (rows), Huber style: a value further than ``reach`` from the
    mean counts as if it were at ``reach``, so one odd window (a host's partial first window, an incident)
    neither drags the mean nor inflates the spread, while a lasting change still gets learnt step by step.
    A feature seen for the first time starts at its value; an unknown value (NaN: a share of no
    connections) leaves the feature as it was."""
    capped = mean + np.clip(x - mean, -reach, reach)
    new_mean, new_var = ewma_update(mean, var, capped, alpha[:, None])
    first = np.isnan(mean) & ~np.isnan(x)
    new_mean = np.where(first, x, np.where(np.isnan(x), mean, new_mean))
    new_var = np.where(first, 0.0, np.where(np.isnan(x), var, new_var))
    return new_mean, new_var


def _profile(moved: set[str]) -> tuple[str, str]:
    """(evidence kind, technique) from what moved."""
    if moved & {"distinct_ports", "failed_ratio"}:
        return "discovery", "T1046"
    if "bytes_out" in moved:
        return "exfiltration", "T1048"
    return "activity", "T1071"


class EntityBehaviour(WindowedDetector):
    """Internal hosts whose window behaviour jumps on several features against their own baseline."""

    id = "ueba"
    name = "Entity behaviour anomaly"
    techniques = ("T1046", "T1048", "T1071")
    Params = UebaParams
    params: UebaParams

    _SUMS = ("bytes_out", "bytes_in", "connections_out", "connections_in", "failed_out", "external_out")

    def __init__(self, params: UebaParams | None = None) -> None:
        super().__init__(params)
        # "org|host" -> [windows seen, last window start, mean × NF, var × NF] (NaN: feature not seen yet)
        self._base: dict[str, list[float]] = {}
        self._reservoir: deque[list[float]] = deque(maxlen=self.params.reservoir_size)
        self._pending: deque[list[float]] = deque(maxlen=self.params.reservoir_size)
        self._windows = 0
        self._fits = 0
        self._model: BehaviourModel | None = None
        self._ref: ModelRef | None = None
        self._lock = threading.Lock()  # retrain() may run on a scheduler thread

    # Windows ------------------------------------------------------------------------------------------
    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        src_int = flows["taishi.source.internal"].to_numpy(bool)
        dst_int = flows["taishi.destination.internal"].to_numpy(bool)
        if not (src_int.any() or dst_int.any()):
            return flows.iloc[:0]
        org, org_v = codes_of(flows["organization.id"])
        sensor, sensor_v = codes_of(flows["observer.name"])
        s, d, ip_v = union_codes(flows["source.ip"], flows["destination.ip"])
        sb = flows["source.bytes"].to_numpy(np.int64)
        db = flows["destination.bytes"].to_numpy(np.int64)
        failed = (flows["network.iana_number"].to_numpy() == 6) & (db == 0)
        port = flows["destination.port"].to_numpy(np.int64)
        ts = epoch_ms(flows["@timestamp"])
        o, i = np.flatnonzero(src_int), np.flatnonzero(dst_int)
        # Each flow once from each internal end: as the host that started it (o) and the one that got it (i).
        n_ip = len(ip_v) + 1
        host = np.concatenate([s[o], d[i]])
        peer = np.concatenate([d[o], s[i]])
        entity = np.concatenate([org[o], org[i]]) * n_ip + host  # (org, host) as one integer
        started = np.concatenate([np.ones(len(o), bool), np.zeros(len(i), bool)])
        ents, inv = np.unique(entity, return_inverse=True)
        k = len(ents)

        def total(v: np.ndarray) -> np.ndarray:
            return np.bincount(inv, weights=v, minlength=k).astype(np.int64)

        order = np.argsort(inv, kind="stable")
        bounds = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
        t = np.concatenate([ts[o], ts[i]])[order]
        sums = {
            "bytes_out": total(np.concatenate([sb[o], db[i]])),
            "bytes_in": total(np.concatenate([db[o], sb[i]])),
            "connections_out": np.bincount(inv, weights=started, minlength=k).astype(np.int64),
            "connections_in": np.bincount(inv, weights=~started, minlength=k).astype(np.int64),
            "failed_out": total(np.concatenate([failed[o], np.zeros(len(i), bool)])),
            "external_out": total(np.concatenate([~dst_int[o], np.zeros(len(i), bool)])),
            "sensor": np.append(sensor_v, "")[np.concatenate([sensor[o], sensor[i]])[order][bounds]],
            "first": np.minimum.reduceat(t, bounds),
            "last": np.maximum.reduceat(t, bounds),
        }
        pairs = np.unique(entity * n_ip + peer)
        ports = np.unique(entity[started] * 65536 + np.concatenate([port[o], port[i]])[started])
        ip_x = np.append(ip_v, "")
        org_of, host_of = ents // n_ip, ents % n_ip
        pair_e, port_e = pairs // n_ip, ports // 65536
        zeros = np.zeros(len(pairs) + len(ports), np.int64)

        def col(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
            return np.concatenate([a, b, c])

        # One frame, three kinds of row (``part``): per-host sums, distinct peers, distinct ports started to.
        # Codes are per batch, so the small result goes back to strings.
        return pd.DataFrame(
            {
                "part": np.repeat(np.array([0, 1, 2], np.int8), [k, len(pairs), len(ports)]),
                "org": org_v[col(org_of, pair_e // n_ip, port_e // n_ip)],
                "host": ip_x[col(host_of, pair_e % n_ip, port_e % n_ip)],
                "peer": ip_x[col(np.full(k, -1), pairs % n_ip, np.full(len(ports), -1))],
                "port": col(np.full(k, -1), np.full(len(pairs), -1), ports % 65536),
                **{c: np.concatenate([v, zeros]) for c, v in sums.items() if c != "sensor"},
                "sensor": np.concatenate([sums["sensor"], np.full(len(zeros), "", object)]),
            }
        )

    def window_features(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Raw ``FEATURES`` per (org, host) of a window's partials, with sensor and first/last seen.

        Columns as arrays (a row per host, sorted by institution and address): pandas' column inserts
        would cost more than the arithmetic.
        """
        col = {c: frame[c].to_numpy() for c in frame.columns}
        org, org_v = pd.factorize(col["org"])
        host, host_v = pd.factorize(col["host"])
        ents, e = np.unique(org.astype(np.int64) * len(host_v) + host, return_inverse=True)
        k = len(ents)
        part = col["part"]
        m = part == 0
        em = e[m]
        out: dict[str, np.ndarray] = {
            "org": np.asarray(org_v, object)[ents // len(host_v)],
            "host": np.asarray(host_v, object)[ents % len(host_v)],
        }
        for c in self._SUMS:
            out[c] = np.bincount(em, weights=col[c][m], minlength=k).astype(np.int64)
        first = np.full(k, np.iinfo(np.int64).max)
        np.minimum.at(first, em, col["first"][m].astype(np.int64))
        last = np.zeros(k, np.int64)
        np.maximum.at(last, em, col["last"][m].astype(np.int64))
        out["first"], out["last"] = first, last
        sensor = np.full(k, "", dtype=object)
        seen, at = np.unique(em, return_index=True)
        sensor[seen] = col["sensor"][m][at]
        out["sensor"] = sensor
        pm = part == 1
        peer, peer_v = pd.factorize(col["peer"][pm])
        n_peer = len(peer_v) + 1
        pairs = np.unique(e[pm].astype(np.int64) * n_peer + peer)
        out["distinct_peers"] = np.bincount(pairs // n_peer, minlength=k)
        qm = part == 2
        ports = np.unique(e[qm].astype(np.int64) * 65536 + col["port"][qm].astype(np.int64))
        out["distinct_ports"] = np.bincount(ports // 65536, minlength=k)
        started = out["connections_out"].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["failed_ratio"] = np.where(started > 0, out["failed_out"] / started, np.nan)
            out["external_share"] = np.where(started > 0, out["external_out"] / started, np.nan)
        return out

    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        p = self.params
        w = self.window_features(frame)
        if not len(w["host"]):
            return []
        keys = [f"{o}|{h}" for o, h in zip(w["org"], w["host"], strict=True)]
        raw = np.stack([w[f].astype(np.float64) for f in FEATURES], axis=1)
        x = model_scale(raw)
        empty = [0.0, -1.0, *([math.nan] * NF), *([math.nan] * NF)]
        with self._lock:
            state = np.array([self._base.get(k, empty) for k in keys], np.float64)
            model, ref, fits = self._model, self._ref, self._fits
        seen, last = state[:, 0], state[:, 1]
        mean, var = state[:, 2 : 2 + NF], state[:, 2 + NF :]
        z = zscores(x, mean, var, p.log_std_floor, p.ratio_std_floor)
        activity = w["connections_out"] + w["connections_in"]
        fresh = (
            last < start_ms
        )  # an older window than the host's last (out of order) neither fires nor learns
        eligible = fresh & (seen >= p.min_history) & (activity >= p.min_connections)
        moved = z >= p.z_threshold
        n_moved = moved.sum(axis=1)
        anomaly = np.full(len(keys), np.nan)
        outlier = np.zeros(len(keys), bool)
        if model is not None and eligible.any():
            anomaly[eligible] = model.score_samples(z[eligible])
            outlier[eligible] = anomaly[eligible] > model.threshold_
        fire = eligible & outlier & (n_moved >= p.min_features) & (moved_aspects(moved) >= p.min_aspects)

        out = [
            self._finding(
                start_ms,
                end_ms,
                {c: v[r] for c, v in w.items()},
                raw[r],
                mean[r],
                var[r],
                z[r],
                float(anomaly[r]),
                int(seen[r]),
                ref,
                fits,
            )
            for r in np.flatnonzero(fire)
        ]

        # A cumulative mean while the host is young (its first window only counts as seen, see below).
        alpha = np.maximum(p.alpha, 1.0 / np.maximum(seen, 1))
        alpha = np.where(fire, alpha * p.anomalous_weight, alpha)
        floor = np.where(LOG_FEATURES, p.log_std_floor, p.ratio_std_floor)
        reach = p.huber_k * np.maximum(np.sqrt(np.maximum(np.nan_to_num(var), 0)), floor)
        new_mean, new_var = baseline_step(mean, var, x, alpha, reach)
        # A host's first window is mostly partial (it appeared, or the stream began, mid-window): it makes
        # the host known but teaches its baseline nothing.
        new_mean[seen == 0] = np.nan
        new_var[seen == 0] = np.nan
        learn = eligible & ~fire
        with self._lock:
            for r in np.flatnonzero(fresh):
                self._base[keys[r]] = [
                    float(seen[r] + 1),
                    float(start_ms),
                    *np.round(new_mean[r], 6).tolist(),
                    *np.round(new_var[r], 6).tolist(),
                ]
            self._pending.extend(np.round(z[learn], 4).tolist())
        self._windows += 1
        self._bound(start_ms)
        if p.retrain_every_windows and self._windows % p.retrain_every_windows == 0:
            self.retrain(trained_at_ms=end_ms)
        return out

    def _finding(
        self,
        start_ms: int,
        end_ms: int,
        row: dict[str, Any],
        raw: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        z: np.ndarray,
        anomaly: float,
        seen: int,
        ref: ModelRef | None,
        fits: int,
    ) -> Finding:
        p = self.params
        order = np.argsort(-z, kind="stable")
        moved_names = {FEATURES[i] for i in range(NF) if z[i] >= p.z_threshold}
        kind, technique = _profile(moved_names)
        typical = np.where(LOG_FEATURES, np.expm1(np.nan_to_num(mean)), np.nan_to_num(mean))
        spread = np.sqrt(np.maximum(np.nan_to_num(var), 0))
        moved = [
            {
                "feature": FEATURES[i],
                "value": _num(raw[i]),
                "baseline": _num(typical[i]),
                "baseline_std": round(float(spread[i]), 3),
                "z": round(float(z[i]), 2),
                "scale": "log1p" if LOG_FEATURES[i] else "share",
            }
            for i in order[:5]
            if z[i] >= p.z_threshold
        ]
        host = str(row["host"])
        return Finding(
            rule_id=self.id,
            org=str(row["org"]),
            entity_ip=host,
            window_start_ms=start_ms,
            window_end_ms=end_ms,
            score=ueba_score(anomaly, len(moved_names), float(z.max()), p.z_threshold),
            evidence={
                "kind": kind,
                "anomaly_score": round(anomaly, 3),
                "moved": moved,
                "features": {f: _num(v) for f, v in zip(FEATURES, raw, strict=True)},
                "baseline_windows": seen,
                "z_threshold": p.z_threshold,
                "model": {
                    "version": ref.version if ref else f"{SCHEMA}.{fits}",
                    "sha256": ref.sha256 if ref else "",
                },
            },
            technique=technique,
            sensor=str(row["sensor"]),
            source_ip=host,
            related_ips=[host],
            first_seen_ms=int(row["first"]),
            last_seen_ms=int(row["last"]),
        )

    # Model --------------------------------------------------------------------------------------------
    def _estimator(self) -> BehaviourModel:
        p = self.params
        return BehaviourModel(
            n_estimators=p.n_estimators,
            max_samples=p.max_samples,
            contamination=p.contamination,
            random_state=p.random_state,
        )

    def retrain(self, trained_at_ms: int | None = None) -> bool:
        """Fold the pending vectors into the reservoir and fit a new model on it; False when too few."""
        with self._lock:
            self._reservoir.extend(self._pending)
            self._pending.clear()
            data = np.array(self._reservoir, np.float64)
            sequence = self._fits + 1
        if len(data) < self.params.min_train:
            return False
        model = self._estimator().fit(data)
        ref = None
        if self.params.model_dir is not None:
            meta = {
                "detector": self.id,
                "trained_on": len(data),
                "trained_at_event_ms": trained_at_ms,
                "detector_params": self.params.model_dump(mode="json"),
            }
            ref = save_model(model, self.params.model_dir, sequence, meta)
        with self._lock:
            self._model, self._ref, self._fits = model, ref, sequence
        log.info("ueba: model %s.%d trained on %d vectors", SCHEMA, sequence, len(data))
        return True

    # State --------------------------------------------------------------------------------------------
    def _bound(self, now_ms: int) -> None:
        """Forget hosts unseen for the TTL (now and then) and the longest-unseen tenth when over the cap."""
        p = self.params
        with self._lock:
            if self._windows % _SWEEP_EVERY == 0:
                horizon = now_ms - p.entity_ttl_s * 1000
                for k in [k for k, v in self._base.items() if v[1] < horizon]:
                    del self._base[k]
            if len(self._base) > p.max_entities:
                by_age = sorted(self._base, key=lambda k: (self._base[k][1], k))
                for k in by_age[: len(self._base) - p.max_entities + p.max_entities // 10]:
                    del self._base[k]

    def snapshot(self) -> dict[str, Any]:
        """Baselines, reservoir, pending vectors and the model's file reference; NaN is stored as None."""
        with self._lock:
            return {
                "version": _STATE_VERSION,
                "windows": self._windows,
                "fits": self._fits,
                "entities": {
                    k: [None if math.isnan(v) else v for v in vals] for k, vals in self._base.items()
                },
                "reservoir": [list(v) for v in self._reservoir],
                "pending": [list(v) for v in self._pending],
                "model": ref_to_json(self._ref),
            }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("version", _STATE_VERSION) != _STATE_VERSION:
            raise ValueError(f"ueba state version {state.get('version')}, expected {_STATE_VERSION}")
        p = self.params
        self._windows = int(state.get("windows", 0))
        self._fits = int(state.get("fits", 0))
        self._base = {
            k: [math.nan if v is None else float(v) for v in vals]
            for k, vals in state.get("entities", {}).items()
        }
        self._reservoir = deque(
            (list(map(float, v)) for v in state.get("reservoir", [])), maxlen=p.reservoir_size
        )
        self._pending = deque(
            (list(map(float, v)) for v in state.get("pending", [])), maxlen=p.reservoir_size
        )
        self._ref = ref_from_json(state.get("model"))
        self._model = None
        if self._ref is not None:
            try:
                self._model = load_model(self._ref)
                return
            except (OSError, ValueError) as exc:
                log.warning("ueba: %s; refitting the model from the restored reservoir", exc)
                self._ref = None
        if self._fits and len(self._reservoir) >= p.min_train:
            # The reservoir is exactly what the last model was fitted on, so this is the same model.
            self._model = self._estimator().fit(np.array(self._reservoir, np.float64))


def _num(v: float) -> float | int | None:
    """A feature value for the evidence: integers as such, shares rounded, unknown as None."""
    if v is None or math.isnan(v):
        return None
    return round(float(v)) if float(v).is_integer() or abs(v) >= 100 else round(float(v), 3)
