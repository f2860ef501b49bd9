"""What every detector is: validated parameters, event-time windows, findings with evidence.

A detector sees the pipeline's admitted (not late) enriched flow rows, each tagged with its tumbling
window's start, in offset order, and is asked to ``close`` a window once the watermark passed it. Between
the two it keeps bounded per-window partial aggregates; across windows it may keep bounded per-entity
memory (keyed by ``organization.id`` plus the entity), which ``snapshot``/``restore`` carry through a
restart. Detectors import neither Kafka nor Elasticsearch; the pipeline turns findings into alerts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

# ATT&CK techniques the catalogue uses: id -> (name, tactic id, tactic name).
TECHNIQUES: dict[str, tuple[str, str, str]] = {
    "T1046": ("Network Service Discovery", "TA0007", "Discovery"),
    "T1595": ("Active Scanning", "TA0043", "Reconnaissance"),
    "T1595.001": ("Scanning IP Blocks", "TA0043", "Reconnaissance"),
    "T1110": ("Brute Force", "TA0006", "Credential Access"),
    "T1110.001": ("Password Guessing", "TA0006", "Credential Access"),
    "T1071": ("Application Layer Protocol", "TA0011", "Command and Control"),
    "T1071.001": ("Web Protocols", "TA0011", "Command and Control"),
    "T1071.004": ("DNS", "TA0011", "Command and Control"),
    "T1573": ("Encrypted Channel", "TA0011", "Command and Control"),
    "T1572": ("Protocol Tunneling", "TA0011", "Command and Control"),
    "T1568.002": ("Domain Generation Algorithms", "TA0011", "Command and Control"),
    "T1048": ("Exfiltration Over Alternative Protocol", "TA0010", "Exfiltration"),
    "T1048.003": ("Exfiltration Over Unencrypted Non-C2 Protocol", "TA0010", "Exfiltration"),
    "T1041": ("Exfiltration Over C2 Channel", "TA0010", "Exfiltration"),
    "T1498": ("Network Denial of Service", "TA0040", "Impact"),
    "T1498.001": ("Direct Network Flood", "TA0040", "Impact"),
    "T1498.002": ("Reflection Amplification", "TA0040", "Impact"),
    "T1021": ("Remote Services", "TA0008", "Lateral Movement"),
    "T1570": ("Lateral Tool Transfer", "TA0008", "Lateral Movement"),
    "T1590": ("Gather Victim Network Information", "TA0043", "Reconnaissance"),
    "T1078": ("Valid Accounts", "TA0001", "Initial Access"),
}


class DetectorParams(BaseModel):
    """Base of every detector's tunables: validated, immutable, documented per field."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(slots=True)
class Finding:
    """One detection: who, when (event time), how sure, and the numbers that made it fire."""

    rule_id: str
    org: str
    entity_ip: str  # the entity the finding is about (attacker for scans, victim host for exfiltration...)
    window_start_ms: int
    window_end_ms: int
    score: float  # 0..100, explainable from the evidence
    evidence: dict[str, Any]
    technique: str
    sensor: str = ""
    source_ip: str = ""
    destination_ip: str = ""
    related_ips: list[str] = field(default_factory=list)
    first_seen_ms: int = 0  # event time of the first flow that contributed
    last_seen_ms: int = 0  # event time of the last flow that contributed (alert latency is measured from it)


