"""Columnar validation of flow batches against the record contract.

Every check is vectorised over the batch; a row that fails gets a reason naming the field, the value and
what was expected, and the rest of the batch proceeds. Valid rows leave with the contract's dtypes and
the derived columns (transport, Community ID) filled in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from taishi.pipeline import addresses, contract
from taishi.pipeline.community_id import community_ids

_INT_LIMITS = {
    "source.port": (0, 65535),
    "destination.port": (0, 65535),
    "network.iana_number": (0, 255),
    "source.bytes": (0, 2**62),
    "source.packets": (0, 2**62),
    "destination.bytes": (0, 2**62),
    "destination.packets": (0, 2**62),
    "taishi.flow.tcp_flags": (0, 0xFFF),
}
_MIN_TS = pd.Timestamp("1990-01-01", tz="UTC")
_MAX_TS = pd.Timestamp("2100-01-01", tz="UTC")


@dataclass(slots=True)
class Validated:
    """Valid rows (contract dtypes, original index kept) and the reasons of the rejected ones."""

    frame: pd.DataFrame
    rejected: pd.Series  # index of rejected rows -> reason


def validate_flows(raw: pd.DataFrame, default_sensor: str = "", seed: int = 0) -> Validated:
    """Check a raw batch against the flow contract; return the valid rows normalised."""
    n = len(raw)
    reason = np.full(n, "", dtype=object)
    rejected = np.zeros(n, bool)

    def fail(mask: np.ndarray, message: str | np.ndarray) -> None:
        m = mask & ~rejected
        if m.any():
            reason[m] = message if isinstance(message, str) else message[m]
            rejected[m] = True

    out: dict[str, np.ndarray | pd.Series] = {}
    # Low-cardinality and address columns leave as categoricals (codes + distinct values): later steps
    # group and join on the codes instead of hashing every string again.
    cats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # Required fields present and non-null.
    for name in contract.REQUIRED_FLOW_FIELDS:
        if name not in raw.columns:
            fail(np.ones(n, bool), f"missing required field {name}")
        else:
            fail(raw[name].isna().to_numpy(), f"missing required field {name}")
            col = raw[name]
            if (name.endswith(".ip") or name == "organization.id") and col.dtype == object:
                fail(
                    col.notna().to_numpy() & ~col.map(type).isin((str,)).to_numpy(),
                    f"wrong type for {name}: expected a string",
                )

    if "organization.id" in raw.columns:
        codes, uniq = _factorize(raw["organization.id"], "")
        good = np.array([isinstance(u, str) and bool(contract.ORG_ID_RE.match(u)) for u in uniq], bool)
        fail(~good[codes], f"organization.id does not match {contract.ORG_ID_RE.pattern}")
        out["organization.id"] = uniq[codes]
        cats["organization.id"] = _unique_codes(codes, uniq)

    out["@timestamp"] = _timestamps(raw, "@timestamp", fail, n)
    if "event.end" in raw.columns:
        end = _timestamps(raw, "event.end", fail, n, optional=True)
        out["event.end"] = np.where(np.isnat(end), out["@timestamp"], end)
    else:
        out["event.end"] = out["@timestamp"]

    for name in ("source.ip", "destination.ip"):
        out[name], ip_codes, ip_values = _ips(raw, name, fail, n)
        cats[name] = _unique_codes(ip_codes, ip_values)

    fam_s = np.char.find(out["source.ip"].astype(str), ":") >= 0
    fam_d = np.char.find(out["destination.ip"].astype(str), ":") >= 0
    fail(fam_s != fam_d, "source.ip and destination.ip are of different address families")

    for name, (lo, hi) in _INT_LIMITS.items():
        dtype = contract.FLOW_DTYPES[name]
        if name not in raw.columns:
            out[name] = np.zeros(n, dtype)
            continue
        col = raw[name]
        num = pd.to_numeric(col, errors="coerce") if col.dtype.kind not in "iub" else col
        num_f = num.to_numpy(dtype="float64", na_value=np.nan)
        fail(col.notna().to_numpy() & np.isnan(num_f), f"wrong type for {name}: expected an integer")
        fail(
            ~np.isnan(num_f) & ((num_f < lo) | (num_f > hi) | (num_f != np.floor(num_f))),
            f"{name} out of range: expected an integer in [{lo}, {hi}]",
        )
        out[name] = (
            np.nan_to_num(num_f, nan=0.0).astype(dtype) if num_f.dtype.kind == "f" else num_f.astype(dtype)
        )

    # Protocol: the IANA number, or derived from the transport name.
    have_iana = (
        raw["network.iana_number"].notna().to_numpy()
        if "network.iana_number" in raw.columns
        else np.zeros(n, bool)
    )
    if "network.transport" in raw.columns:
        tr = raw["network.transport"].astype("str").str.lower()
        mapped = tr.map(contract.TRANSPORT_IANA)
        need = ~have_iana
        fail(
            need & mapped.isna().to_numpy() & raw["network.transport"].notna().to_numpy(),
            "network.transport not one of " + "/".join(contract.TRANSPORT_IANA),
        )
        out["network.iana_number"] = np.where(
            need, mapped.fillna(-1).to_numpy(np.int16), out["network.iana_number"]
        ).astype(np.int16)
        have_iana = have_iana | mapped.notna().to_numpy()
    fail(~have_iana, "missing required field network.iana_number (or network.transport)")
    iana = np.asarray(out["network.iana_number"])
    out["network.transport"] = (
        pd.Series(iana).map(contract.IANA_TRANSPORT).fillna(pd.Series(iana).astype(str)).to_numpy(object)
    )

    for name, default in (
        ("event.dataset", "flow"),
        ("observer.name", default_sensor),
        ("observer.hostname", ""),
        ("observer.ip", ""),
        *((name, "") for name in contract.METADATA_FIELDS),
    ):
        if name in raw.columns:
            codes, uniq = _factorize(raw[name], default)
            uniq = np.array([str(u) for u in uniq], dtype=object)
            out[name] = uniq[codes]
            cats[name] = _unique_codes(codes, uniq)
        else:
            out[name] = np.full(n, default, dtype=object)
            cats[name] = (np.zeros(n, np.int64), np.array([default], dtype=object))

    ok = ~rejected
    idx = raw.index[ok]
    frame = pd.DataFrame(
        {
            k: pd.Categorical.from_codes(cats[k][0][ok], categories=cats[k][1])
            if k in cats
            else _column(v[ok] if isinstance(v, np.ndarray) else v.to_numpy()[ok], idx)
            for k, v in out.items()
        },
        index=idx,
    )
    frame = frame[[c.name for c in contract.FLOW_COLUMNS if c.name in frame.columns]]

    cid = raw["network.community_id"].to_numpy(object)[ok] if "network.community_id" in raw.columns else None
    missing = (
        np.ones(len(frame), bool)
        if cid is None
        else ~pd.Series(cid).fillna("").astype(str).str.startswith("1:").to_numpy()
    )
    cids = np.empty(len(frame), dtype=object) if cid is None else cid.copy()
    if missing.any():
        cids[missing] = community_ids(
            frame["source.ip"].to_numpy(object)[missing],
            frame["destination.ip"].to_numpy(object)[missing],
            frame["source.port"].to_numpy()[missing],
            frame["destination.port"].to_numpy()[missing],
            frame["network.iana_number"].to_numpy()[missing],
            seed=seed,
        )
    frame.insert(
        frame.columns.get_loc("taishi.flow.tcp_flags"), "network.community_id", _column(cids, frame.index)
    )
    rejected = pd.Series(reason[~ok], index=raw.index[~ok], dtype=object)
    return Validated(frame=frame, rejected=rejected)


def _timestamps(raw: pd.DataFrame, name: str, fail, n: int, optional: bool = False) -> np.ndarray:
    """Parse a timestamp column: datetime, epoch milliseconds, or ISO 8601 text."""
    if name not in raw.columns:
        return np.full(n, np.datetime64("NaT"), dtype="datetime64[ms]")
    col = raw[name]
    if isinstance(col.dtype, pd.DatetimeTZDtype) or col.dtype.kind == "M":
        ts = pd.to_datetime(col, utc=True)
    else:
        num = pd.to_numeric(col, errors="coerce")
        is_num = num.notna()
        ts = pd.Series(pd.NaT, index=col.index, dtype="datetime64[ms, UTC]")
        if is_num.any():
            ts[is_num] = pd.to_datetime(num[is_num].astype("int64"), unit="ms", utc=True)
        text = col.notna() & ~is_num
        if text.any():
            ts[text] = pd.to_datetime(col[text].astype(str), utc=True, errors="coerce", format="ISO8601")
        fail(text.to_numpy() & ts.isna().to_numpy(), f"{name} is not a timestamp (ISO 8601 or epoch ms)")
    ts = ts.astype("datetime64[ms, UTC]")
    fail(ts.notna().to_numpy() & ((ts < _MIN_TS) | (ts > _MAX_TS)).to_numpy(), f"{name} outside 1990..2100")
    return ts.dt.tz_localize(None).to_numpy("datetime64[ms]")


def _ips(raw: pd.DataFrame, name: str, fail, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and normalise an address column, parsing each distinct value once.

    Returns the normalised column, its codes and the normalised value of each code.
    """
    if name not in raw.columns:
        return np.full(n, "", dtype=object), np.zeros(n, np.int64), np.array([""], dtype=object)
    codes, uniques = pd.factorize(raw[name], use_na_sentinel=True)
    norm = np.empty(len(uniques) + 1, dtype=object)
    bad = np.zeros(len(uniques) + 1, bool)
    for i, u in enumerate(uniques):
        addr = addresses.parse(u) if isinstance(u, str) else None
        if addr is None:
            norm[i], bad[i] = "", True
        else:
            norm[i] = str(addr)
    norm[-1] = ""  # code -1: null, already rejected as missing
    codes = np.where(codes < 0, len(uniques), codes)
    msgs = np.array([f"{name}: {u!r} is not an IP address" for u in uniques] + [""], dtype=object)
    fail(bad[codes], msgs[codes])
    return norm[codes], codes, norm


def _factorize(col: pd.Series, missing: str) -> tuple[np.ndarray, np.ndarray]:
    """Codes and distinct values (object array, ``missing`` last for nulls) of a low-cardinality column.

    Building the object column as ``uniques[codes]`` shares one string object per distinct value, far
    cheaper than converting every Arrow string.
    """
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    uniq = np.empty(len(uniques) + 1, dtype=object)
    uniq[:-1] = np.asarray(uniques, dtype=object)
    uniq[-1] = missing
    return np.where(codes < 0, len(uniques), codes), uniq


def _unique_codes(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes into distinct categories (values may repeat, e.g. two spellings of one IPv6 address)."""
    uniq, inverse = np.unique(values.astype(str), return_inverse=True)
    return inverse[codes], uniq.astype(object)


def _column(values: np.ndarray, index: pd.Index) -> Any:
    """Keep object arrays as object columns: inferring pandas' Arrow strings costs a copy per batch."""
    return pd.Series(values, index=index, dtype=object, copy=False) if values.dtype == object else values
