"""`taishi analyze` on every input kind, through the same pipeline code, and its outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from taishi.pipeline import attacks
from taishi.pipeline.cli import main

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data"
FLOWLOGS = ROOT / "tests" / "unit" / "collectors" / "data" / "flowlogs"


def _pcap_with_scan(path: Path) -> None:
    """A small pcap of a vertical scan (SYNs to 200 ports, nothing answers), written by hand."""
    import struct

    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(200):
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 40, i, 0, 64, 6, 0, bytes([203, 0, 113, 9]), bytes([10, 0, 0, 5])
        )
        tcp = struct.pack("!HHIIBBHHH", 40000 + i, 1 + i * 7, 0, 0, 5 << 4, 0x02, 1024, 0, 0)
        frame = b"\x00" * 12 + b"\x08\x00" + ip + tcp
        ts = 1_795_000_000 + i // 10
        out += struct.pack("<IIII", ts, (i % 10) * 100_000, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))


def test_pcap_scan_is_found_and_outputs_are_written(tmp_path, capsys):
    pcap = tmp_path / "scan.pcap"
    _pcap_with_scan(pcap)
    out, report = tmp_path / "alerts.jsonl", tmp_path / "report.html"
    assert main(["analyze", str(pcap), "--org", "bank-a", "--out", str(out), "--report", str(report)]) == 0
    alerts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(a["rule"]["id"], a["taishi"]["entity"]["ip"]) for a in alerts] == [("scan", "203.0.113.9")]
    assert alerts[0]["organization"]["id"] == "bank-a"
    page = report.read_text()
    assert "203.0.113.9" in page and "Port scan" in page and "<script" not in page
    assert "200 flow records" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("argus.binetflow", "argus"), ("nfdump.csv", "nfdump"), ("zeek_conn.json", "zeek-json")],
)
def test_flow_logs_are_detected_and_read(name, fmt, tmp_path):
    from taishi.pipeline.analyze import detect, load

    path = FLOWLOGS / name
    assert detect(path) == fmt
    loaded = load([path], None, "bank-a", "s1")
    assert len(loaded.columns["@timestamp"]) == loaded.per_input[str(path)] > 0


def test_zeek_tsv_and_netflow_payloads_when_the_shared_data_is_there(tmp_path):
    from taishi.pipeline.analyze import detect, load

    if not SHARED.exists():
        pytest.skip("shared data not present")
    # Zeek's own baseline (timestamps masked by its test suite): give each row a real time.
    text = (FLOWLOGS / "zeek" / "core.mpls-in-vlan.conn.log").read_text()
    rows = iter(range(10_000))
    conn = tmp_path / "conn.log"
    conn.write_text(
        "\n".join(
            ln.replace("XXXXXXXXXX.XXXXXX", f"{1_795_000_000 + next(rows)}.000000", 1)
            if not ln.startswith("#")
            else ln
            for ln in text.splitlines()
        )
    )
    assert detect(conn) == "zeek-tsv"
    loaded = load([conn], None, "bank-a", "s1")
    assert loaded.per_input[str(conn)] == sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))
    nf = SHARED / "netflow" / "netflow5.dat"
    assert detect(nf) == "netflow"
    loaded = load([nf], None, "bank-a", "s1")
    assert loaded.per_input[str(nf)] > 0


def test_unknown_and_missing_inputs_are_clear_errors(tmp_path, capsys):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x01\x02\x03 not a flow format")
    assert main(["analyze", str(junk)]) == 2
    assert "junk.bin" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope.pcap")]) == 2


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    from taishi.pipeline.report import render

    cols, _ = attacks.vertical_scan("bank-a", "203.0.113.1", "10.0.0.1", 1_795_000_000_000, ports=300)
    assert len(cols["@timestamp"]) == 300 and np.all(np.diff(cols["@timestamp"]) >= 0)
    pcap = tmp_path / "scan.pcap"
    _pcap_with_scan(pcap)
    report = tmp_path / "r.html"
    assert main(["analyze", str(pcap), "--report", str(report)]) == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1300,1600",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    assert render([], [], "empty").count("Nothing to show") >= 1 and sys.version_info >= (3, 11)
