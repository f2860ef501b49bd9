"""Columnar enrichment of validated flow batches.

Adds, per batch and without per-record Python work beyond one lookup per distinct address:
internal/external and ``network.direction`` from each institution's CIDR list; asset owner and
criticality from an inventory CSV; GeoIP country and ASN from MaxMind-format databases when configured
(fields stay empty, never failing, when none is); and threat-intel indicator matches.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from taishi.pipeline import addresses
from taishi.pipeline.codes import codes_of, union_codes
from taishi.pipeline.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Indicator:
    """A threat-intel indicator as loaded from a feed file."""

    value: str
    kind: str  # ip or domain
    source: str
    confidence: int = 50


def load_indicators(paths: Iterable[Path]) -> dict[str, Indicator]:
    """Load indicators from CSV files (``indicator,type,source,confidence`` header) or plain lists.

    Plain files hold one IP or domain per line (``#`` comments allowed); the file name is the source.
    """
    out: dict[str, Indicator] = {}
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        numbered = [
            (no, ln)
            for no, ln in enumerate(text.splitlines(), start=1)
            if ln.strip() and not ln.lstrip().startswith("#")
        ]
        lines = [ln for _, ln in numbered]
        if lines and lines[0].lower().startswith("indicator,"):
            for (lineno, _), row in zip(numbered[1:], csv.DictReader(lines), strict=False):
                value = (row.get("indicator") or "").strip()
                if not value:
                    raise ValueError(f"{path}:{lineno}: empty indicator")
                try:
                    conf = int(row.get("confidence") or 50)
                except ValueError:
                    raise ValueError(
                        f"{path}:{lineno}: confidence {row.get('confidence')!r} is not an integer"
                    ) from None
                out[_norm_indicator(value)] = Indicator(
                    _norm_indicator(value), _kind(value), row.get("source") or Path(path).stem, conf
                )
        else:
            for value in lines:
                v = _norm_indicator(value.split()[0])
                out[v] = Indicator(v, _kind(v), Path(path).stem)
    return out


def _norm_indicator(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _kind(value: str) -> str:
    try:
        ipaddress.ip_address(value.strip())
        return "ip"
    except ValueError:
        return "domain"


class Enricher:
    """Adds the enrichment columns of ``contract.ENRICHED_COLUMNS`` to a validated batch."""

    def __init__(self, settings: Settings, indicators: dict[str, Indicator] | None = None) -> None:
        self._settings = settings
        self._nets: dict[str, list[Any]] = {}
        self._assets: dict[tuple[str, str], tuple[str, str]] = {}
        if settings.enrich.asset_inventory:
            self._assets = _load_assets(settings.enrich.asset_inventory)
        self._indicators = (
            indicators if indicators is not None else load_indicators(settings.enrich.intel_files)
        )
        self._ip_indicators = {k: v for k, v in self._indicators.items() if v.kind == "ip"}
        self._geo = _open_mmdb(settings.enrich.geoip_country_db)
        self._asn = _open_mmdb(settings.enrich.geoip_asn_db)
        self._geo_cache: dict[str, tuple[str, int, str]] = {}
        log.info(
            "enrichment: %d institutions configured, %d assets, %d indicators, geoip %s, asn %s",
            len(settings.institutions),
            len(self._assets),
            len(self._indicators),
            "on" if self._geo else "off",
            "on" if self._asn else "off",
        )

    def _networks(self, org: str) -> list[Any]:
        nets = self._nets.get(org)
        if nets is None:
            nets = [
                ipaddress.ip_network(c, strict=False) for c in self._settings.institution(org).internal_cidrs
            ]
            self._nets[org] = nets
        return nets

    def enrich(self, df: pd.DataFrame) -> pd.DataFrame:
        """Return the batch with enrichment columns added (the input is not modified)."""
        df = df.copy()
        n = len(df)
        df["network.bytes"] = df["source.bytes"].to_numpy() + df["destination.bytes"].to_numpy()
        df["network.packets"] = df["source.packets"].to_numpy() + df["destination.packets"].to_numpy()
        if n == 0:
            for col in ("network.direction", "taishi.threat.indicator", "taishi.threat.source"):
                df[col] = pd.Series(dtype=object)
            df["taishi.source.internal"] = pd.Series(dtype=bool)
            df["taishi.destination.internal"] = pd.Series(dtype=bool)
            return df

        orgs = df["organization.id"].to_numpy(object)
        s_codes, d_codes, uniques = union_codes(df["source.ip"], df["destination.ip"])
        codes = np.concatenate([s_codes, d_codes])
        addrs = [addresses.parse(u) for u in uniques]
        internal = np.zeros(2 * n, bool)
        org_codes, org_uniques = codes_of(df["organization.id"])
        org_codes = np.concatenate([org_codes, org_codes])
        for oi, org in enumerate(org_uniques):
            rows = org_codes == oi
            if rows.any():
                member = _membership(addrs, self._networks(org))
                internal[rows] = member[codes[rows]]
        src_int, dst_int = internal[:n], internal[n:]
        df["taishi.source.internal"] = src_int
        df["taishi.destination.internal"] = dst_int
        direction = np.where(
            src_int, np.where(dst_int, "internal", "outbound"), np.where(dst_int, "inbound", "external")
        )
        _set(df, "network.direction", direction.astype(object))

        if self._assets:
            for side, is_int in (("source", src_int), ("destination", dst_int)):
                keys = zip(orgs, df[f"{side}.ip"].to_numpy(object), strict=True)
                hits = [
                    self._assets.get(k, ("", "")) if i else ("", "")
                    for k, i in zip(keys, is_int, strict=True)
                ]
                _set(df, f"taishi.{side}.asset.owner", np.array([h[0] for h in hits], dtype=object))
                _set(df, f"taishi.{side}.asset.criticality", np.array([h[1] for h in hits], dtype=object))

        if self._geo or self._asn:
            geo = [
                self._lookup_geo(str(u)) if a is not None else ("", 0, "")
                for u, a in zip(uniques, addrs, strict=True)
            ]
            country_u = np.array([g[0] for g in geo] + [""], dtype=object)
            asn_u = np.array([g[1] for g in geo] + [0], dtype=np.int64)
            asorg_u = np.array([g[2] for g in geo] + [""], dtype=object)
            looked = np.where(internal, len(uniques), codes)  # internal hosts get no GeoIP
            for side, sl in (("source", slice(0, n)), ("destination", slice(n, 2 * n))):
                _set(df, f"{side}.geo.country_iso_code", country_u[looked[sl]])
                df[f"{side}.as.number"] = asn_u[looked[sl]]
                _set(df, f"{side}.as.organization.name", asorg_u[looked[sl]])

        ind = np.full(n, "", dtype=object)
        src = np.full(n, "", dtype=object)
        if self._ip_indicators:
            hit_u = np.array([u in self._ip_indicators for u in uniques], bool)
            for sl in (slice(n, 2 * n), slice(0, n)):  # destination first: the usual C2 direction
                c = codes[sl]
                m = hit_u[c] & (ind == "")
                for i in np.flatnonzero(m):
                    indicator = self._ip_indicators[uniques[c[i]]]
                    ind[i], src[i] = indicator.value, indicator.source
        _set(df, "taishi.threat.indicator", ind)
        _set(df, "taishi.threat.source", src)
        return df

    def _lookup_geo(self, ip: str) -> tuple[str, int, str]:
        hit = self._geo_cache.get(ip)
        if hit is None:
            country, asn, org = "", 0, ""
            if self._geo:
                rec = _mmdb_get(self._geo, self._settings.enrich.geoip_country_db, ip)
                country = ((rec.get("country") or rec.get("registered_country") or {}).get("iso_code")) or ""
            if self._asn:
                rec = _mmdb_get(self._asn, self._settings.enrich.geoip_asn_db, ip)
                asn = int(rec.get("autonomous_system_number") or 0)
                org = rec.get("autonomous_system_organization") or ""
            hit = (country, asn, org)
            if len(self._geo_cache) > 1_000_000:
                self._geo_cache.clear()
            self._geo_cache[ip] = hit
        return hit


def _set(df: pd.DataFrame, name: str, values: np.ndarray) -> None:
    """Add an object column as is (pandas would copy strings into an Arrow array otherwise)."""
    df[name] = pd.Series(values, index=df.index, dtype=object, copy=False)


def _membership(addrs: list[Any], nets: list[Any]) -> np.ndarray:
    """Which of ``addrs`` (None for unused categories) fall inside any of ``nets``, vectorised for IPv4."""
    out = np.zeros(len(addrs), bool)
    v4 = np.array([a is not None and a.version == 4 for a in addrs], bool)
    if v4.any():
        vals = np.array([int(a) if v else 0 for a, v in zip(addrs, v4, strict=True)], dtype=np.uint32)
        for net in nets:
            if net.version == 4:
                mask = np.uint32(int(net.netmask))
                out |= v4 & ((vals & mask) == np.uint32(int(net.network_address)))
    v6_nets = [net for net in nets if net.version == 6]
    if v6_nets:
        for i, a in enumerate(addrs):
            if a is not None and a.version == 6:
                out[i] = any(a in net for net in v6_nets)
    return out


def _load_assets(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    out: dict[tuple[str, str], tuple[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"organization.id", "ip", "owner"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ValueError(
                f"asset inventory {path}: header must contain {sorted(need)}, got {reader.fieldnames}"
            )
        for row in reader:
            lineno = reader.line_num
            missing = sorted(k for k in need if row.get(k) is None)
            if missing:
                raise ValueError(f"asset inventory {path}:{lineno}: no value for {missing}")
            try:
                ip = str(ipaddress.ip_address(row["ip"].strip()))
            except ValueError:
                raise ValueError(
                    f"asset inventory {path}:{lineno}: {row['ip']!r} is not an IP address"
                ) from None
            out[(row["organization.id"].strip(), ip)] = (
                row["owner"].strip(),
                (row.get("criticality") or "").strip(),
            )
    return out


def _mmdb_get(db: Any, path: Path | None, ip: str) -> dict[str, Any]:
    """One lookup; an IPv6 address in an IPv4-only database is simply not found."""
    import maxminddb

    if ":" in ip and db.metadata().ip_version == 4:
        return {}
    try:
        return db.get(ip) or {}
    except maxminddb.InvalidDatabaseError as exc:
        raise ValueError(f"GeoIP database {path}: {exc}") from None


def _open_mmdb(path: Path | None) -> Any:
    if not path:
        return None
    import maxminddb

    try:
        return maxminddb.open_database(str(path))
    except (OSError, maxminddb.InvalidDatabaseError) as exc:
        raise ValueError(f"GeoIP database {path}: {exc}") from None
