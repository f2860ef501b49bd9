"""The lexical DGA model: character n-gram likelihood ratios and a few shape features, logistic regression.

It scores one DNS label (the owner's label of a registered domain, see ``domains.py``) with the
probability that a domain generation algorithm made it. Features:

- per order n in ``orders``: the mean log-likelihood ratio of the label's character n-grams under a
  DGA model against a benign model (add-``alpha`` smoothed, with start/end markers), the mean benign
  log-probability and the least likely benign n-gram;
- shape: length, character entropy, digit share, vowel share, longest consonant run, longest digit run,
  letter/digit alternations, hyphens, distinct characters.

The n-gram features that train the regression are computed out of fold, with the DGA folds split by
*family*, so the regression learns how far n-grams carry to families they never saw and leans on the
shape features for the rest. Estimator manners as in scikit-learn: ``__init__`` stores parameters,
``fit`` returns self, learned state ends in ``_``. The model file is a compressed ``.npz`` (no pickle)
with a JSON header naming its version, parameters and training data.

``python -m taishi.detectors.dga_model train --data DIR`` trains the shipped model from the folder with
``benign_majestic_top15k.csv.gz`` and ``dga_baderj.csv.gz``; ``evaluate --data DIR`` runs
``leave_families_out`` and prints the per-family table that ``models/MODEL.md`` quotes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from taishi.detectors.domains import registered_label

MODEL_VERSION = 1
MODEL_FILE = "dga-v1.npz"
MAX_LEN = 63  # a DNS label's limit

# 0 is the start/end marker; a-z 1..26, 0-9 27..36, '-' 37, anything else 38.
_B = 39
_LUT = np.full(256, 38, np.uint8)
_LUT[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)] = np.arange(1, 27)
_LUT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(27, 37)
_LUT[ord("-")] = 37
_LUT[0] = 0  # the marker that ends each label in an encoded batch
_VOWELS = np.array([1, 5, 9, 15, 21, 25])  # a e i o u y

SHAPE_FEATURES = (
    "log_length",
    "entropy",
    "digit_share",
    "vowel_share",
    "max_consonant_run",
    "max_digit_run",
    "alternations",
    "hyphens",
    "distinct_share",
)


@dataclass(frozen=True, slots=True)
class Encoded:
    """Labels as one flat code array, each label followed by a 0 marker (so no run crosses labels)."""

    flat: np.ndarray  # uint8 codes
    lengths: np.ndarray  # characters per label (cut at 63)
    starts: np.ndarray  # where each label starts in ``flat``
    rows: np.ndarray  # the label each position of ``flat`` belongs to

    def __len__(self) -> int:
        return len(self.lengths)


def encode(labels: Sequence[str]) -> Encoded:
    """Encode labels (lower-cased, cut at 63 characters; other characters share one code)."""
    cut = [s[:MAX_LEN].lower().replace("\0", "?") + "\0" for s in labels]  # NUL: the end marker
    n = len(cut)
    seg = np.fromiter(map(len, cut), np.int64, n)
    flat = (
        _LUT[np.frombuffer("".join(cut).encode("ascii", "replace"), np.uint8)] if n else np.zeros(0, np.uint8)
    )
    return Encoded(flat, seg - 1, np.cumsum(seg) - seg, np.repeat(np.arange(n), seg))


def _grams(enc: Encoded, n: int) -> np.ndarray:
    """Every label's n-gram ids, ``len + 1`` per label in ``flat`` order (n-1 start markers, one end marker).

    The ids of label *i* sit at the positions of its segment in ``flat`` (its characters and its marker).
    """
    flat = enc.flat.astype(np.int64)
    ids = flat.copy()  # the last character of each gram
    pos_in_label = np.arange(len(flat)) - enc.starts[enc.rows]
    for k in range(1, n):
        prev = np.zeros_like(flat)
        prev[k:] = flat[:-k]
        prev[pos_in_label < k] = 0  # before the label's start: start markers, not the previous label
        ids += prev * _B**k
    return ids


def shape_features(enc: Encoded) -> np.ndarray:
    """The shape features of encoded labels (columns as ``SHAPE_FEATURES``)."""
    rows, codes, n = enc.rows, enc.flat, len(enc)
    length = np.maximum(enc.lengths, 1).astype(np.float64)
    counts = np.bincount(rows * _B + codes, minlength=n * _B).reshape(n, _B)
    counts[:, 0] = 0  # the markers
    p = counts / length[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)
    letters = counts[:, 1:27].sum(axis=1)
    digits = counts[:, 27:37].sum(axis=1)
    vowels = counts[:, _VOWELS].sum(axis=1)
    is_letter = (codes >= 1) & (codes <= 26)
    is_digit = (codes >= 27) & (codes <= 36)
    consonant = is_letter & ~np.isin(codes, _VOWELS)
    alt = (is_letter[1:] & is_digit[:-1]) | (is_digit[1:] & is_letter[:-1])
    alternations = np.bincount(rows[1:], weights=alt, minlength=n)
    return np.column_stack(
        [
            np.log(length),
            entropy,
            digits / length,
            vowels / np.maximum(letters, 1),
            _max_run(consonant, enc),
            _max_run(is_digit, enc),
            alternations / length,
            counts[:, 37],
            (counts[:, 1:] > 0).sum(axis=1) / length,
        ]
    )


def _max_run(mask: np.ndarray, enc: Encoded) -> np.ndarray:
    """Longest run of True in each label (the markers are False, so runs end with their label)."""
    if len(mask) == 0:
        return np.zeros(len(enc))
    c = np.cumsum(mask)
    run = c - np.maximum.accumulate(np.where(mask, 0, c))
    return np.maximum.reduceat(run, enc.starts).astype(np.float64)


_HASH_BITS = 20  # orders whose B**n exceeds 2**20 share 2**20 hashed slots


def _slots(ids: np.ndarray, n: int) -> np.ndarray:
    """Table slot of n-gram ids: the id itself while the table is small, a multiplicative hash above."""
    if _B**n <= 1 << _HASH_BITS:
        return ids
    return ((ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - _HASH_BITS)).astype(
        np.int64
    )


class _Ngrams:
    """Counts of n-grams and of their (n-1)-character contexts under one class, and from them the
    add-alpha smoothed ``log P(last character | context)``."""

    def __init__(self, n: int, grams: np.ndarray, contexts: np.ndarray, alpha: float) -> None:
        self.n, self.grams, self.contexts, self.alpha = n, grams, contexts, alpha

    @classmethod
    def fit(cls, ids: np.ndarray, n: int, alpha: float) -> _Ngrams:
        """Count the n-gram ids of one class (only real ones: ``ids[valid]``)."""
        grams = np.bincount(_slots(ids, n), minlength=min(_B**n, 1 << _HASH_BITS))
        contexts = np.bincount(_slots(ids // _B, n - 1), minlength=min(_B ** (n - 1), 1 << _HASH_BITS))
        return cls(n, grams.astype(np.uint32), contexts.astype(np.uint32), alpha)

    def logp(self, ids: np.ndarray) -> np.ndarray:
        """``log P(last | context)`` of n-gram ids."""
        g = self.grams[_slots(ids, self.n)] + self.alpha
        c = self.contexts[_slots(ids // _B, self.n - 1)] + self.alpha * _B
        return np.log(g / c)


def _ngram_features(
    ids: np.ndarray, rows: np.ndarray, n_rows: int, dga: _Ngrams, benign: _Ngrams
) -> np.ndarray:
    """Per label: mean DGA/benign log-likelihood ratio, mean benign log-probability, least likely n-gram.

    ``rows`` (the label of each id) must keep each label's ids together; labels without ids get zeros.
    """
    out = np.zeros((n_rows, 3))
    if len(ids) == 0:
        return out
    lb = benign.logp(ids)
    ld = dga.logp(ids)
    count = np.maximum(np.bincount(rows, minlength=n_rows), 1)
    out[:, 0] = np.bincount(rows, weights=ld - lb, minlength=n_rows) / count
    out[:, 1] = np.bincount(rows, weights=lb, minlength=n_rows) / count
    seg = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    out[rows[seg], 2] = np.minimum.reduceat(lb, seg)
    return out


class DgaModel:
    """Probability that a DNS label was made by a domain generation algorithm."""

    # Learned state (set by ``fit`` or ``load``).
    mean_: np.ndarray
    scale_: np.ndarray
    coef_: np.ndarray
    intercept_: float
    tables_: dict[int, tuple[_Ngrams, _Ngrams]]
    feature_names_: list[str]
    meta_: dict[str, Any]  # the file header (``load`` only)

    def __init__(
        self,
        orders: tuple[int, ...] = (2, 3, 4),
        alpha: float = 0.1,
        c: float = 1.0,
        folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.orders = orders
        self.alpha = alpha
        self.c = c
        self.folds = folds
        self.seed = seed

    # Training ------------------------------------------------------------------------------------------
    def fit(self, labels: Sequence[str], y: np.ndarray, groups: np.ndarray | None = None) -> DgaModel:
        """Train on labels, ``y`` 1 for DGA, ``groups`` the DGA family of each row (for out-of-fold features)."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y, np.int64)
        enc = encode(labels)
        grams = {n: _grams(enc, n) for n in self.orders}
        fold = self._folds(y, groups)
        pos_fold, pos_y = fold[enc.rows], y[enc.rows]
        blocks = []
        for n, ids in grams.items():
            block = np.zeros((len(y), 3))
            for f in range(self.folds):
                te = pos_fold == f
                if te.any():
                    d, b = self._tables(ids[~te], pos_y[~te], n)
                    block += _ngram_features(ids[te], enc.rows[te], len(y), d, b)
            blocks.append(block)
        x = np.column_stack([*blocks, shape_features(enc)])
        self.mean_ = x.mean(axis=0)
        self.scale_ = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        # Few features, many rows: Newton steps converge in a handful of iterations.
        lr = LogisticRegression(C=self.c, class_weight="balanced", solver="newton-cholesky", max_iter=200)
        lr.fit((x - self.mean_) / self.scale_, y)
        self.coef_ = lr.coef_[0].astype(np.float64)
        self.intercept_ = float(lr.intercept_[0])
        self.tables_ = {n: self._tables(ids, pos_y, n) for n, ids in grams.items()}
        self.feature_names_ = [
            f"{k}{n}" for n in self.orders for k in ("llr", "benign_logp", "min_benign_logp")
        ] + list(SHAPE_FEATURES)
        return self

    def _folds(self, y: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        fold = rng.integers(0, self.folds, len(y))
        if groups is not None:
            fams = np.unique(groups[y == 1])
            perm = rng.permutation(len(fams))
            of = dict(zip(fams, perm % self.folds, strict=True))
            dga = np.flatnonzero(y == 1)
            fold[dga] = [of[g] for g in groups[dga]]
        return fold

    def _tables(self, ids: np.ndarray, y: np.ndarray, n: int) -> tuple[_Ngrams, _Ngrams]:
        """The DGA and the benign n-gram tables from gram ids and the class of each."""
        return _Ngrams.fit(ids[y == 1], n, self.alpha), _Ngrams.fit(ids[y == 0], n, self.alpha)

    # Scoring -------------------------------------------------------------------------------------------
    def features(self, labels: Sequence[str]) -> np.ndarray:
        """The feature matrix of labels (columns as ``feature_names_``)."""
        enc = encode(labels)
        blocks = [_ngram_features(_grams(enc, n), enc.rows, len(enc), *self.tables_[n]) for n in self.orders]
        return np.column_stack([*blocks, shape_features(enc)])

    def decision_function(self, labels: Sequence[str]) -> np.ndarray:
        """Log-odds that each label is DGA-made."""
        if len(labels) == 0:
            return np.zeros(0)
        x = (self.features(labels) - self.mean_) / self.scale_
        return np.asarray(x @ self.coef_ + self.intercept_, dtype=np.float64)

    def predict_proba(self, labels: Sequence[str]) -> np.ndarray:
        """Probability (0..1) that each label is DGA-made."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(labels)))

    # Files ---------------------------------------------------------------------------------------------
    def save(self, path: Path, data: dict[str, Any] | None = None) -> None:
        """Write the model as a compressed npz with a JSON header (``data`` describes the training set)."""
        meta = {
            "version": MODEL_VERSION,
            "params": {
                "orders": list(self.orders),
                "alpha": self.alpha,
                "c": self.c,
                "folds": self.folds,
                "seed": self.seed,
            },
            "features": self.feature_names_,
            "data": data or {},
        }
        arrays: dict[str, np.ndarray] = {
            "meta": np.array(json.dumps(meta, sort_keys=True)),
            "mean": self.mean_,
            "scale": self.scale_,
            "coef": self.coef_,
            "intercept": np.array([self.intercept_]),
        }
        for n, (d, b) in self.tables_.items():
            for name, t in (("dga", d), ("benign", b)):
                arrays[f"{name}{n}_grams"] = t.grams
                arrays[f"{name}{n}_contexts"] = t.contexts
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path | None = None) -> DgaModel:
        """Read a model file (default: the one shipped in the package)."""
        if path is None:
            with resources.as_file(resources.files("taishi.detectors") / "models" / MODEL_FILE) as p:
                return cls.load(Path(p))
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != MODEL_VERSION:
                raise ValueError(f"{path}: DGA model version {meta.get('version')}, expected {MODEL_VERSION}")
            p = meta["params"]
            m = cls(tuple(p["orders"]), p["alpha"], p["c"], p["folds"], p["seed"])
            m.mean_, m.scale_, m.coef_ = z["mean"], z["scale"], z["coef"]
            m.intercept_ = float(z["intercept"][0])
            m.tables_ = {
                n: (
                    _Ngrams(n, z[f"dga{n}_grams"], z[f"dga{n}_contexts"], m.alpha),
                    _Ngrams(n, z[f"benign{n}_grams"], z[f"benign{n}_contexts"], m.alpha),
                )
                for n in m.orders
            }
            m.feature_names_ = list(meta["features"])
            m.meta_ = meta
        return m


@lru_cache(maxsize=1)
def shipped_model() -> DgaModel:
    """The model file shipped in the package, loaded once."""
    return DgaModel.load()


# Data and evaluation -----------------------------------------------------------------------------------
BENIGN_FILE = "benign_majestic_top15k.csv.gz"
DGA_FILE = "dga_baderj.csv.gz"


@dataclass(frozen=True, slots=True)
class Dataset:
    """Training labels (the owner's label of each name's registered domain), deduplicated."""

    labels: np.ndarray  # object
    y: np.ndarray  # 1 DGA, 0 benign
    family: np.ndarray  # object; "majestic" for benign rows


def load_dataset(data_dir: Path) -> Dataset:
    """Read the benign and DGA lists from ``data_dir``; labels that occur in both are kept as benign."""
    import pandas as pd

    frames = [pd.read_csv(data_dir / BENIGN_FILE), pd.read_csv(data_dir / DGA_FILE)]
    df = pd.concat(frames, ignore_index=True)
    df["label_"] = [registered_label(n) for n in df["domain"]]
    df = df[df["label_"] != ""]
    df["y"] = (df["label"] == "dga").astype(np.int64)
    df = df.sort_values("y", kind="stable").drop_duplicates("label_", keep="first")
    return Dataset(df["label_"].to_numpy(object), df["y"].to_numpy(np.int64), df["family"].to_numpy(object))


def _subsample(ds: Dataset, keep: np.ndarray, per_family: int, seed: int) -> np.ndarray:
    """Indices of ``keep`` rows with at most ``per_family`` DGA rows of each family (all benign rows)."""
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(keep)
    out = [idx[ds.y[idx] == 0]]
    dga = idx[ds.y[idx] == 1]
    for fam in np.unique(ds.family[dga]):
        rows = dga[ds.family[dga] == fam]
        out.append(rows if len(rows) <= per_family else rng.choice(rows, per_family, replace=False))
    return np.sort(np.concatenate(out))


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve from positive and negative scores (ties count half)."""
    from scipy.stats import rankdata

    s = np.concatenate([pos, neg])
    r = rankdata(s)[: len(pos)]
    return float((r.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def recall_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    """Share of positives above the threshold that lets ``fpr`` of the negatives through."""
    threshold = np.quantile(neg, 1 - fpr, method="higher")
    return float((pos > threshold).mean())


def leave_families_out(
    ds: Dataset,
    families: Iterable[str] | None = None,
    per_family: int = 600,
    benign_folds: int = 5,
    seed: int = 0,
    **model_params: Any,
) -> dict[str, Any]:
    """Train without each DGA family in turn and score it against benign names also held out.

    Benign names are split into ``benign_folds`` folds; the model that leaves family *i* out also leaves
    benign fold *i mod k* out, and both are scored by it. Returns per-family ROC-AUC and recall at 1 %
    false positives (threshold from that model's held-out benign scores), their means, and the figures
    over all families pooled.
    """
    fams = sorted(set(ds.family[ds.y == 1])) if families is None else list(families)
    rng = np.random.default_rng(seed)
    bfold = np.full(len(ds.y), -1)
    benign = np.flatnonzero(ds.y == 0)
    bfold[benign] = rng.permutation(len(benign)) % benign_folds
    rows, pos_all, neg_all = [], [], []
    for i, fam in enumerate(fams):
        held_dga = (ds.y == 1) & (ds.family == fam)
        held_benign = bfold == i % benign_folds
        train = _subsample(ds, ~held_dga & ~held_benign, per_family, seed + i)
        model = DgaModel(seed=seed, **model_params).fit(list(ds.labels[train]), ds.y[train], ds.family[train])
        pos = model.decision_function(list(ds.labels[held_dga]))
        neg = model.decision_function(list(ds.labels[held_benign]))
        rows.append(
            {
                "family": fam,
                "names": int(held_dga.sum()),
                "roc_auc": round(roc_auc(pos, neg), 4),
                "recall_at_1pct_fpr": round(recall_at_fpr(pos, neg), 4),
            }
        )
        # Pool on each model's own scale: rank against that model's benign scores.
        pos_all.append(pos - np.quantile(neg, 0.99))
        neg_all.append(neg - np.quantile(neg, 0.99))
    pos_c, neg_c = np.concatenate(pos_all), np.concatenate(neg_all)
    return {
        "families": rows,
        "mean_roc_auc": round(float(np.mean([r["roc_auc"] for r in rows])), 4),
        "mean_recall_at_1pct_fpr": round(float(np.mean([r["recall_at_1pct_fpr"] for r in rows])), 4),
        "pooled_roc_auc": round(roc_auc(pos_c, neg_c), 4),
        "pooled_recall_at_1pct_fpr": round(recall_at_fpr(pos_c, neg_c), 4),
    }


def train(data_dir: Path, out: Path, per_family: int = 2000, seed: int = 0) -> DgaModel:
    """Train the shipped model on all families and all benign names and write it to ``out``."""
    ds = load_dataset(data_dir)
    keep = _subsample(ds, np.ones(len(ds.y), bool), per_family, seed)
    model = DgaModel(seed=seed).fit(list(ds.labels[keep]), ds.y[keep], ds.family[keep])
    model.save(
        out,
        data={
            "benign": f"{BENIGN_FILE} (Majestic Million head, CC BY 3.0)",
            "dga": f"{DGA_FILE} (48 families, output of GPL-2.0 generators)",
            "benign_labels": int((ds.y[keep] == 0).sum()),
            "dga_labels": int((ds.y[keep] == 1).sum()),
        },
    )
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m taishi.detectors.dga_model", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the model file from the domain lists")
    t.add_argument("--data", type=Path, required=True, help="folder with the benign and DGA csv.gz files")
    t.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "models" / MODEL_FILE)
    e = sub.add_parser("evaluate", help="leave-families-out ROC-AUC and recall at 1%% FPR")
    e.add_argument("--data", type=Path, required=True, help="folder with the benign and DGA csv.gz files")
    e.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.cmd == "train":
        train(args.data, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) in {time.perf_counter() - t0:.1f} s")
        return 0
    res = leave_families_out(load_dataset(args.data))
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print("| family | names | ROC-AUC | recall at 1% FPR |\n|---|---:|---:|---:|")
        for r in res["families"]:
            print(f"| {r['family']} | {r['names']} | {r['roc_auc']:.4f} | {r['recall_at_1pct_fpr']:.3f} |")
        print(
            f"\nmean ROC-AUC {res['mean_roc_auc']:.4f}, mean recall at 1% FPR "
            f"{res['mean_recall_at_1pct_fpr']:.3f}; pooled ROC-AUC {res['pooled_roc_auc']:.4f}, "
            f"pooled recall at 1% FPR {res['pooled_recall_at_1pct_fpr']:.3f}"
        )
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