class Detector(ABC):
    """A detector: subclass, set the class attributes, implement ``add`` and ``close``."""

    id: ClassVar[str]
    name: ClassVar[str]
    techniques: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[DetectorParams]]

    def __init__(self, params: DetectorParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def add(self, flows: pd.DataFrame, wstart: np.ndarray) -> None:
        """Take admitted enriched flow rows (offset order) and the start (ms) of each row's window."""

    @abstractmethod
    def close(self, window_start_ms: int, window_end_ms: int) -> list[Finding]:
        """The window is complete: findings for it (and forget its partial state)."""

    def discard(self, window_start_ms: int) -> None:
        """Forget a window's partial state without evaluating it (a replay re-closing a window)."""
        return None

    def snapshot(self) -> dict[str, Any]:
        """State that outlives windows, JSON-serialisable. Default: none."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Inverse of ``snapshot``."""
        return None


class WindowedDetector(Detector):
    """A detector whose windows reduce to a columnar partial aggregate.

    Subclasses implement ``partial(flows) -> DataFrame`` (applied to each batch's rows of one window; keep
    it small: group, deduplicate) and ``evaluate(start, end, partials) -> findings`` on the concatenation.
    """

    def __init__(self, params: DetectorParams | None = None) -> None:
        super().__init__(params)
        self._parts: dict[int, list[pd.DataFrame]] = {}

    def add(self, flows: pd.DataFrame, wstart: np.ndarray) -> None:
        if len(flows) == 0:
            return
        for w in np.unique(wstart):
            rows = flows[wstart == w] if len(np.unique(wstart)) > 1 else flows
            part = self.partial(rows)
            if len(part):
                self._parts.setdefault(int(w), []).append(part)

    def discard(self, window_start_ms: int) -> None:
        self._parts.pop(window_start_ms, None)

    def close(self, window_start_ms: int, window_end_ms: int) -> list[Finding]:
        parts = self._parts.pop(window_start_ms, [])
        if not parts:
            return []
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return self.evaluate(window_start_ms, window_end_ms, frame)

    @abstractmethod
    def partial(self, flows: pd.DataFrame) -> pd.DataFrame:
        """Reduce one batch's rows of one window."""

    @abstractmethod
    def evaluate(self, start_ms: int, end_ms: int, frame: pd.DataFrame) -> list[Finding]:
        """Score the window from the concatenated partials."""


def frame(columns: dict[str, Any]) -> pd.DataFrame:
    """A DataFrame that keeps object arrays as object columns.

    Plain ``pd.DataFrame({...})`` copies every string of an object array into an Arrow string array
    (pandas 3), which costs more than most detectors' whole work on a batch.
    """
    return pd.DataFrame(
        {
            k: pd.Series(v, dtype=object, copy=False)
            if isinstance(v, np.ndarray) and v.dtype == object
            else v
            for k, v in columns.items()
        }
    )


def strings(col: pd.Series) -> np.ndarray:
    """A string column as an object array (categoricals and Arrow strings alike)."""
    return col.to_numpy(dtype=object)


def epoch_ms(col: pd.Series) -> np.ndarray:
    """A timestamp column as int64 epoch milliseconds."""
    v = col.to_numpy()
    if v.dtype.kind == "M":
        return v.astype("datetime64[ms]").astype(np.int64)
    return np.asarray(v, dtype=np.int64)


def group_reduce(
    keys: dict[str, np.ndarray],
    sums: dict[str, np.ndarray],
    firsts: dict[str, np.ndarray],
    first_ms: np.ndarray,
    last_ms: np.ndarray,
) -> pd.DataFrame:
    """Group rows by ``keys``: sums, first values, earliest and latest times (numpy, not pandas groupby)."""
    code = np.zeros(len(first_ms), np.int64)
    for col in keys.values():
        k, u = pd.factorize(col)
        code = pd.factorize(code * max(1, len(u)) + k)[0]  # re-compacted each step: never overflows
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    starts = (
        np.r_[0, np.flatnonzero(sorted_code[1:] != sorted_code[:-1]) + 1] if len(code) else np.zeros(0, int)
    )
    head = order[starts]
    out: dict[str, np.ndarray] = {k: v[head] for k, v in keys.items()}
    out.update({k: np.add.reduceat(v[order], starts) if len(v) else v for k, v in sums.items()})
    out.update({k: v[head] for k, v in firsts.items()})
    out["first"] = np.minimum.reduceat(first_ms[order], starts) if len(code) else first_ms
    out["last"] = np.maximum.reduceat(last_ms[order], starts) if len(code) else last_ms
    return frame(out)


def rows_text(col: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Some rows of a string column as objects, converting only those rows (categoricals stay cheap)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return np.asarray(col.cat.categories, dtype=object)[col.cat.codes.to_numpy()[rows]]
    return col.to_numpy(dtype=object)[rows]
