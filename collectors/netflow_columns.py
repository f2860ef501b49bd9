"""Vectorised conversions from decoded NetFlow fields to contract columns: addresses to text, times to ms."""

from __future__ import annotations

import socket

import numpy as np

# Seconds between the NTP era (1900) and the Unix epoch (1970); IPFIX dateTimeMicro/Nanoseconds are NTP stamps.
_NTP_UNIX_OFFSET_S = 2_208_988_800
_OCTET = np.array([str(i) for i in range(256)])
_OCTET_DOT = np.char.add(_OCTET, ".")


def to_int64(values: np.ndarray) -> np.ndarray:
    """Unsigned wire integers of any length 1-8 (big-endian dtype, or a byte sub-array) as int64."""
    if values.ndim == 2:  # odd reduced-size encoding (3, 5, 6 or 7 bytes) arrives as a byte sub-array
        out = np.zeros(len(values), dtype=np.int64)
        for column in range(values.shape[1]):
            out = (out << 8) | values[:, column]
        return out
    return values.astype(np.int64)


def ntp_to_ms(values: np.ndarray) -> np.ndarray:
    """64-bit NTP timestamps (seconds since 1900 . 2^-32 fraction) as Unix epoch milliseconds."""
    stamps = values.astype(np.uint64)
    seconds = (stamps >> np.uint64(32)).astype(np.int64) - _NTP_UNIX_OFFSET_S
    fraction_ms = ((stamps & np.uint64(0xFFFFFFFF)) * np.uint64(1000)) >> np.uint64(32)
    return seconds * 1000 + fraction_ms.astype(np.int64)


def uptime_delta_ms(uptime_ms: np.ndarray, at_ms: np.ndarray) -> np.ndarray:
    """How long before the header's sysUptime a switched time lies, across the 32-bit wrap (~49.7 days).

    The difference is taken modulo 2^32 and read as signed, so a counter that wrapped between the flow and the
    export, and an exporter whose flow times run a little ahead of its header, both come out right."""
    delta = (uptime_ms - at_ms) & 0xFFFFFFFF
    return np.where(delta >= 1 << 31, delta - (1 << 32), delta)


def _format_ipv4(addresses: np.ndarray) -> np.ndarray:
    """Dotted quads, built column-wise from per-octet text (numpy >= 2 makes ``char.add`` a C ufunc)."""
    add = np.char.add
    high = add(_OCTET_DOT[addresses >> 24], _OCTET_DOT[(addresses >> 16) & 255])
    low = add(_OCTET_DOT[(addresses >> 8) & 255], _OCTET[addresses & 255])
    return add(high, low).astype(object)


class AddressText:
    """IPv4 and IPv6 addresses as text (dotted quad; RFC 5952 compressed IPv6), with bounded caches.

    Flow batches repeat addresses heavily, and building Python strings is the dearest step of decoding, so IPv4
    text lives in a direct-mapped cache (``2**cache_bits`` slots, a colliding address simply replaces the
    slot) that is looked up for a whole column at once. IPv6 text uses a dict cleared when it grows past its
    bound."""

    def __init__(self, cache_bits: int = 16, ipv6_cache_size: int = 65536) -> None:
        if not 4 <= cache_bits <= 24:
            raise ValueError(f"cache_bits {cache_bits} out of range (expected 4..24)")
        self._shift = np.uint32(32 - cache_bits)
        size = 1 << cache_bits
        self._keys = np.zeros(size, dtype=np.uint32)
        self._filled = np.zeros(size, dtype=bool)
        self._text = np.full(size, "", dtype=object)
        self._claim = np.zeros(size, dtype=np.int64)
        self._ipv6: dict[bytes, str] = {}
        self._ipv6_cache_size = ipv6_cache_size

    def _slots(self, addresses: np.ndarray) -> np.ndarray:
        return (addresses * np.uint32(0x9E3779B1)) >> self._shift  # Fibonacci hashing; uint32 wraps

    def ipv4(self, addresses: np.ndarray) -> np.ndarray:
        """uint32 addresses (host order values) -> object array of dotted-quad strings."""
        addresses = addresses.astype(np.uint32, copy=False)
        slots = self._slots(addresses)
        hit = self._filled[slots] & (self._keys[slots] == addresses)
        hits = int(np.count_nonzero(hit))
        if hits == len(addresses):
            return self._text[slots]
        if 2 * hits < len(addresses):
            # Mostly new addresses: formatting all of them is cheaper than finding the repeats first.
            text = _format_ipv4(addresses)
            self._remember(slots, addresses, text)
            return text
        text = self._text[slots]
        miss = ~hit
        unique, inverse = np.unique(addresses[miss], return_inverse=True)
        fresh = _format_ipv4(unique)
        text[miss] = fresh[inverse.ravel()]
        self._remember(self._slots(unique), unique, fresh)
        return text

    def _remember(self, slots: np.ndarray, addresses: np.ndarray, text: np.ndarray) -> None:
        """Cache address -> text. Where several share a slot exactly one is kept, key and text together
        (numpy leaves the winner of repeated fancy-index writes unspecified, so it is chosen explicitly)."""
        claim = np.arange(len(slots), dtype=np.int64)
        self._claim[slots] = claim
        won = self._claim[slots] == claim
        slots = slots[won]
        self._keys[slots] = addresses[won]
        self._filled[slots] = True
        self._text[slots] = text[won]

    def ipv6(self, addresses: np.ndarray) -> np.ndarray:
        """16-byte addresses (``V16`` array) -> object array of compressed IPv6 text."""
        raw = np.ascontiguousarray(addresses).view("V16").ravel().tolist()
        cache = self._ipv6
        if len(cache) > self._ipv6_cache_size:
            cache.clear()
        out = np.empty(len(raw), dtype=object)
        for i, packed in enumerate(raw):
            text = cache.get(packed)
            if text is None:
                text = cache[packed] = socket.inet_ntop(socket.AF_INET6, packed)
            out[i] = text
        return out
