"""Per-entity baselines: state that outlives a window.

Each entity (institution, sensor, host) keeps an exponentially weighted mean and variance of a few behaviour
figures, updated when one of its windows closes; the entity-window document carries the baseline *before*
that window, so a window can be read against the entity's own history.

The state is checkpointed to a compacted Kafka topic keyed by entity, partition for partition, after the
documents were stored and before offsets are committed, and restored when a partition is assigned. A replay
re-closes windows whose update may already be in the checkpoint; each entity therefore remembers the
baseline it had before its last few windows, and a re-closed window gets exactly the baseline it got the
first time — so replays still write identical documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

FIGURES = ("bytes_out", "bytes_in", "connections_out", "distinct_peers")
_HISTORY = 8


@dataclass(slots=True)
class Baseline:
    """EWMA mean/variance per figure, and the values it had before its recent windows."""

    windows: int = 0
    first_seen_ms: int = 0
    mean: dict[str, float] = field(default_factory=dict)
    var: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (window start, view before it)

    def view(self) -> dict[str, Any]:
        """What an entity-window document shows of the baseline."""
        out: dict[str, Any] = {"windows": self.windows}
        if self.windows:
            out["first_seen"] = _iso(self.first_seen_ms)
            for f in FIGURES:
                out[f"{f}_mean"] = round(self.mean[f], 3)
                out[f"{f}_std"] = round(math.sqrt(max(self.var[f], 0.0)), 3)
        return out


def ewma_update(mean: float, var: float, x: float, alpha: float) -> tuple[float, float]:
    """One step of the exponentially weighted mean and variance (West's incremental form)."""
    diff = x - mean
    incr = alpha * diff
    return mean + incr, (1 - alpha) * (var + diff * incr)


class Baselines:
    """Baselines of the entities of one partition."""

    def __init__(self, alpha: float = 0.1, max_entities: int = 1_000_000) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.max_entities = max_entities
        self._state: dict[str, Baseline] = {}
        self._dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self._state)

    def apply(self, key: str, window_start_ms: int, figures: dict[str, float]) -> dict[str, Any]:
        """Baseline view before this window; updates the state unless this window was applied already."""
        b = self._state.get(key)
        if b is None:
            if len(self._state) >= self.max_entities:
                self._evict()
            b = self._state[key] = Baseline()
        for w, before in b.history:
            if w == window_start_ms:
                return before  # a replay re-closing a window: same baseline as the first time
        before = b.view()
        if b.history and window_start_ms < b.history[-1][0]:
            return before  # older than the entity's last window (out of order): show, don't learn
        if b.windows == 0:
            b.first_seen_ms = window_start_ms
            b.mean = {f: float(figures[f]) for f in FIGURES}
            b.var = dict.fromkeys(FIGURES, 0.0)
        else:
            for f in FIGURES:
                b.mean[f], b.var[f] = ewma_update(b.mean[f], b.var[f], float(figures[f]), self.alpha)
        b.windows += 1
        b.history = [*b.history[-(_HISTORY - 1) :], (window_start_ms, before)]
        self._dirty.add(key)
        return before

    def _evict(self) -> None:
        """Drop the tenth of entities seen longest ago (bounded state under churn)."""
        by_age = sorted(
            self._state, key=lambda k: self._state[k].history[-1][0] if self._state[k].history else 0
        )
        for k in by_age[: max(1, len(by_age) // 10)]:
            del self._state[k]
            self._dirty.discard(k)

    # Checkpointing -------------------------------------------------------------------------------------
    def take_dirty(self) -> list[tuple[bytes, bytes]]:
        """(key, value) records of the entities changed since the last call, for the compacted topic."""
        out = [
            (k.encode(), orjson.dumps(_encode(self._state[k])))
            for k in sorted(self._dirty)
            if k in self._state
        ]
        self._dirty.clear()
        return out

    def restore(self, records: list[tuple[bytes, bytes | None]]) -> None:
        """Load checkpoint records in topic order (a None value is a deletion)."""
        for key, value in records:
            k = key.decode()
            if value is None:
                self._state.pop(k, None)
            else:
                self._state[k] = _decode(orjson.loads(value))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _encode(b: Baseline) -> dict[str, Any]:
    return {
        "n": b.windows,
        "first": b.first_seen_ms,
        "mean": b.mean,
        "var": b.var,
        "hist": [[w, v] for w, v in b.history],
    }


def _decode(d: dict[str, Any]) -> Baseline:
    return Baseline(d["n"], d["first"], d["mean"], d["var"], [(int(w), v) for w, v in d["hist"]])
