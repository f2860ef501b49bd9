"""The disk spool: order, restart after SIGKILL, torn writes, drop-oldest accounting and the block policy."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from taishi.collectors.spool import Spool, SpoolFull, SpoolLocked, encode_frame


def payload(i: int, size: int = 100) -> bytes:
    return (f"message-{i:06d}-".encode() * (size // 15 + 1))[:size]


def drain(spool: Spool, ack: bool = True) -> list:
    out = []
    while batch := spool.read(max_messages=7):
        out += batch
        if ack:
            spool.ack(batch[-1].seq + 1)
    return out


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_messages_come_back_in_order_with_keys_headers_and_record_counts(tmp_path: Path) -> None:
    with Spool(tmp_path / "s") as spool:
        spool.append(b"first", key=b"bank-a|s1", headers=[("taishi-count", b"3"), ("h", b"")], records=3)
        spool.append(b"", key=None, headers=[], records=0)
        spool.append(payload(2, 5000), key=b"", records=1)
        got = drain(spool)
    assert [m.seq for m in got] == [0, 1, 2]
    assert (got[0].key, got[0].value, got[0].headers, got[0].records) == (
        b"bank-a|s1",
        b"first",
        [("taishi-count", b"3"), ("h", b"")],
        3,
    )
    assert (got[1].key, got[1].value, got[1].records) == (None, b"", 0)
    assert (got[2].key, got[2].value) == (b"", payload(2, 5000))


def test_acknowledged_position_survives_a_clean_restart_and_frees_segments(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with Spool(path, max_bytes=1 << 20, segment_bytes=1000) as spool:
        for i in range(40):
            spool.append(payload(i), records=2)
        assert len(segment_files(path)) > 4
        spool.read(10)
        spool.ack(10)
        assert spool.status()["pending_messages"] == 30
        assert spool.status()["pending_records"] == 60
    with Spool(path, max_bytes=1 << 20, segment_bytes=1000) as spool:
        got = drain(spool)
        assert [m.seq for m in got] == list(range(10, 40))
        assert [m.value for m in got] == [payload(i) for i in range(10, 40)]
        spool.append(payload(40))  # sequence numbers keep growing after a restart
        assert spool.read()[0].seq == 40
        st = spool.status()
        assert st["counters"]["acked_messages"] == 40 and st["counters"]["opens"] == 2
    assert len(segment_files(path)) == 1  # acknowledged segments were deleted


def test_sigkill_after_partial_ack_resends_exactly_the_unacknowledged_messages(tmp_path: Path) -> None:
    path = tmp_path / "s"
    script = textwrap.dedent(
        f"""
        import os, signal
        from taishi.collectors.spool import Spool
        spool = Spool({str(path)!r}, segment_bytes=2000, fsync="never")
        for i in range(50):
            spool.append(b"m%d" % i, key=b"k", records=1)
        spool.read(30)
        spool.ack(23)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    with Spool(path) as spool:  # the kernel released the dead process's lock
        assert spool.pending_messages == 27
        got = drain(spool)
    assert [m.value for m in got] == [b"m%d" % i for i in range(23, 50)]


def test_torn_last_frame_is_truncated_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    with Spool(path) as spool:
        for i in range(5):
            spool.append(payload(i), key=b"k", records=4)
    seg = segment_files(path)[-1]
    whole = seg.stat().st_size
    torn = encode_frame(5, payload(5), b"k", [], 4)[:37]  # the process died inside a write
    with open(seg, "ab") as f:
        f.write(torn)
    with caplog.at_level(logging.WARNING, logger="taishi.collectors.spool"), Spool(path) as spool:
        assert seg.stat().st_size == whole
        st = spool.status()
        assert st["counters"]["truncations"] == 1
        assert st["counters"]["truncated_bytes"] == len(torn)
        assert st["pending_messages"] == 5 and st["pending_records"] == 20
        spool.append(payload(5), key=b"k", records=4)
    assert any("torn" in r.getMessage() for r in caplog.records)
    with Spool(path) as spool:
        assert [m.value for m in drain(spool)] == [payload(i) for i in range(6)]


@pytest.mark.parametrize("where", ["length", "body", "crc"])
def test_a_corrupt_last_frame_fails_its_crc_and_is_cut(tmp_path: Path, where: str) -> None:
    path = tmp_path / "s"
    with Spool(path) as spool:
        for i in range(3):
            spool.append(payload(i))
        last_offset = spool._segments[-1].offsets[-1]
    seg = segment_files(path)[-1]
    data = bytearray(seg.read_bytes())
    data[last_offset + {"length": 3, "crc": 5, "body": 40}[where]] ^= 0x01
    seg.write_bytes(bytes(data))
    with Spool(path) as spool:
        assert [m.value for m in drain(spool)] == [payload(0), payload(1)]
        assert spool.counters.truncated_bytes == len(data) - last_offset


