"""Parsed addresses, cached: flows repeat the same few addresses, so each distinct string is parsed once."""

from __future__ import annotations

import ipaddress
from typing import Any

_MAX = 1_000_000
_cache: dict[Any, ipaddress.IPv4Address | ipaddress.IPv6Address | None] = {}


def parse(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, or None when ``value`` is not one (text with surrounding spaces is accepted)."""
    hit = _cache.get(value, False)
    if hit is not False:
        return hit  # type: ignore[return-value]
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
            value.strip() if isinstance(value, str) else value
        )
    except (ValueError, TypeError):
        addr = None
    if len(_cache) >= _MAX:
        _cache.clear()
    _cache[value] = addr
    return addr
