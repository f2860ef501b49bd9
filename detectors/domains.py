"""Registered domains of DNS names, from the Public Suffix List snapshot that ships with ``tldextract``.

The list is never fetched at run time: the extractor is built with no cache folder and no URLs, so it
reads the snapshot bundled in the installed package (its date is the package's release).

The *registered domain* here is what one owner controls: the ICANN public suffix plus one label
(``bbc.co.uk``, ``cloudfront.net``), and one label more under free dynamic-DNS zones (``x7k.ddns.net``),
where anyone picks the label left of the zone. The PSL's private section is deliberately not used for
the rest: it would make every random CDN host (``d1x2y3.cloudfront.net``) a registered domain of its own.
Names without a known suffix (``host.corp.local``, ``.bazar``) are treated as if their last label were one.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import tldextract

# Free dynamic-DNS zones: the owner of a name under them is whoever registered the label left of the zone.
# DGAs use them (corebot and symmi under ddns.net, orchard under duckdns.org, kraken under dyndns.org).
DYNAMIC_DNS_ZONES: frozenset[str] = frozenset(
    {
        "ddns.net",
        "duckdns.org",
        "dyndns.org",
        "dyndns.info",
        "dynu.net",
        "dynserv.org",
        "no-ip.org",
        "no-ip.biz",
        "no-ip.info",
        "noip.me",
        "hopto.org",
        "zapto.org",
        "sytes.net",
        "servebeer.com",
        "serveftp.com",
        "servehttp.com",
        "myftp.biz",
        "redirectme.net",
        "3utilities.com",
        "bounceme.net",
        "afraid.org",
        "mooo.com",
        "chickenkiller.com",
        "homeip.net",
        "dnsalias.com",
        "dnsalias.net",
        "dnsalias.org",
        "changeip.com",
        "ru.net",
        "hk.org",
        "yi.org",
    }
)

_CACHE_SIZE = 200_000


class Parts(NamedTuple):
    """A DNS name cut at its registered domain."""

    registered: str  # "" when the name is no domain name (an address, a reverse-lookup name)
    label: str  # the owner's label: the leftmost label of the registered domain
    subdomain: str  # what stands left of the registered domain
    public: bool  # the name ends in a known public suffix (else: an internal or alternative root)


_NOT_A_NAME = Parts("", "", "", False)


@lru_cache(maxsize=1)
def _extractor() -> tldextract.TLDExtract:
    # cache_dir=None and no URLs: only the snapshot inside the package, no network, no files written.
    return tldextract.TLDExtract(
        cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True, include_psl_private_domains=True
    )


@lru_cache(maxsize=_CACHE_SIZE)
def split(name: str) -> Parts:
    """A DNS name's registered domain, owner label and subdomain.

    >>> split("a.b.x7k.ddns.net")
    Parts(registered='x7k.ddns.net', label='x7k', subdomain='a.b', public=True)
    """
    name = name.strip().rstrip(".").lower()
    if not name or name.endswith(".arpa") or _looks_like_ip(name):
        return _NOT_A_NAME
    labels = name.split(".")
    if any(not lab for lab in labels):
        return _NOT_A_NAME
    suffix = _extractor()(name).registry_suffix
    k = suffix.count(".") + 1 if suffix else 1  # an unknown last label counts as the suffix
    if len(labels) <= k:  # a bare suffix ("com", "co.uk") or a single unqualified label ("wpad")
        return Parts(name, labels[0], "", False)
    reg = labels[-(k + 1) :]
    if ".".join(reg) in DYNAMIC_DNS_ZONES and len(labels) > k + 1:
        k += 1
        reg = labels[-(k + 1) :]
    return Parts(".".join(reg), reg[0], ".".join(labels[: -(k + 1)]), bool(suffix))


def split_many(names: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``split`` over names as four arrays (call it on unique names: results are cached per name)."""
    parts = [split(n) for n in names]
    out = np.empty((len(parts), 4), dtype=object)
    if parts:
        out[:] = parts
    return out[:, 0], out[:, 1], out[:, 2], out[:, 3].astype(bool)


def registered_label(name: str) -> str:
    """The label a DGA score looks at: the owner's label of the registered domain."""
    return split(name).label


def _looks_like_ip(name: str) -> bool:
    if ":" in name:
        return True
    parts = name.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)
