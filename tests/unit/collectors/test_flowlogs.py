"""Flow-log parsers: real Zeek conn.logs checked against their own text, Argus/nfdump/JSON samples, rejects.

The Zeek files are unmodified baselines from Zeek's test suite (data/flowlogs/zeek/README.md). Their masked
timestamps are replaced by distinct epoch values; every row is then compared with a plain split of the same
text, so the column-wise decoder is checked against an independent reading of every field it uses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from taishi.collectors.flowlogs import (
    FLOW_LOG_DTYPES,
    AutoParser,
    CsvFlowParser,
    JsonFlowMap,
    JsonLinesParser,
    ZeekTsvParser,
    detect_format,
    detect_format_bytes,
    make_parser,
    parse_file,
)

DATA = Path(__file__).parent / "data" / "flowlogs"
ZEEK_LOGS = sorted((DATA / "zeek").glob("*.conn.log"))
MASK = b"XXXXXXXXXX.XXXXXX"


def ms(*args: int) -> int:
    """Epoch milliseconds of a UTC date-time (year, month, day, hour, minute, second, microsecond)."""
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def unmask(text: bytes) -> bytes:
    """Give every masked timestamp a distinct value: 1300000000 + line index + a fraction."""
    lines = text.split(b"\n")
    return b"\n".join(
        line.replace(MASK, f"{1300000000 + i}.{(i * 7919) % 1000000:06d}".encode())
        for i, line in enumerate(lines)
    )


def plain_rows(text: bytes) -> list[tuple[int, dict[str, str]]]:
    """(line number, field -> value) of each data line, read with str.split: the independent oracle."""
    fields: list[str] = []
    rows = []
    for number, line in enumerate(text.decode().split("\n"), start=1):
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append((number, dict(zip(fields, line.split("\t"), strict=True))))
    return rows


def check_dtypes(columns: dict[str, np.ndarray]) -> None:
    for name, dtype in FLOW_LOG_DTYPES.items():
        assert columns[name].dtype == dtype, name


def row(columns: dict[str, np.ndarray], i: int) -> dict[str, object]:
    return {name: (v[i].item() if hasattr(v[i], "item") else v[i]) for name, v in columns.items()}


# ---------------------------------------------------------------------------------------------- Zeek TSV


@pytest.mark.parametrize("path", ZEEK_LOGS, ids=lambda p: p.name.removesuffix(".conn.log"))
def test_real_zeek_conn_logs_match_their_text_row_by_row(path: Path) -> None:
    text = unmask(path.read_bytes())
    batch = ZeekTsvParser().parse(text)
    expected = plain_rows(text)
    assert batch.rejects == []
    assert batch.count == len(expected) > 0
    check_dtypes(batch.columns)
    c = batch.columns
    for i, (_, f) in enumerate(expected):
        start_us = int(Decimal(f["ts"]) * 1_000_000)
        duration_us = 0 if f["duration"] == "-" else int(Decimal(f["duration"]) * 1_000_000)
        assert c["@timestamp"][i] == start_us // 1000
        assert c["event.end"][i] == (start_us + duration_us) // 1000
        assert c["source.ip"][i] == f["id.orig_h"] and c["destination.ip"][i] == f["id.resp_h"]
        assert (c["source.port"][i], c["destination.port"][i]) == (int(f["id.orig_p"]), int(f["id.resp_p"]))
        assert c["network.iana_number"][i] == int(f["ip_proto"])
        assert c["source.bytes"][i] == int(f["orig_ip_bytes"])
        assert c["source.packets"][i] == int(f["orig_pkts"])
        assert c["destination.bytes"][i] == int(f["resp_ip_bytes"])
        assert c["destination.packets"][i] == int(f["resp_pkts"])
        assert c["event.dataset"][i] == "zeek.conn"


def test_known_rows_of_the_gre_and_pppoe_baselines() -> None:
    gre = ZeekTsvParser().parse(unmask((DATA / "zeek" / "core.tunnels.gre.conn.log").read_bytes()))
    # 66.59.111.190 40264 -> 172.28.2.3 22 tcp ssh 3.157831 ... ShAdDaFf 12 1584 10 2199
    first = row(gre.columns, 0)
    assert first["source.ip"] == "66.59.111.190" and first["destination.port"] == 22
    assert (first["source.packets"], first["source.bytes"]) == (12, 1584)
    assert (first["destination.packets"], first["destination.bytes"]) == (10, 2199)
    assert first["event.end"] - first["@timestamp"] in (3157, 3158)
    assert first["taishi.flow.tcp_flags"] == 0x02 | 0x10 | 0x01 | 0x12  # S, h, A/a, F/f
    # ICMP: orig_p is the type; resp_p the code of a one-way message (3/3 port unreachable), or the
    # counterpart type of a request (8 echo request -> 0 echo reply).
    icmp = {
        (r["source.ip"], r["source.port"], r["destination.port"])
        for r in (row(gre.columns, i) for i in range(gre.count))
        if r["network.iana_number"] == 1
    }
    assert {("172.28.2.3", 3, 3), ("66.59.111.190", 8, 0)} <= icmp
    pppoe = ZeekTsvParser().parse(unmask((DATA / "zeek" / "core.pppoe.conn.log").read_bytes()))
    # fc00:0:2:100::1:1 128 -> fc00::1 129 icmp: an ICMPv6 echo (proto says icmp, ip_proto 58).
    echo = row(pppoe.columns, 0)
    assert (
        echo["source.ip"],
        echo["network.iana_number"],
        echo["source.port"],
        echo["destination.port"],
    ) == (
        "fc00:0:2:100::1:1",
        58,
        128,
        129,
    )


def test_masked_timestamps_are_rejected_naming_the_field_and_line() -> None:
    path = DATA / "zeek" / "core.tunnels.gre.conn.log"
    batch = ZeekTsvParser().parse(path.read_bytes())
    assert batch.count == 0
    assert [r.line for r in batch.rejects] == [n for n, _ in plain_rows(path.read_bytes())]
    assert all(r.reason.startswith("field ts: expected epoch seconds") for r in batch.rejects)
    assert "'XXXXXXXXXX.XXXXXX'" in batch.rejects[0].reason
    assert batch.rejects[0].raw.startswith(MASK + b"\tCtPZjS20MLrsMUOJi2")


HEADER = (
    b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tduration\torig_pkts\t"
    b"orig_ip_bytes\tresp_pkts\tresp_ip_bytes\thistory\n"
    b"#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tinterval\tcount\tcount\tcount\tcount\tstring\n"
)


def test_zeek_tsv_bad_lines_are_rejected_and_good_lines_kept() -> None:
    text = (
        b"1300475167.5\tC1\t10.0.0.1\t1000\t10.0.0.2\t80\ttcp\t-\t-\t-\t-\t-\t-\n"  # before the header
        + HEADER
        + b"1300475167.5\tC2\t10.0.0.1\t1001\t10.0.0.2\t80\ttcp\t-\t1\t60\t0\t0\tS\n"
        + b"1300475168\tC3\t10.0.0.1\t70000\t10.0.0.2\t80\ttcp\t-\t1\t60\t0\t0\tS\n"
        + b"1300475169\tC4\t10.0.0.1\t1003\t10.0.0.2\t80\ttcp\t-\t1\t60\t0\n"
        + b"1300475170\tC5\tnot-an-ip\t1004\t10.0.0.2\t80\ttcp\t-\t1\t60\t0\t0\tS\n"
        + b"1300475171\tC6\t10.0.0.1\t1005\t10.0.0.2\t80\tsctp\t2.5\t1\t60\t0\t0\t(empty)\r\n"
        + b"1300475172\tC7\t10.0.0.1\t1006\t10.0.0.2\t80\tbogus\t-\t1\t60\t0\t0\tS\n"
        + b"1300475173\tC8\t10.0.0.1\t1007\t10.0.0.2\t80\ttcp\t-\tmany\t60\t0\t0\tS\n"
        + b"\n#close\t2011-03-18-19-06-13\n"
    )
    batch = ZeekTsvParser().parse(text)
    reasons = {r.line: r.reason for r in batch.rejects}
    assert reasons[1] == "data line before any #fields header line"
    assert reasons[10].startswith("field id.orig_p: expected a port number 0-65535, got '70000'")
    assert reasons[11] == "expected 13 fields separated by '\\t', found 11"
    assert reasons[12].startswith("field id.orig_h: expected an IPv4 or IPv6 address, got 'not-an-ip'")
    assert reasons[14].startswith("field proto: expected tcp, udp or icmp")
    assert reasons[15].startswith("field orig_pkts: expected a non-negative integer, got 'many'")
    assert sorted(reasons) == [1, 10, 11, 12, 14, 15]
    assert batch.rejects[1].raw == b"1300475168\tC3\t10.0.0.1\t70000\t10.0.0.2\t80\ttcp\t-\t1\t60\t0\t0\tS"
    assert batch.columns["source.port"].tolist() == [1001, 1005]
    assert batch.columns["network.iana_number"].tolist() == [6, 132]
    assert batch.columns["event.end"].tolist() == [1300475167500, 1300475173500]  # CRLF line, 2.5 s
    assert batch.columns["taishi.flow.tcp_flags"].tolist() == [0x02, 0]
    assert batch.lines == text.count(b"\n")


def test_zeek_tsv_header_changes_midway_and_other_logs_are_refused() -> None:
    second = HEADER.replace(b"ts\tuid\tid.orig_h", b"uid\tts\tid.orig_h").replace(b"\\x09", b"\\x2c")
    second = second.replace(b"\t", b",").replace(b"#separator \\x2c", b"#separator \\x2c")
    text = (
        HEADER
        + b"1300475167.25\tC1\t10.0.0.1\t1000\t10.0.0.2\t80\tudp\t0.5\t1\t60\t1\t70\tDd\n"
        + b"#close\t2011-03-18-19-06-13\n"
        + second
        + b"C2,1300475168.75,192.0.2.1,1001,192.0.2.2,53,udp,-,2,120,0,0,D\n"
        + HEADER.replace(b"#path\tconn", b"#path\tdns")
        + b"1300475169\tC3\t10.0.0.1\t1002\t10.0.0.2\t53\tudp\t-\t1\t60\t0\t0\tD\n"
    )
    batch = ZeekTsvParser().parse(text)
    assert batch.columns["@timestamp"].tolist() == [1300475167250, 1300475168750]
    assert batch.columns["source.ip"].tolist() == ["10.0.0.1", "192.0.2.1"]
    assert batch.columns["destination.bytes"].tolist() == [70, 0]
    assert len(batch.rejects) == 1
    assert batch.rejects[0].reason == "this is a Zeek 'dns' log, expected a conn log (#path conn)"


def test_zeek_tsv_state_lets_a_new_parser_continue_mid_file() -> None:
    first, second = HEADER, b"1300475167\tC1\t10.0.0.1\t1000\t10.0.0.2\t80\ttcp\t-\t1\t60\t0\t0\tS\n"
    parser = ZeekTsvParser()
    parser.parse(first)
    resumed = ZeekTsvParser()
    resumed.restore(parser.state())
    assert resumed.parse(second, first_line=9).count == 1
    fresh = ZeekTsvParser()
    assert fresh.parse(second, first_line=9).rejects[0].line == 9
    fresh.learn_header(first + second)
    assert fresh.parse(second).count == 1


# ---------------------------------------------------------------------------------------------- Argus


def test_argus_binetflow_sample() -> None:
    batch = parse_file(DATA / "argus.binetflow")
    check_dtypes(batch.columns)
    c = batch.columns
    assert c["event.dataset"].tolist() == ["argus"] * 6
    tcp = row(c, 0)
    assert tcp["@timestamp"] == ms(2011, 8, 10, 9, 46, 53, 47277)
    assert tcp["event.end"] == tcp["@timestamp"] + 3124
    assert (tcp["source.ip"], tcp["source.port"], tcp["destination.ip"], tcp["destination.port"]) == (
        "10.0.2.15",
        1027,
        "198.51.100.195",
        80,
    )
    # SrcBytes 588 of TotBytes 1066; TotPkts 12 not split by direction.
    assert (tcp["source.bytes"], tcp["destination.bytes"]) == (588, 478)
    assert (tcp["source.packets"], tcp["destination.packets"]) == (12, 0)
    assert tcp["taishi.flow.tcp_flags"] == 0x02 | 0x04 | 0x08 | 0x10  # SRPA_SPA
    echo, unreachable = row(c, 1), row(c, 2)
    assert (echo["network.iana_number"], echo["source.port"], echo["destination.port"]) == (1, 8, 0)
    assert (unreachable["source.port"], unreachable["destination.port"]) == (3, 3)
    assert row(c, 3)["network.iana_number"] == 17 and row(c, 3)["taishi.flow.tcp_flags"] == 0
    v6 = row(c, 4)
    assert (v6["source.ip"], v6["source.port"], v6["destination.ip"]) == ("2001:db8::1", 443, "2001:db8::2")
    assert (v6["source.bytes"], v6["destination.bytes"]) == (1000, 2000)
    solicit = row(c, 5)  # ipv6-icmp neighbour solicitation 135, whose counterpart is the advert 136
    assert (solicit["network.iana_number"], solicit["source.port"], solicit["destination.port"]) == (
        58,
        135,
        136,
    )
    reasons = {r.line: r.reason for r in batch.rejects}
    assert sorted(reasons) == [6, 8, 9, 10, 11]
    assert reasons[6].startswith("column Proto: expected an IP protocol name or number")
    assert reasons[8] == "expected 15 fields separated by ',', found 14"
    assert reasons[9].startswith("column TotBytes: expected at least column SrcBytes, got '100'")
    assert reasons[10].startswith("column SrcAddr: expected an IPv4 or IPv6 address, got '10.0.2.999'")
    assert reasons[11].startswith("column StartTime: expected a date-time")


def test_argus_wall_clock_times_take_the_given_zone() -> None:
    utc = parse_file(DATA / "argus.binetflow", "argus")
    prague = parse_file(DATA / "argus.binetflow", "argus", timezone="Europe/Prague")
    assert (utc.columns["@timestamp"] - prague.columns["@timestamp"]).tolist() == [2 * 3600 * 1000] * 6
    with pytest.raises(Exception, match="Nowhere/City"):
        CsvFlowParser("argus", timezone="Nowhere/City")


def test_argus_with_directional_counters_and_epoch_times() -> None:
    text = (
        b"StartTime,LastTime,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,SrcPkts,DstPkts,SrcBytes,DstBytes,State\n"
        b"1312969613.047277,1312969614.5,tcp,10.0.0.1,1234,->,10.0.0.2,22,5,4,400,800,FSPA_FSPA\n"
    )
    c = CsvFlowParser("argus").parse(text).columns
    assert (c["@timestamp"][0], c["event.end"][0]) == (1312969613047, 1312969614500)
    assert c["source.packets"].tolist() == [5] and c["destination.packets"].tolist() == [4]
    assert c["destination.bytes"].tolist() == [800]


# ---------------------------------------------------------------------------------------------- nfdump


def test_nfdump_csv_sample() -> None:
    batch = parse_file(DATA / "nfdump.csv")
    c = batch.columns
    assert batch.count == 4
    first = row(c, 0)
    assert (first["@timestamp"], first["event.end"]) == (
        ms(2019, 2, 21, 12, 0, 0, 123000),
        ms(2019, 2, 21, 12, 0, 5, 456000),
    )
    assert (first["source.bytes"], first["source.packets"]) == (3456, 12)
    assert (first["destination.bytes"], first["destination.packets"]) == (7890, 10)
    assert first["taishi.flow.tcp_flags"] == 0x1B  # ...AP.SF
    assert first["event.dataset"] == "nfdump"
    assert c["network.iana_number"].tolist() == [6, 17, 1, 1]
    # ICMP: nfdump's dp 771 = type 3 * 256 + code 3; "8.0" = echo request, whose responder "port" is reply 0.
    assert c["source.port"].tolist()[2:] == [3, 8]
    assert c["destination.port"].tolist()[2:] == [3, 0]
    reasons = {r.line: r.reason for r in batch.rejects}
    assert sorted(reasons) == [6, 7]  # the summary after the data is not a reject
    assert reasons[6].startswith("column sp: expected a port number 0-65535")
    assert reasons[7].startswith("expected 48 fields separated by ','")


# ---------------------------------------------------------------------------------------------- JSON


def test_zeek_json_lines() -> None:
    batch = parse_file(DATA / "zeek_conn.json")
    c = batch.columns
    check_dtypes(c)
    assert batch.count == 4
    assert c["@timestamp"].tolist() == [
        1300475167096,
        ms(2011, 3, 18, 19, 6, 8, 100000),
        1300475168500,
        1300475169000,
    ]
    assert c["event.end"].tolist()[:2] == [1300475167596, ms(2011, 3, 18, 19, 6, 9, 350000)]
    assert c["source.ip"].tolist()[1] == "141.142.220.118"  # nested "id" object
    assert c["network.iana_number"].tolist() == [17, 6, 58, 99]
    assert c["taishi.flow.tcp_flags"].tolist() == [0, 0x13, 0, 0]  # ShADadFf on the TCP flow
    assert (c["source.port"][2], c["destination.port"][2]) == (135, 136)
    assert (c["source.bytes"][1], c["destination.bytes"][1], c["destination.packets"][1]) == (412, 3120, 5)
    reasons = {r.line: r.reason for r in batch.rejects}
    assert reasons[5] == "field _path is 'dns', expected 'conn'"
    assert reasons[6] == "field id.orig_p (-> source.port): expected an integer 0-65535, got 'http'"
    assert reasons[7] == "field id.orig_h (-> source.ip) is missing"
    assert reasons[8].startswith("invalid JSON")
    assert sorted(reasons) == [5, 6, 7, 8]


CUSTOM_MAP = {
    "time": "@timestamp",
    "flow.src": "source.ip",
    "flow.dst": "destination.ip",
    "flow.sport": "source.port",
    "flow.dport": "destination.port",
    "flow.proto": "network.iana_number",
    "bytes_out": "source.bytes",
    "bytes_in": "destination.bytes",
    "pkts_out": "source.packets",
    "pkts_in": "destination.packets",
    "sensor": "observer.name",
    "flags": "taishi.flow.tcp_flags",
}


def test_json_lines_through_a_field_map() -> None:
    batch = JsonLinesParser(JsonFlowMap(fields=CUSTOM_MAP)).parse((DATA / "custom.jsonl").read_bytes())
    c = batch.columns
    assert batch.count == 3
    assert c["@timestamp"].tolist() == [
        ms(2024, 5, 1, 8, 0, 0, 250000),  # +02:00 offset honoured
        ms(2024, 5, 1, 8, 0, 1),  # no offset: the map's zone, UTC
        1714557602000,  # epoch seconds (auto)
    ]
    assert c["source.ip"].tolist() == ["192.0.2.1", "2001:db8::10", "192.0.2.1"]  # IPv6 canonical form
    assert c["source.port"].tolist() == [40000, 5353, 0]
    assert c["destination.bytes"].tolist() == [64000, 0, 0]
    assert c["taishi.flow.tcp_flags"].tolist() == [0x1B, 0, 0]
    assert c["observer.name"].tolist() == ["edge-1", "edge-1", ""]
    assert c["event.dataset"].tolist() == ["json"] * 3
    reasons = {r.line: r.reason for r in batch.rejects}
    assert reasons == {
        4: "field flow.sport (-> source.port): expected an integer 0-65535, got 70000",
        5: "field time (-> @timestamp): expected a time (auto), got 'yesterday'",
        6: "expected a JSON object, got list",
    }


def test_json_timestamp_formats_are_explicit_when_asked() -> None:
    line = b'{"t": %s, "s": "10.0.0.1", "d": "10.0.0.2", "p": "udp"}\n'
    fields = {"t": "@timestamp", "s": "source.ip", "d": "destination.ip", "p": "network.transport"}
    as_ms = JsonLinesParser(JsonFlowMap(fields=fields, timestamp_format="epoch_ms"))
    assert as_ms.parse(line % b"1714557602123").columns["@timestamp"].tolist() == [1714557602123]
    as_iso = JsonLinesParser(JsonFlowMap(fields=fields, timestamp_format="iso8601"))
    rejected = as_iso.parse(line % b"1714557602123").rejects[0]
    assert rejected.reason.startswith("field t (-> @timestamp): expected a time (iso8601)")


def test_field_map_is_validated() -> None:
    with pytest.raises(ValidationError, match=r"unknown target column\(s\) \['source.address'\]"):
        JsonFlowMap(fields={"a": "source.address"})
    with pytest.raises(ValidationError, match=r"must name a source field for \['destination\.ip'\]"):
        JsonFlowMap(fields={"t": "@timestamp", "s": "source.ip", "p": "network.transport"})
    with pytest.raises(ValidationError, match=r"network\.iana_number or network\.transport"):
        JsonFlowMap(fields={"t": "@timestamp", "s": "source.ip", "d": "destination.ip"})
    with pytest.raises(ValueError, match="needs a field map"):
        make_parser("json")


# ---------------------------------------------------------------------------------------------- detection


def test_formats_are_detected_from_the_first_lines(tmp_path: Path) -> None:
    assert {detect_format(p) for p in ZEEK_LOGS} == {"zeek-tsv"}
    assert detect_format(DATA / "argus.binetflow") == "argus"
    assert detect_format(DATA / "nfdump.csv") == "nfdump"
    assert detect_format(DATA / "zeek_conn.json") == "zeek-json"
    assert detect_format(DATA / "custom.jsonl") == "json"
    odd = tmp_path / "odd.log"
    odd.write_text("hello world\n")
    with pytest.raises(ValueError, match=r"odd.log: cannot tell the flow-log format .* b'hello world'"):
        detect_format(odd)
    auto = AutoParser()
    assert auto.parse((DATA / "nfdump.csv").read_bytes()).count == 4 and auto.format == "nfdump"
    assert AutoParser().parse(b"hello\n").rejects[0].reason.startswith("cannot tell the flow-log format")
    with pytest.raises(ValueError, match="data: cannot tell"):
        detect_format_bytes(b"")


def test_blocks_cut_anywhere_give_the_same_records_and_line_numbers() -> None:
    path = DATA / "argus.binetflow"
    whole = parse_file(path)
    pieces = parse_file(path, block_bytes=97)
    for name in whole.columns:
        assert whole.columns[name].tolist() == pieces.columns[name].tolist(), name
    assert [(r.line, r.reason) for r in whole.rejects] == [(r.line, r.reason) for r in pieces.rejects]


def test_records_of_every_format_pass_the_pipelines_contract_validation() -> None:
    pd = pytest.importorskip("pandas")
    from taishi.pipeline.validate import validate_flows

    batches = [parse_file(DATA / name) for name in ("argus.binetflow", "nfdump.csv", "zeek_conn.json")]
    batches += [ZeekTsvParser().parse(unmask(path.read_bytes())) for path in ZEEK_LOGS]
    for batch in batches:
        columns = dict(batch.columns, **{"organization.id": np.full(batch.count, "bank-a", dtype=object)})
        validated = validate_flows(pd.DataFrame(columns))
        assert validated.rejected.to_dict() == {} and len(validated.frame) == batch.count
