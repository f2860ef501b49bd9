"""The shipper (spool first, then Kafka, in order), the NetFlow UDP listener and the collector CLI."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from taishi.collectors.netflow_listener import NetflowListener, parse_listen
from taishi.collectors.shipper import CollectorSettings, MemoryProducer, Shipper
from taishi.collectors.spool import SpoolFull
from taishi.pipeline import contract, wire

V5_EXPORT_SECS = 1_795_000_000


def v5_datagram(first_id: int, count: int = 30, secs: int = V5_EXPORT_SECS) -> bytes:
    """A NetFlow v5 packet whose records carry ids ``first_id ..``: source port and source.bytes."""
    uptime = 600_000
    out = [struct.pack(">HHIIIIBBH", 5, count, uptime, secs, 0, first_id, 0, 0, 0)]
    for i in range(count):
        rid = first_id + i
        out.append(
            struct.pack(
                ">4s4s4sHHIIIIHHBBBBHHBBH",
                bytes([10, 1, (rid >> 8) & 0xFF, rid & 0xFF]),
                bytes([192, 0, 2, 7]),
                b"\0\0\0\0",
                1,
                2,
                3,  # packets
                rid,  # octets: the record id, so every record is recognisable downstream
                uptime - 5_000 + (rid % 1000),  # first switched
                uptime - 1_000,
                1024 + rid % 60000,
                443,
                0,
                0x1B,
                6,
                0,
                0,
                0,
                24,
                24,
                0,
            )
        )
    return b"".join(out)


def record_ids(messages: list[Any]) -> list[int]:
    """source.bytes of every record in (value, headers) messages, decoding the Arrow batches."""
    ids: list[int] = []
    for value, hdrs in messages:
        decoded = wire.decode(value, hdrs)
        assert decoded.table is not None and not decoded.rejects
        assert decoded.table.num_rows == int(dict(hdrs)[contract.HEADER_COUNT])
        ids += decoded.table.column("source.bytes").to_pylist()
    return ids


def collector_settings(tmp_path: Path, **kw: Any) -> CollectorSettings:
    base: dict[str, Any] = {
        "organization_id": "bank-a",
        "sensor_id": "s1",
        "hostname": "probe-1",
        "spool_dir": tmp_path / "spool",
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.1,
    }
    return CollectorSettings(**{**base, **kw})


def columns(ids: range, ts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    n = len(ids)
    return {
        "@timestamp": ts if ts is not None else np.full(n, 1_795_000_000_000, dtype=np.int64),
        "source.ip": np.array([f"10.0.0.{i % 250}" for i in ids], dtype=object),
        "destination.ip": np.full(n, "192.0.2.1", dtype=object),
        "source.port": np.full(n, 1000, dtype=np.int32),
        "destination.port": np.full(n, 53, dtype=np.int32),
        "network.iana_number": np.full(n, 17, dtype=np.int16),
        "source.bytes": np.array(list(ids), dtype=np.int64),
    }


def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_records_are_tagged_batched_and_acknowledged_in_order(tmp_path: Path) -> None:
    producer = MemoryProducer()
    shipper = Shipper(collector_settings(tmp_path, batch_records=1000), lambda: producer)
    try:
        assert shipper.write(columns(range(2500))) == 2500
        assert shipper.flush(10)
    finally:
        shipper.close()
    assert [len(m[2]) > 0 for m in producer.messages] == [True] * 3
    topic, key, value, hdrs = producer.messages[0]
    assert topic == contract.FLOWS_TOPIC and key == b"bank-a|s1"
    assert dict(hdrs)[contract.HEADER_SENSOR] == b"s1"
    table = wire.decode(value, hdrs).table
    assert table is not None
    for name, want in (
        ("organization.id", "bank-a"),
        ("observer.name", "s1"),
        ("observer.hostname", "probe-1"),
        ("event.dataset", "netflow"),
    ):
        assert set(table.column(name).to_pylist()) == {want}
    assert record_ids([(m[2], m[3]) for m in producer.messages]) == list(range(2500))
    st = shipper.status()
    assert st["shipper"]["sent_records"] == 2500 and st["spool"]["pending_messages"] == 0


def test_an_unsorted_batch_is_sent_in_event_time_order(tmp_path: Path) -> None:
    producer = MemoryProducer()
    shipper = Shipper(collector_settings(tmp_path), lambda: producer)
    ts = 1_795_000_000_000 + np.array([5, 1, 4, 2, 3], dtype=np.int64) * 1000
    shipper.write(columns(range(5), ts))
    assert shipper.flush(10)
    shipper.close()
    assert record_ids([(m[2], m[3]) for m in producer.messages]) == [1, 3, 4, 2, 0]


def test_an_outage_keeps_records_in_the_spool_and_they_drain_in_order(tmp_path: Path) -> None:
    producer = MemoryProducer()
    producer.fail = True
    shipper = Shipper(collector_settings(tmp_path, batch_records=100), lambda: producer)
    try:
        for start in range(0, 1000, 100):
            shipper.write(columns(range(start, start + 100)))
        wait_until(lambda: shipper.counters.send_errors >= 2)
        assert shipper.spool.pending_messages == 10 and not producer.messages
        producer.fail = False
        assert shipper.flush(10)
    finally:
        shipper.close()
    assert record_ids([(m[2], m[3]) for m in producer.messages]) == list(range(1000))
    assert shipper.counters.resent_messages >= 1  # the failed message was sent again


class _SilentProducer:
    """Accepts sends and never acknowledges them (Kafka that took the data and then went silent)."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> Any:
        self.sent += 1
        return _PendingFuture()

    def close(self, timeout: float | None = None) -> None:
        pass


