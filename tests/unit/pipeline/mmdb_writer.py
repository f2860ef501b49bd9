"""A small writer of MaxMind DB (``.mmdb``) files, for tests that need GeoIP or ASN databases offline.

Written from the MaxMind DB File Format Specification v2.0. A file is three sections:

1. a binary search tree, one level per address bit; each node holds two records (left: bit 0,
   right: bit 1) of 24, 28 or 32 bits. A record below ``node_count`` is a node number, equal to it
   means "no data", above it points into the data section at ``record - node_count - 16``;
2. 16 zero bytes (the data section separator), then the data section: each distinct value once;
3. the ``\\xab\\xcd\\xefMaxMind.com`` marker followed by the metadata map.

The tree is an IPv6 tree (``ip_version`` 6) unless ``ip_version=4`` is asked for. IPv4 networks are
stored as the spec describes, "as-is" in the first 32 bits of the address space, i.e. under ``::/96``,
which is where readers look IPv4 addresses up; nothing is aliased under ``::ffff:0:0/96`` or
``2002::/16``. Networks are applied in order, so a later network overrides the addresses it shares
with an earlier one. Only what a writer needs is encoded: maps, arrays, UTF-8 strings, bytes,
doubles, booleans and the integer types; no pointers or cache containers.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
DATA_SECTION_SEPARATOR = b"\x00" * 16

# Type numbers of the data section.
_UTF8, _DOUBLE, _BYTES, _UINT16, _UINT32, _MAP = 2, 3, 4, 5, 6, 7
_INT32, _UINT64, _UINT128, _ARRAY, _BOOLEAN = 8, 9, 10, 11, 14
_UINT_TYPES = {16: _UINT16, 32: _UINT32, 64: _UINT64, 128: _UINT128}
# Payload sizes of 29 and more take extra bytes after the control byte(s): (threshold, extra bytes).
_SIZE_STEPS = ((29, 1), (285, 2), (65_821, 3))
_MAX_SIZE = 65_821 + 2**24 - 1


@dataclass(frozen=True, slots=True)
class UInt:
    """An unsigned integer stored as a given MaxMind type; a plain ``int`` becomes uint32 when it fits."""

    value: int
    bits: int = 32

    def __post_init__(self) -> None:
        if self.bits not in _UINT_TYPES:
            raise ValueError(f"UInt bits must be one of {sorted(_UINT_TYPES)}, got {self.bits}")
        if not 0 <= self.value < 2**self.bits:
            raise ValueError(f"{self.value} does not fit an unsigned {self.bits}-bit integer")


def encode(value: Any) -> bytes:
    """One data-section field: control byte(s), then the payload.

    ``str`` is a UTF-8 string, ``bytes`` bytes, ``float`` a double, ``bool`` a boolean, a ``Mapping``
    with ``str`` keys a map, a list or tuple an array; an ``int`` is int32 when negative, else the
    smallest of uint32/uint64/uint128 that holds it (wrap it in ``UInt`` to choose).
    """
    if isinstance(value, bool):  # before int: bool is an int subclass; the size carries the value
        return _control(_BOOLEAN, int(value))
    if isinstance(value, UInt):
        return _unsigned(_UINT_TYPES[value.bits], value.value)
    if isinstance(value, int):
        if value < 0:
            if value < -(2**31):
                raise ValueError(f"{value} does not fit a signed 32-bit integer")
            return _control(_INT32, 4) + struct.pack(">i", value)
        for bits in (32, 64, 128):
            if value < 2**bits:
                return _unsigned(_UINT_TYPES[bits], value)
        raise ValueError(f"{value} does not fit an unsigned 128-bit integer")
    if isinstance(value, float):
        return _control(_DOUBLE, 8) + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _control(_UTF8, len(raw)) + raw
    if isinstance(value, bytes | bytearray):
        return _control(_BYTES, len(value)) + bytes(value)
    if isinstance(value, Mapping):
        parts = [_control(_MAP, len(value))]
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map keys must be strings, got {key!r}")
            parts += [encode(key), encode(item)]
        return b"".join(parts)
    if isinstance(value, list | tuple):
        return b"".join([_control(_ARRAY, len(value)), *(encode(item) for item in value)])
    raise TypeError(f"no MaxMind DB type for {type(value).__name__} value {value!r}")


def _unsigned(type_number: int, value: int) -> bytes:
    payload = value.to_bytes((value.bit_length() + 7) // 8, "big")  # zero is an empty payload
    return _control(type_number, len(payload)) + payload


def _control(type_number: int, size: int) -> bytes:
    """Control byte(s) of a field: 3 type bits and 5 size bits, extended type and size bytes as needed."""
    if not 0 <= size <= _MAX_SIZE:
        raise ValueError(f"payload size {size} exceeds the format's limit of {_MAX_SIZE}")
    low, extra = size, b""
    for threshold, width in reversed(_SIZE_STEPS):
        if size >= threshold:
            low, extra = 28 + width, (size - threshold).to_bytes(width, "big")
            break
    if type_number <= 7:
        return bytes([type_number << 5 | low]) + extra
    # Extended type: zero type bits, then the type number minus 7 in the next byte.
    return bytes([low, type_number - 7]) + extra


class _Node:
    __slots__ = ("children", "number")

    def __init__(self) -> None:
        self.children: list[_Node | int | None] = [None, None]  # int: index of a distinct data value
        self.number = -1


def build_mmdb(
    networks: Iterable[tuple[str, Any]] | Mapping[str, Any],
    *,
    record_size: int = 28,
    ip_version: int = 6,
    database_type: str = "Taishi-Test",
    languages: Iterable[str] = ("en",),
    description: str = "Test database written by tests/unit/pipeline/mmdb_writer.py",
    build_epoch: int = 1_764_028_800,
) -> bytes:
    """The bytes of a database mapping each network (CIDR text) to its record, later networks winning."""
    if record_size not in (24, 28, 32):
        raise ValueError(f"record_size must be 24, 28 or 32, got {record_size}")
    if ip_version not in (4, 6):
        raise ValueError(f"ip_version must be 4 or 6, got {ip_version}")
    if build_epoch <= 0:  # libmaxminddb (maxminddb's C extension) rejects a zero build_epoch as missing
        raise ValueError(f"build_epoch must be a positive Unix time, got {build_epoch}")
    depth = 128 if ip_version == 6 else 32
    items = networks.items() if isinstance(networks, Mapping) else networks

    root = _Node()
    data: list[bytes] = []
    data_index: dict[bytes, int] = {}
    for cidr, record in items:
        key, prefix = _tree_key(cidr, ip_version)
        if prefix == 0:
            raise ValueError(f"{cidr}: a network must have a prefix length of at least 1")
        encoded = encode(record)
        _insert(root, key, prefix, depth, data_index.setdefault(encoded, len(data)))
        if len(data) < len(data_index):
            data.append(encoded)

    nodes = _number(root)
    node_count = len(nodes)
    offsets, pos = [], 0
    for blob in data:
        offsets.append(pos)
        pos += len(blob)

    def record_value(child: _Node | int | None) -> int:
        if child is None:
            return node_count
        if isinstance(child, _Node):
            return child.number
        return node_count + len(DATA_SECTION_SEPARATOR) + offsets[child]

    limit = 2**record_size
    tree = bytearray()
    for node in nodes:
        left, right = (record_value(c) for c in node.children)
        if max(left, right) >= limit:
            raise ValueError(f"record value {max(left, right)} does not fit {record_size}-bit records")
        tree += _node_bytes(left, right, record_size)

    metadata = {
        "node_count": UInt(node_count, 32),
        "record_size": UInt(record_size, 16),
        "ip_version": UInt(ip_version, 16),
        "database_type": database_type,
        "languages": list(languages),
        "binary_format_major_version": UInt(2, 16),
        "binary_format_minor_version": UInt(0, 16),
        "build_epoch": UInt(build_epoch, 64),
        "description": {"en": description},
    }
    return b"".join([bytes(tree), DATA_SECTION_SEPARATOR, *data, METADATA_MARKER, encode(metadata)])


def write_mmdb(
    path: Path | str, networks: Iterable[tuple[str, Any]] | Mapping[str, Any], **options: Any
) -> Path:
    """Write ``build_mmdb(networks, **options)`` to ``path`` and return the path."""
    path = Path(path)
    path.write_bytes(build_mmdb(networks, **options))
    return path


def _tree_key(cidr: str, ip_version: int) -> tuple[int, int]:
    """The network's address bits and prefix length in a tree of ``ip_version``."""
    net = ipaddress.ip_network(cidr)  # strict: host bits set is a mistake in test data
    if ip_version == 4:
        if net.version != 4:
            raise ValueError(f"{cidr}: an IPv6 network does not fit an IPv4 database")
        return int(net.network_address), net.prefixlen
    if net.version == 4:  # "as-is" in the first 32 bits: ::a.b.c.d/96+prefix
        return int(net.network_address), 96 + net.prefixlen
    return int(net.network_address), net.prefixlen


def _insert(root: _Node, key: int, prefix: int, depth: int, value: int) -> None:
    node = root
    for level in range(prefix - 1):
        bit = key >> (depth - 1 - level) & 1
        child = node.children[bit]
        if not isinstance(child, _Node):
            # Split an empty or data record: both halves keep what the whole had.
            split = _Node()
            split.children = [child, child]
            node.children[bit] = child = split
        node = child
    node.children[key >> (depth - prefix) & 1] = value  # replaces any more specific subtree


def _number(root: _Node) -> list[_Node]:
    """Nodes in breadth-first order, numbered; the root is node 0."""
    order, i = [root], 0
    while i < len(order):
        order[i].number = i
        order.extend(c for c in order[i].children if isinstance(c, _Node))
        i += 1
    return order


def _node_bytes(left: int, right: int, record_size: int) -> bytes:
    if record_size == 28:  # the high nibbles of both records share the middle byte
        middle = (left >> 24) << 4 | right >> 24
        return (left & 0xFFFFFF).to_bytes(3, "big") + bytes([middle]) + (right & 0xFFFFFF).to_bytes(3, "big")
    width = record_size // 8
    return left.to_bytes(width, "big") + right.to_bytes(width, "big")
