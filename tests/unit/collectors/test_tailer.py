"""The file tailer: appends, partial lines, restart from the acknowledged checkpoint, rotation, truncation.

Lines are Zeek conn.log lines whose originator port is the line's id, so a test reads back exactly which
lines it got, in which order, and how often.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from taishi.collectors.flowlogs import ZeekTsvParser
from taishi.collectors.tailer import FileTailer, GlobTailer, TailBatch

HEADER = (
    b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\torig_pkts\torig_ip_bytes\t"
    b"resp_pkts\tresp_ip_bytes\n"
    b"#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tcount\tcount\tcount\n"
)


def conn(i: int) -> bytes:
    return f"{1300000000 + i}.250000\tC{i:08d}\t10.0.0.1\t{i}\t10.0.0.2\t80\ttcp\t1\t60\t1\t60\n".encode()


def lines(*ids: int) -> bytes:
    return b"".join(conn(i) for i in ids)


def tailer(path: Path, state: Path, **options: object) -> FileTailer:
    defaults: dict[str, object] = {
        "max_wait_s": 0,
        "poll_interval_s": 0.01,
        "rotate_grace_s": 0,
        "fsync": False,
    }
    defaults.update(options)
    return FileTailer(path, ZeekTsvParser(), state, **defaults)  # type: ignore[arg-type]


def ids(batch: TailBatch) -> list[int]:
    return batch.columns["source.port"].tolist()


def drain(t: FileTailer | GlobTailer, ack: bool = True) -> list[int]:
    """Ids of every line readable now, batch after batch (acknowledging each unless told not to)."""
    got: list[int] = []
    for _ in range(100):
        batch = t.read_batch(max_wait_s=0)
        assert batch.rejects == [], batch.rejects
        got += ids(batch)
        if ack:
            t.ack(batch)
        if not batch.lines:
            return got
    raise AssertionError("the tailer kept returning lines")


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "conn.log"
    path.parent.mkdir()
    path.write_bytes(HEADER + lines(1, 2, 3))
    return path


def test_appended_lines_arrive_in_order_and_a_partial_line_waits_for_its_newline(
    log: Path, tmp_path: Path
) -> None:
    t = tailer(log, tmp_path / "state")
    first = t.read_batch()
    assert ids(first) == [1, 2, 3] and first.first_line == 1 and first.lines == 10
    append(log, lines(4, 5) + conn(6)[:20])
    assert drain(t) == [4, 5]
    append(log, conn(6)[20:] + lines(7))
    batch = t.read_batch()
    assert ids(batch) == [6, 7] and batch.first_line == 13
    assert t.read_batch().lines == 0


def test_batches_are_bounded_by_lines_and_wait_at_most_max_wait(log: Path, tmp_path: Path) -> None:
    t = tailer(log, tmp_path / "state", max_lines=4)
    assert [ids(t.read_batch()) for _ in range(3)] == [[], [1], [2, 3]]  # 7 header lines first
    append(log, lines(*range(10, 20)))
    assert [ids(t.read_batch()) for _ in range(4)] == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19], []]
    started = time.monotonic()
    assert t.read_batch(max_wait_s=0.05).lines == 0
    assert 0.04 < time.monotonic() - started < 1.0


def test_checkpoint_is_written_only_on_ack_and_names_the_file(log: Path, tmp_path: Path) -> None:
    t = tailer(log, tmp_path / "state")
    batch = t.read_batch()
    assert not t.state_file.exists()
    t.ack(batch)
    saved = orjson.loads(t.state_file.read_bytes())
    st = os.stat(log)
    assert (saved["dev"], saved["ino"], saved["offset"], saved["line"]) == (
        st.st_dev,
        st.st_ino,
        st.st_size,
        11,
    )
    assert saved["path"] == str(log) and saved["fingerprint_len"] == st.st_size
    assert saved["parser"]["fields"][3] == "id.orig_p"
    assert not list((tmp_path / "state").glob("*.tmp"))


def test_restart_resumes_after_the_last_acknowledged_batch(log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    append(log, lines(*range(4, 11)))
    t = tailer(log, state, max_lines=3)
    seen: list[int] = []
    for _ in range(5):  # header + lines 1..8 in batches of three lines, all acknowledged
        batch = t.read_batch()
        seen += ids(batch)
        t.ack(batch)
    unacked = t.read_batch()
    assert ids(unacked) == [9, 10]
    t.close()  # "crash": the last batch was never acknowledged

    append(log, lines(11, 12))
    t = tailer(log, state, max_lines=3)
    again = drain(t)
    assert again == [9, 10, 11, 12]  # the unacknowledged batch comes again, nothing acknowledged does
    assert seen + again == list(range(1, 13))
    t.close()
    append(log, lines(13))
    t = tailer(log, state)
    assert drain(t) == [13]  # the header is not read again: the parser state came from the checkpoint


def test_rotation_by_rename_finishes_the_old_file_then_reads_the_new_one(log: Path, tmp_path: Path) -> None:
    t = tailer(log, tmp_path / "state")
    writer = open(log, "ab")  # noqa: SIM115 - the writer keeps its descriptor across the rename, as Zeek does
    assert drain(t) == [1, 2, 3]
    writer.write(lines(4, 5))
    writer.flush()
    os.rename(log, log.with_name("conn.log.1"))
    writer.write(lines(6) + conn(7).rstrip(b"\n"))  # still written to the old file; no newline at the end
    writer.close()
    log.write_bytes(HEADER + lines(100, 101))
    assert drain(t) == [4, 5, 6, 7, 100, 101]
    assert t.counters.rotations == 1
    append(log, lines(102))
    assert drain(t) == [102]
    assert t.acked is not None and t.acked.ino == os.stat(log).st_ino


def test_a_writer_still_finishing_the_rotated_file_is_waited_for(log: Path, tmp_path: Path) -> None:
    t = tailer(log, tmp_path / "state", rotate_grace_s=0.2)
    writer = open(log, "ab")  # noqa: SIM115
    assert drain(t) == [1, 2, 3]
    os.rename(log, log.with_name("conn.log.1"))
    log.write_bytes(HEADER + lines(100))
    writer.write(conn(4)[:25])
    writer.flush()
    assert drain(t) == []  # the half line waits: its writer may still finish it
    writer.write(conn(4)[25:])
    writer.close()
    assert drain(t) == [4]
    time.sleep(0.25)
    assert drain(t) == [100]


def test_parser_state_of_csv_and_detected_formats_survives_a_restart(tmp_path: Path) -> None:
    from taishi.collectors.flowlogs import AutoParser

    data = Path(__file__).parent / "data" / "flowlogs"
    path = tmp_path / "flows.csv"
    csv = (data / "nfdump.csv").read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(csv[:2]) + b"\n")
    t = FileTailer(path, AutoParser(), tmp_path / "state", max_wait_s=0, fsync=False)
    batch = t.read_batch()
    assert batch.count == 1
    t.ack(batch)
    t.close()
    append(path, b"\n".join(csv[2:4]) + b"\n")
    t = FileTailer(path, AutoParser(), tmp_path / "state", max_wait_s=0, fsync=False)
    batch = t.read_batch()
    assert batch.count == 2 and batch.rejects == [] and batch.first_line == 3
    assert batch.columns["event.dataset"].tolist() == ["nfdump", "nfdump"]


def test_rotation_while_stopped_is_found_by_inode(log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    t = tailer(log, state)
    assert drain(t) == [1, 2, 3]
    t.close()
    append(log, lines(4, 5))
    os.rename(log, log.with_name("conn.2011-03-18-19-00-00.log"))
    log.write_bytes(HEADER + lines(100))
    t = tailer(log, state)
    assert drain(t) == [4, 5, 100]
    t.close()
    # Rotated again while stopped, and this time the rotated file is gone: its unread lines are lost.
    append(log, lines(101))
    os.rename(log, log.with_name("conn.log.1"))
    log.write_bytes(HEADER + lines(200))
    log.with_name("conn.log.1").unlink()
    t = tailer(log, state)
    assert drain(t) == [200]
    assert t.counters.lost_rotated_files == 1


def test_truncation_starts_the_file_again_from_its_beginning(log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    t = tailer(log, state)
    assert drain(t) == [1, 2, 3]
    log.write_bytes(HEADER + lines(10))  # copytruncate: same inode, shorter
    assert drain(t) == [10]
    assert t.counters.truncations == 1
    log.write_bytes(HEADER + lines(*range(20, 30)))  # rewritten in place, now longer than before
    assert drain(t) == list(range(20, 30))
    assert t.counters.truncations == 2
    t.close()
    log.write_bytes(HEADER + lines(40))  # truncated while stopped
    assert drain(tailer(log, state)) == [40]


@pytest.mark.parametrize("max_bytes", [8 << 20, 100], ids=["whole-line-buffered", "line-read-in-pieces"])
def test_overlong_lines_are_rejected_and_line_numbers_stay_right(
    log: Path, tmp_path: Path, max_bytes: int
) -> None:
    t = tailer(log, tmp_path / "state", max_line_bytes=200, max_bytes=max_bytes)
    assert drain(t) == [1, 2, 3]
    append(log, lines(4) + b"x" * 1000 + b"\n" + lines(5) + conn(70000))
    got, rejects = [], []
    for _ in range(20):
        batch = t.read_batch()
        got += ids(batch)
        rejects += [(r.line, r.reason[:30], r.raw[:3]) for r in batch.rejects]
    assert got == [4, 5]
    assert rejects == [
        (12, "line longer than 200 bytes (ma", b"xxx"),
        (14, "field id.orig_p: expected a po", b"130"),
    ]
    assert t.counters.overlong_lines == 1


def test_start_at_end_reads_only_new_lines_but_knows_the_header(log: Path, tmp_path: Path) -> None:
    append(log, conn(4)[:10])  # a partial last line is not "already there"
    t = tailer(log, tmp_path / "state", start_at="end")
    assert t.read_batch().lines == 0
    append(log, conn(4)[10:] + lines(5))
    batch = t.read_batch()
    assert ids(batch) == [4, 5] and batch.first_line == 11


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "conn.log"
    t = tailer(path, tmp_path / "state")
    assert t.read_batch().lines == 0
    path.write_bytes(HEADER + lines(1))
    assert drain(t) == [1]


def test_glob_follows_every_matching_file(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(HEADER + lines(1, 2))
    (tmp_path / "b.log").write_bytes(HEADER + lines(10))
    options = {"max_wait_s": 0, "poll_interval_s": 0.01, "rotate_grace_s": 0, "fsync": False}
    g = GlobTailer(str(tmp_path / "*.log"), ZeekTsvParser, tmp_path / "state", rescan_interval_s=0, **options)
    assert sorted(drain(g)) == [1, 2, 10]
    append(tmp_path / "b.log", lines(11))
    (tmp_path / "c.log").write_bytes(HEADER + lines(20))
    assert sorted(drain(g)) == [11, 20]
    g.close()
    g = GlobTailer(str(tmp_path / "*.log"), ZeekTsvParser, tmp_path / "state", rescan_interval_s=0, **options)
    assert drain(g) == []


def test_run_ships_and_acknowledges_until_stopped(log: Path, tmp_path: Path) -> None:
    t = tailer(log, tmp_path / "state", max_wait_s=0.02)
    shipped: list[int] = []
    thread = threading.Thread(target=t.run, args=(lambda cols: shipped.extend(cols["source.port"].tolist()),))
    thread.start()
    append(log, lines(4))
    deadline = time.monotonic() + 5
    while shipped != [1, 2, 3, 4] and time.monotonic() < deadline:
        time.sleep(0.01)
    t.stop()
    thread.join(timeout=5)
    assert shipped == [1, 2, 3, 4] and not thread.is_alive()
    assert t.acked is not None and t.acked.offset == os.stat(log).st_size
