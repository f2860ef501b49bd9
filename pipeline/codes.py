"""Integer codes for string columns: group and join on codes, map back to strings only for results."""

from __future__ import annotations

import numpy as np
import pandas as pd


def codes_of(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values) of a column; free for the categoricals that validation produces."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(np.int64), np.asarray(col.cat.categories, dtype=object)
    codes, uniques = pd.factorize(col)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def union_codes(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of two columns in one shared space (e.g. source and destination addresses)."""
    ac, av = codes_of(a)
    bc, bv = codes_of(b)
    values = pd.unique(np.concatenate([av, bv]))
    index = pd.Index(values)
    return index.get_indexer(av)[ac], index.get_indexer(bv)[bc], np.asarray(values, dtype=object)
