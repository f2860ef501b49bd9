"""pcap/pcapng reading: formats, byte orders, timestamps, damage, and the parallel record walk.

The walk is checked against a plain ``struct`` loop over the records, on files built to mislead it:
payloads full of fake record headers (false segment starts), jumbo records longer than the search window,
and windows smaller than one record.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from taishi.collectors import pcap_reader
from taishi.collectors.pcap_reader import CaptureFormatError, iter_packet_batches
from tests.unit.collectors.test_pcap_frames import SYN, eth, ipv4, pcap, pcapng_section, tcp


def _frames(n: int, size: int = 60) -> list[tuple[float, bytes]]:
    return [
        (
            1_700_000_000 + i * 0.25,
            eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000 + i, 80, SYN))).ljust(size, b"\0"),
        )
        for i in range(n)
    ]


def _read(path: Path, chunk: int = 64 << 20) -> tuple[list[int], list[int], list[int], list[int]]:
    starts, caplens, ts, lt = [], [], [], []
    for b in iter_packet_batches(path, chunk):
        starts += (b.start + b.file_offset).tolist()
        caplens += b.caplen.tolist()
        ts += b.ts_us.tolist()
        lt += b.linktype.tolist()
    return starts, caplens, ts, lt


def _reference_pcap(raw: bytes) -> tuple[list[int], list[int]]:
    e = "<" if struct.unpack_from("<I", raw)[0] in (0xA1B2C3D4, 0xA1B23C4D, 0xA1B2CD34) else ">"
    hdr = 24 if struct.unpack_from(e + "I", raw)[0] == 0xA1B2CD34 else 16
    off, starts, lens = 24, [], []
    while off + hdr <= len(raw):
        n = struct.unpack_from(e + "I", raw, off + 8)[0]
        if off + hdr + n > len(raw):
            break
        starts.append(off + hdr)
        lens.append(n)
        off += hdr + n
    return starts, lens


@pytest.mark.parametrize(
    "opts",
    [{}, {"endian": ">"}, {"nanos": True}, {"nanos": True, "endian": ">"}, {"modified": True}],
    ids=["le-us", "be-us", "le-ns", "be-ns", "modified"],
)
def test_pcap_variants(tmp_path: Path, opts: dict[str, object]) -> None:
    raw = pcap(_frames(5), linktype=1, **opts)  # type: ignore[arg-type]
    path = tmp_path / "v.pcap"
    path.write_bytes(raw)
    starts, caplens, ts, lt = _read(path)
    assert (starts, caplens) == _reference_pcap(raw)
    assert ts == [1_700_000_000_000_000 + i * 250_000 for i in range(5)]
    assert lt == [1] * 5


def test_pcapng_sections_byte_orders_resolutions_and_simple_blocks(tmp_path: Path) -> None:
    frame = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, SYN)))
    raw = pcapng_section([(1, 6), (101, 9)], [(0, 10.5, frame), (1, 11.25, frame[14:])], simple=[frame])
    raw += pcapng_section([(228, 0x80 | 10)], [(0, 20.0, frame[14:])], endian=">")
    raw += pcapng_section([(1, 3)], [(0, 30.125, frame)])
    path = tmp_path / "s.pcapng"
    path.write_bytes(raw)
    starts, caplens, ts, lt = _read(path)
    assert lt == [1, 101, 1, 228, 1]  # the simple block belongs to interface 0 of its section
    assert caplens == [len(frame), len(frame) - 14, len(frame), len(frame) - 14, len(frame)]
    assert ts == [10_500_000, 11_250_000, 11_250_000, 20_000_000, 30_125_000]
    assert [raw[s : s + 6] for s in starts] == [frame[:6], frame[14:20], frame[:6], frame[14:20], frame[:6]]


def test_truncated_last_record_is_dropped_quietly(tmp_path: Path) -> None:
    raw = pcap(_frames(4))
    path = tmp_path / "cut.pcap"
    path.write_bytes(raw[:-7])
    assert len(_read(path)[0]) == 3
    path.write_bytes(raw[:30])  # a header and part of a record header
    assert _read(path)[0] == []


def test_damaged_input_is_reported_with_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(CaptureFormatError, match="offset 0: magic 00000000"):
        _read(path)
    path.write_bytes(b"\xd4\xc3")
    with pytest.raises(CaptureFormatError, match="too short"):
        _read(path)
    raw = bytearray(pcap(_frames(3)))
    struct.pack_into("<I", raw, 24 + 16 + 60 + 8, 0x7FFFFFFF)  # second record's captured length
    path.write_bytes(bytes(raw))
    with pytest.raises(CaptureFormatError, match=f"pcap record at file offset {24 + 76}: length"):
        _read(path)
    ng = bytearray(pcapng_section([(1, 6)], [(0, 1.0, b"\0" * 60)]))
    struct.pack_into("<I", ng, 28 + 4, 6)  # the IDB's block length: not a multiple of 4
    path.write_bytes(bytes(ng))
    with pytest.raises(CaptureFormatError, match="pcapng block at file offset 28"):
        _read(path)


def _fake_records(n: int, ts: int) -> bytes:
    """Bytes that look like a run of small pcap records (a capture inside a packet's payload)."""
    return b"".join(struct.pack("<IIII", ts, 5, 40, 40) + b"\x45" * 40 for _ in range(n))


def test_parallel_walk_survives_fake_headers_jumbo_records_and_small_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = 1_700_000_000
    packets = []
    for i in range(900):
        kind = rng.random()
        if kind < 0.25:  # payload made of fake records, so segment searches find false starts
            body = _fake_records(int(rng.integers(20, 400)), base + i)
        elif kind < 0.3:  # jumbo: longer than the segment search window
            body = bytes(int(rng.integers(3000, 70000)))
        else:
            body = bytes(int(rng.integers(40, 1500)))
        packets.append((base + i * 0.01, eth(body)))
    raw = pcap(packets)
    assert len(raw) > 4 * pcap_reader._SEQUENTIAL_BELOW
    path = tmp_path / "walk.pcap"
    path.write_bytes(raw)
    ref = _reference_pcap(raw)
    for chunk in (64 << 20, 1 << 20, 300_000, 1 << 16):
        starts, caplens, _, _ = _read(path, chunk)
        assert (starts, caplens) == ref, chunk


def test_parallel_walk_of_pcapng(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frames = [(0, 1.0 + i, bytes(int(rng.integers(30, 3000)))) for i in range(1200)]
    raw = pcapng_section([(1, 6)], frames)
    path = tmp_path / "walk.pcapng"
    path.write_bytes(raw)
    for chunk in (64 << 20, 200_000):
        starts, caplens, ts, _ = _read(path, chunk)
        assert caplens == [len(f) for _, _, f in frames]
        assert ts == [round((1.0 + i) * 1e6) for i in range(1200)]
        assert all(raw[s : s + 8] == f[:8] for s, (_, _, f) in zip(starts, frames, strict=True))