class _PendingFuture:
    is_done = False

    def add_both(self, f: Any, *args: Any) -> None:
        pass


def test_messages_sent_but_not_acknowledged_are_resent_by_the_next_run(tmp_path: Path) -> None:
    silent = _SilentProducer()
    first = Shipper(collector_settings(tmp_path, batch_records=50), lambda: silent)
    first.write(columns(range(500)))
    wait_until(lambda: silent.sent == 10)
    first.close(drain_timeout_s=0.2)
    assert first.spool.pending_messages == 10

    producer = MemoryProducer()
    second = Shipper(collector_settings(tmp_path, batch_records=50), lambda: producer)
    assert second.counters.recovered_messages == 10
    assert second.flush(10)
    second.close()
    assert record_ids([(m[2], m[3]) for m in producer.messages]) == list(range(500))


def test_a_full_spool_under_the_block_policy_refuses_after_the_timeout(tmp_path: Path) -> None:
    producer = MemoryProducer()
    producer.fail = True
    settings = collector_settings(
        tmp_path, batch_records=500, spool_max_bytes=64 << 10, full_policy="block", block_timeout_s=0.2
    )
    shipper = Shipper(settings, lambda: producer)
    try:
        with pytest.raises(SpoolFull):
            for start in range(0, 100_000, 500):
                shipper.write(columns(range(start, start + 500)))
        c = shipper.counters
        assert c.refused_records > 0 and c.written_records + c.refused_records <= 100_000
        assert shipper.spool.counters.dropped_messages == 0
    finally:
        shipper.close(drain_timeout_s=0)


def test_settings_validate_the_institution_and_sensor(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="organization id"):
        collector_settings(tmp_path, organization_id="Bank A")
    with pytest.raises(ValueError, match="sensor id"):
        collector_settings(tmp_path, sensor_id="a|b")
    with pytest.raises(ValueError, match="full_policy"):
        collector_settings(tmp_path, full_policy="newest")


def test_listener_decodes_udp_datagrams_and_ships_every_record(tmp_path: Path) -> None:
    producer = MemoryProducer()
    shipper = Shipper(collector_settings(tmp_path), lambda: producer)
    listener = NetflowListener(shipper, "127.0.0.1:0", batch_datagrams=16, batch_interval_s=0.1)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for k in range(40):
                tx.sendto(v5_datagram(k * 30), listener.address)
            tx.sendto(b"\x00\x05garbage", listener.address)
        wait_until(lambda: listener.counters.datagrams == 41)
        assert shipper.flush(10)
    finally:
        listener.stop()
        thread.join(5)
        listener.close()
        shipper.close()
    c = listener.counters
    assert (c.records, c.decode_errors) == (1200, 1)
    assert sorted(record_ids([(m[2], m[3]) for m in producer.messages])) == list(range(1200))
    table = wire.decode(producer.messages[0][2], producer.messages[0][3]).table
    assert table is not None and set(table.column("observer.ip").to_pylist()) == {"127.0.0.1"}


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:2055") == ("0.0.0.0", 2055)
    assert parse_listen("[::]:4739") == ("::", 4739)
    assert parse_listen(":9995") == ("0.0.0.0", 9995)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("2055")


_NO_PANDAS = textwrap.dedent(
    """
    import contextlib, io, sys
    for blocked in ("pandas", "elasticsearch", "sklearn"):
        sys.modules[blocked] = None  # any import of them raises ImportError
    from taishi.pipeline.cli import build_parser
    import taishi.collectors.netflow_listener, taishi.collectors.shipper, taishi.collectors.spool
    parser = build_parser()
    for argv in (["collect", "--help"], ["collect", "netflow", "--help"], ["collect", "spool-status", "--help"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                assert exc.code == 0, (argv, exc.code)
        print(out.getvalue())
    args = parser.parse_args(["collect", "netflow", "--org", "bank-a", "--spool", "d", "--spool-max-bytes", "2G"])
    assert args.spool_max_bytes == 2 << 30 and args.full_policy == "drop-oldest"
    """
)


def test_collect_help_works_without_pandas_elasticsearch_or_sklearn() -> None:
    proc = subprocess.run([sys.executable, "-c", _NO_PANDAS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--spool-max-bytes" in proc.stdout and "--full-policy" in proc.stdout
    assert "spool-status" in proc.stdout


def test_spool_status_prints_json(tmp_path: Path) -> None:
    producer = MemoryProducer()
    producer.fail = True
    shipper = Shipper(collector_settings(tmp_path), lambda: producer)
    shipper.write(columns(range(10)))
    shipper.close(drain_timeout_s=0)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "taishi.pipeline.cli",
            "collect",
            "spool-status",
            "--spool",
            str(tmp_path / "spool"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["pending_messages"] == 1 and st["pending_records"] == 10
    assert st["counters"]["appended_records"] == 10