def test_corruption_inside_a_sealed_segment_keeps_later_segments(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with Spool(path, segment_bytes=500) as spool:
        for i in range(12):
            spool.append(payload(i))
        first = spool._segments[0]
        lost = list(range(first.base + 1, first.end))
        second_frame = first.offsets[1]
    seg0 = segment_files(path)[0]
    data = bytearray(seg0.read_bytes())
    data[second_frame + 20] ^= 0xFF
    seg0.write_bytes(bytes(data))
    with Spool(path, segment_bytes=500) as spool:
        got = [m.seq for m in drain(spool)]
    assert got == [s for s in range(12) if s not in lost]


def test_drop_oldest_keeps_the_newest_and_counts_every_dropped_message_and_record(tmp_path: Path) -> None:
    path = tmp_path / "s"
    max_bytes, n = 4000, 200
    with Spool(path, max_bytes=max_bytes, segment_bytes=1000, full_policy="drop-oldest") as spool:
        spool.append(payload(0), records=3)
        spool.ack(1)  # an acknowledged message is freed, never counted as dropped
        for i in range(1, n):
            spool.append(payload(i), records=3)
            assert spool.status()["disk_bytes"] <= max_bytes
        st = spool.status()
        got = drain(spool)
    c = st["counters"]
    assert c["dropped_messages"] > 0 and c["dropped_segments"] > 0
    assert c["dropped_messages"] + len(got) == n - 1
    assert c["dropped_records"] == 3 * c["dropped_messages"]
    assert st["pending_messages"] == len(got) and st["pending_records"] == 3 * len(got)
    assert [m.seq for m in got] == list(range(n - len(got), n))  # the newest, contiguous, in order
    with Spool(path, max_bytes=max_bytes, segment_bytes=1000) as spool:  # counters persist
        assert spool.counters.dropped_messages == c["dropped_messages"]


def test_drop_oldest_moves_a_reader_past_dropped_messages(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", max_bytes=2000, segment_bytes=500) as spool:
        spool.append(payload(0))
        assert spool.read(1)[0].seq == 0  # in flight, not acknowledged
        for i in range(1, 40):
            spool.append(payload(i))
        spool.ack(1)  # the late acknowledgement of a dropped message changes nothing
        got = drain(spool)
    assert got and got[0].seq > 1 and [m.seq for m in got] == list(range(got[0].seq, 40))


def test_block_policy_raises_after_the_timeout_and_counts_it(tmp_path: Path) -> None:
    with Spool(
        tmp_path / "s", max_bytes=2000, segment_bytes=500, full_policy="block", block_timeout_s=0.3
    ) as spool:
        while spool.status()["disk_bytes"] + 140 <= 2000:
            spool.append(payload(0))
        t0 = time.monotonic()
        with pytest.raises(SpoolFull, match="full"):
            spool.append(payload(1))
        assert time.monotonic() - t0 >= 0.3
        c = spool.counters
        assert (c.blocked_appends, c.refused_appends, c.dropped_messages) == (1, 1, 0)


def test_block_policy_waits_until_the_sender_acknowledges(tmp_path: Path) -> None:
    with Spool(
        tmp_path / "s", max_bytes=2000, segment_bytes=500, full_policy="block", block_timeout_s=10
    ) as spool:
        n = 0
        while spool.status()["disk_bytes"] + 140 <= 2000:
            spool.append(payload(n))
            n += 1

        def sender() -> None:
            time.sleep(0.3)
            batch = spool.read(3)
            spool.ack(batch[-1].seq + 1)

        t = threading.Thread(target=sender)
        t.start()
        t0 = time.monotonic()
        spool.append(payload(n))  # blocks until the sender freed a segment
        waited = time.monotonic() - t0
        t.join()
        assert 0.2 < waited < 5
        assert spool.counters.blocked_appends == 1 and spool.counters.refused_appends == 0
        assert [m.value for m in drain(spool)][-1] == payload(n)


def test_rewind_resends_from_the_first_unacknowledged(tmp_path: Path) -> None:
    with Spool(tmp_path / "s") as spool:
        for i in range(10):
            spool.append(payload(i))
        spool.read(6)
        spool.ack(2)
        assert spool.read(1)[0].seq == 6
        spool.rewind()
        assert [m.seq for m in spool.read(3)] == [2, 3, 4]
        spool.rewind(8)
        assert [m.seq for m in spool.read()] == [8, 9]


def test_one_writer_per_directory_and_a_read_only_status(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with Spool(path, max_bytes=10_000, full_policy="block") as spool:
        for i in range(4):
            spool.append(payload(i), records=5)
        spool.ack(1)
        with pytest.raises(SpoolLocked):
            Spool(path)
        ro = Spool(path, readonly=True)
        st = ro.status()
        ro.close()
    assert (st["pending_messages"], st["pending_records"], st["max_bytes"], st["full_policy"]) == (
        3,
        15,
        10_000,
        "block",
    )
    assert st["torn_tail_bytes"] == 0
    assert json.loads((path / "state.json").read_text())["acked"] == 1


def test_bad_arguments_name_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="full_policy"):
        Spool(tmp_path / "a", full_policy="oldest")  # type: ignore[arg-type]
    with Spool(tmp_path / "b", max_bytes=2000) as spool, pytest.raises(ValueError, match="does not fit"):
        spool.append(b"x" * 5000)
    with pytest.raises(FileNotFoundError):
        Spool(tmp_path / "missing", readonly=True)


def test_write_and_drain_rates(tmp_path: Path) -> None:
    """Not a benchmark assertion: prints the spool's own rates beside each other for the record."""
    value = payload(0, 256 << 10)
    with Spool(tmp_path / "s", fsync="interval") as spool:
        t0 = time.perf_counter()
        for _ in range(200):
            spool.append(value, key=b"k", records=1000)
        wrote = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = drain(spool)
        drained = time.perf_counter() - t0
    mb = 200 * len(value) / 1e6
    print(f"spool: append {mb / wrote:.0f} MB/s, read+ack {mb / drained:.0f} MB/s ({mb:.0f} MB)")
    assert len(got) == 200
