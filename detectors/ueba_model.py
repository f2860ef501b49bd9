"""The behaviour model of the UEBA detector: an IsolationForest behind a scikit-learn style adapter.

The model sees each entity-window as its features' deviations from the entity's own baseline (z-scores,
see ``ueba.py``), so one forest serves servers and workstations alike: it learns which combinations of
deviations are ordinary in this network and isolates the rare ones quickly.

``BehaviourModel`` keeps scikit-learn's manners: ``__init__`` stores parameters, ``fit`` returns self,
learned state ends in ``_``. Trained models are versioned files, ``ueba-<version>-<hash>.joblib`` in a
configured directory, where version is ``<feature schema>.<training sequence>`` and hash the first 12 hex
digits of the file's SHA-256; a JSON file beside each holds its metadata. Loading checks the whole hash
and the feature schema. Joblib files are pickles: load them only from a directory you trust.

``schedule_retraining`` retrains on the wall clock with APScheduler for deployments that want it; the
detector's own event-time schedule (every N windows) keeps replays identical and is what tests use.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

# The features, in model column order. Changing them changes SCHEMA, and older model files stop loading.
FEATURES = (
    "bytes_out",
    "bytes_in",
    "connections_out",
    "connections_in",
    "failed_ratio",
    "distinct_peers",
    "distinct_ports",
    "external_share",
)
SCHEMA = 1


class BehaviourModel:
    """IsolationForest over clipped z-score vectors; higher ``score_samples`` means more anomalous.

    scikit-learn is imported on the first ``fit``/load, not with the detector: every pipeline process
    loads every registered detector, most never train. ``get_params``/``set_params`` follow scikit-learn,
    so ``sklearn.base.clone`` and grid searches work on it.
    """

    _PARAMS = ("n_estimators", "max_samples", "contamination", "z_clip", "random_state")

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: int = 256,
        contamination: float = 0.01,
        z_clip: float = 8.0,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.contamination = contamination
        self.z_clip = z_clip
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters (scikit-learn's estimator interface)."""
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params: Any) -> BehaviourModel:
        """Set constructor parameters; unknown names are refused."""
        for k, v in params.items():
            if k not in self._PARAMS:
                raise ValueError(f"BehaviourModel has no parameter {k!r}; it has {list(self._PARAMS)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"BehaviourModel({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _clip(self, X: Any) -> np.ndarray:
        # Beyond a few deviations more says nothing new, and unbounded values would dominate the splits.
        return np.clip(np.nan_to_num(np.asarray(X, dtype=np.float64)), -self.z_clip, self.z_clip)

    def fit(self, X: Any, y: Any = None) -> BehaviourModel:
        """Fit the forest on recent z-score vectors (rows: entity-windows, columns: ``FEATURES``)."""
        Xc = self._clip(X)
        if Xc.ndim != 2 or len(Xc) < 2:
            raise ValueError(f"BehaviourModel.fit: X must be 2-D with at least 2 rows, got shape {Xc.shape}")
        from sklearn.ensemble import IsolationForest

        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(Xc)),
            contamination=self.contamination,
            random_state=self.random_state,
        ).fit(Xc)
        self.threshold_ = float(-self.forest_.offset_)  # score_samples above it: an outlier
        self.n_features_in_ = Xc.shape[1]
        self.n_samples_fit_ = len(Xc)
        return self

    def _check(self, X: Any) -> np.ndarray:
        if not hasattr(self, "forest_"):
            raise ValueError("BehaviourModel is not fitted yet")
        Xc = self._clip(X)
        if Xc.ndim != 2 or Xc.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have {self.n_features_in_} columns, got shape {Xc.shape}")
        return Xc

    def score_samples(self, X: Any) -> np.ndarray:
        """Anomaly score in (0, 1] (the forest paper's s(x, n)): about 0.5 ordinary, towards 1 isolated."""
        Xc = self._check(X)
        return np.asarray(-self.forest_.score_samples(Xc))

    def decision_function(self, X: Any) -> np.ndarray:
        """Negative for the outliers the contamination share sets apart, positive for inliers."""
        return self.threshold_ - self.score_samples(X)

    def predict(self, X: Any) -> np.ndarray:
        """-1 outlier, 1 inlier (scikit-learn's convention)."""
        return np.where(self.decision_function(X) < 0, -1, 1)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Where a trained model lives and how to recognise it: JSON-serialisable, for detector snapshots."""

    path: str
    sha256: str
    version: str


def save_model(
    model: BehaviourModel, directory: Path | str, sequence: int, metadata: dict[str, Any]
) -> ModelRef:
    """Write ``ueba-<schema>.<sequence>-<hash12>.joblib`` (+ ``.json`` metadata) atomically; return its ref."""
    version = f"{SCHEMA}.{sequence}"
    meta = {"schema": SCHEMA, "features": list(FEATURES), "version": version, "params": model.get_params()}
    meta.update(metadata)
    import joblib

    buf = io.BytesIO()
    joblib.dump({"schema": SCHEMA, "features": list(FEATURES), "model": model, "metadata": meta}, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ueba-{version}-{digest[:12]}.joblib"
    for target, content in ((path, data), (path.with_suffix(".json"), _json({**meta, "sha256": digest}))):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)
    return ModelRef(str(path), digest, version)


def load_model(ref: ModelRef) -> BehaviourModel:
    """Load a model file, refusing one whose SHA-256 or feature schema differs from what ``ref`` expects."""
    path = Path(ref.path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise ValueError(f"model file {path}: SHA-256 {digest} differs from the expected {ref.sha256}")
    import joblib

    payload = joblib.load(io.BytesIO(data))
    if payload.get("schema") != SCHEMA or tuple(payload.get("features", ())) != FEATURES:
        raise ValueError(
            f"model file {path}: feature schema {payload.get('schema')} {payload.get('features')}, "
            f"expected {SCHEMA} {list(FEATURES)}"
        )
    model = payload["model"]
    if not isinstance(model, BehaviourModel):
        raise ValueError(f"model file {path}: holds {type(model).__name__}, expected BehaviourModel")
    return model


def ref_to_json(ref: ModelRef | None) -> dict[str, Any] | None:
    """A ref as snapshot state."""
    return None if ref is None else asdict(ref)


def ref_from_json(state: dict[str, Any] | None) -> ModelRef | None:
    """Inverse of ``ref_to_json``."""
    return None if not state else ModelRef(str(state["path"]), str(state["sha256"]), str(state["version"]))


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()


class _Retrainable(Protocol):
    def retrain(self) -> bool: ...


class _HasDetectors(Protocol):
    @property
    def detectors(self) -> Sequence[object]: ...


def retrain_all(detector_sets: Iterable[_HasDetectors]) -> int:
    """Call ``retrain()`` on every detector that has one; how many trained a new model."""
    trained = 0
    for ds in detector_sets:
        for det in ds.detectors:
            retrain = getattr(det, "retrain", None)
            if callable(retrain):
                try:
                    trained += bool(retrain())
                except Exception:  # one failing partition must not stop the others' retraining
                    log.exception("retraining %s failed", getattr(det, "id", det))
    return trained


def schedule_retraining(detector_set_getter: Callable[[], Iterable[_HasDetectors]], interval_s: float) -> Any:
    """Start an APScheduler ``BackgroundScheduler`` retraining every ``interval_s`` seconds of wall time.

    ``detector_set_getter`` returns the current detector sets (partitions come and go). Returns the
    running scheduler; call ``shutdown()`` on it when the pipeline stops. Wall-clock retraining makes a
    replay's models depend on when it ran; leave the detectors' event-time retraining on where replays
    must be identical.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(
        lambda: retrain_all(detector_set_getter()),
        "interval",
        seconds=interval_s,
        id="ueba-retrain",
        max_instances=1,
        coalesce=True,
    )
    scheduler.start()
    return scheduler
