"""NetFlow v5 / v9 / IPFIX decoder: real exporter packets and synthetic edge cases.

Expected values on the real captures were checked against Wireshark's decoder (tshark 4.0, payloads wrapped as
UDP to port 2055) and are re-derived here from the raw bytes with ``struct``, not with the decoder under test.
Synthetic packets are built field by field below, so each test states the bytes it feeds.
"""

from __future__ import annotations

import ast
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taishi.collectors.netflow import COLUMN_DTYPES, DecodeResult, NetflowDecoder
from taishi.collectors.netflow_columns import AddressText
from taishi.pipeline.contract import FLOW_DTYPES

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "netflow"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real NetFlow captures not found at {DATA}")
EXPORTER = "192.0.2.1"
NOW = 1_700_000_000.0


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def column(result: DecodeResult, name: str) -> list:
    return result.columns[name].tolist()


def row(result: DecodeResult, i: int) -> dict:
    return {
        name: values[i].item() if hasattr(values[i], "item") else values[i]
        for name, values in result.columns.items()
    }


# ------------------------------------------------------------------------------------------ packet builders


def v9(source_id: int, *sets: bytes, uptime: int = 100_000, secs: int = 1_700_000_000) -> bytes:
    return struct.pack(">HHIIII", 9, len(sets), uptime, secs, 7, source_id) + b"".join(sets)


def v9_template(template_id: int, *fields: tuple[int, int]) -> bytes:
    body = struct.pack(">HH", template_id, len(fields)) + b"".join(struct.pack(">HH", *f) for f in fields)
    return struct.pack(">HH", 0, 4 + len(body)) + body


def v9_options_template(
    template_id: int, scope: list[tuple[int, int]], options: list[tuple[int, int]]
) -> bytes:
    body = struct.pack(">HHH", template_id, 4 * len(scope), 4 * len(options))
    body += b"".join(struct.pack(">HH", *f) for f in scope + options)
    body += b"\0" * (-(4 + len(body)) % 4)
    return struct.pack(">HH", 1, 4 + len(body)) + body


def data_set(set_id: int, *records: bytes) -> bytes:
    body = b"".join(records)
    body += b"\0" * (-(4 + len(body)) % 4)  # padding to a 4-byte boundary
    return struct.pack(">HH", set_id, 4 + len(body)) + body


def ipfix(domain: int, *sets: bytes, export: int = 1_700_000_000) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body), export, 1, domain) + body


def ipfix_field(element: int, length: int, enterprise: int = 0) -> bytes:
    if enterprise:
        return struct.pack(">HHI", element | 0x8000, length, enterprise)
    return struct.pack(">HH", element, length)


def ipfix_template(template_id: int, *fields: bytes) -> bytes:
    body = struct.pack(">HH", template_id, len(fields)) + b"".join(fields)
    return struct.pack(">HH", 2, 4 + len(body)) + body


def ipfix_options_template(template_id: int, scope: list[bytes], options: list[bytes]) -> bytes:
    body = struct.pack(">HHH", template_id, len(scope) + len(options), len(scope)) + b"".join(scope + options)
    return struct.pack(">HH", 3, 4 + len(body)) + body


def ip(text: str) -> bytes:
    return socket.inet_aton(text)


# A small v9 flow template: src, dst, ports, protocol, bytes, packets, first/last switched.
FLOW_FIELDS = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (22, 4), (21, 4))


def flow(
    src: str, dst: str, sport: int, dport: int, octets: int, first: int = 90_000, last: int = 95_000
) -> bytes:
    return ip(src) + ip(dst) + struct.pack(">HHBIIII", sport, dport, 6, octets, 3, first, last)


# ------------------------------------------------------------------------------------------ real captures


def scenarios() -> list[tuple[str, list[str]]]:
    """The README's table: scenario name and its files in feeding order."""
    if not DATA.is_dir():
        return []
    out = []
    for line in (DATA / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and ".dat" in cells[1]:
            out.append((cells[0], [f.strip() for f in cells[1].split(",")]))
    return out


# Flow records per scenario, counted by tshark on the same payloads (options-only data gives none).
EXPECTED_RECORDS = {
    "NetFlow v5 (": 30,  # 12 v5 packets back to back; the first holds the 2 records named
    "NetFlow v9 basic": 7,
    "NetFlow v9 MAC address fields": 29,
    "NetFlow v9 Cisco ACI": 3,
    "NetFlow v9 Cisco ASA (NSEL) 1": 14,
    "NetFlow v9 Cisco ASA 2": 19,
    "two exporters interleaved": 8,
    "NetFlow v9 malformed": 2,
    "IPFIX basic": 12,
    "IPFIX OpenBSD pflow": 26,
    "NetFlow v9 Palo Alto, one flowset": 1,
    "NetFlow v9 Palo Alto PAN-OS": 8,
    "IPFIX Ixia": 3,
    "IPFIX YAF": 2,
    "NetFlow v9 Cisco ASR 9000 options template": 0,
    "NetFlow v9 Cisco ASR 9000 template 260": 21,
    "NetFlow v9 template with zero-length fields": 10,
    "Juniper SRX": 0,
    "NetFlow v9 layer2segmentid": 1,
    "nprobe DPI": 1,
    "templates only": 54,  # not only templates: the 1941K9 and ASR1001-X files carry 29 and 25 data records
}


@needs_data
@pytest.mark.parametrize(("scenario", "files"), scenarios(), ids=[s for s, _ in scenarios()])
def test_every_capture_decodes_with_plausible_values(scenario: str, files: list[str]) -> None:
    decoder = NetflowDecoder()
    results = [decoder.feed(read(name), EXPORTER, NOW) for name in files]
    errors = [e for r in results for e in r.errors]
    if "malformed" in scenario and "v5" in scenario:
        assert len(errors) == len(files) and sum(r.count for r in results) == 0
        return
    assert errors == []
    assert decoder.pending() == 0
    expected = next(n for prefix, n in EXPECTED_RECORDS.items() if scenario.startswith(prefix))
    assert sum(r.count for r in results) == expected
    for result in results:
        assert set(result.columns) == set(COLUMN_DTYPES)
        for name, values in result.columns.items():
            assert values.dtype == COLUMN_DTYPES[name] and len(values) == result.count
        if not result.count:
            continue
        cols = result.columns
        for name in ("source.ip", "destination.ip"):
            assert all(isinstance(a, str) and ("." in a or ":" in a) for a in cols[name])
        assert ((cols["source.port"] >= 0) & (cols["source.port"] <= 65535)).all()
        assert ((cols["network.iana_number"] >= 0) & (cols["network.iana_number"] <= 255)).all()
        assert (cols["source.bytes"] >= 0).all() and (cols["source.packets"] >= 0).all()
        assert (cols["event.end"] >= cols["@timestamp"]).all()
        if scenario.startswith("nprobe DPI"):
            continue  # that capture's exporter clock reads 502 s after 1970; the decoder keeps what it says
        assert ((cols["@timestamp"] > 1_400_000_000_000) & (cols["@timestamp"] < 1_600_000_000_000)).all()
        assert set(cols["observer.ip"]) == {EXPORTER}


def test_columns_follow_the_record_contract() -> None:
    for name, dtype in COLUMN_DTYPES.items():
        if name == "observer.ip":
            # ECS observer.ip (the exporter); FLOW_COLUMNS does not list it yet, so it is checked here alone.
            assert "observer.ip" in FLOW_DTYPES or dtype.kind == "O"
            continue
        assert name in FLOW_DTYPES, name
        declared = FLOW_DTYPES[name]
        if declared.startswith("datetime64[ms"):
            assert dtype == np.int64  # epoch milliseconds; the shipper or validation makes them datetimes
        elif declared == "str":
            assert dtype.kind == "O"
        else:
            assert dtype == np.dtype(declared)


@needs_data
def test_v5_records_match_the_header_bytes() -> None:
    blob = read("netflow5.dat")
    _, count, uptime, secs, nsecs = struct.unpack_from(">HHIII", blob)
    assert count == 2
    export_ms = secs * 1000 + nsecs // 1_000_000
    result = NetflowDecoder().feed(blob, EXPORTER, NOW)
    for i in range(count):
        r = struct.unpack_from(">4s4s4sHHIIIIHHBBBB", blob, 24 + 48 * i)
        first, last = (struct.unpack(">i", struct.pack(">I", (uptime - t) & 0xFFFFFFFF))[0] for t in r[7:9])
        assert row(result, i) == {
            "@timestamp": export_ms - first,
            "event.end": export_ms - last,
            "source.ip": socket.inet_ntoa(r[0]),
            "source.port": r[9],
            "destination.ip": socket.inet_ntoa(r[1]),
            "destination.port": r[10],
            "network.iana_number": r[13],
            "source.bytes": r[6],
            "source.packets": r[5],
            "destination.bytes": 0,
            "destination.packets": 0,
            "taishi.flow.tcp_flags": r[12],
            "observer.ip": EXPORTER,
        }
    # The README's record, and Wireshark's figures for it (230 bytes, 5 packets, FIRST 0xffffffff before
    # an uptime of 3381 ms: the flow began 3382 ms before the export, across the counter wrap).
    assert row(result, 0)["source.ip"] == "10.0.2.2" and row(result, 0)["source.port"] == 54435
    assert row(result, 0)["destination.ip"] == "10.0.2.15" and row(result, 0)["destination.port"] == 22
    assert (row(result, 0)["source.bytes"], row(result, 0)["source.packets"]) == (230, 5)
    assert row(result, 0)["@timestamp"] == export_ms - 3382


@needs_data
def test_malformed_v5_packets_are_rejected_and_nothing_else_is_lost() -> None:
    good = read("netflow5.dat")
    batch = [(good, EXPORTER, NOW), (read("netflow5_test_invalid01.dat"), "192.0.2.7", NOW)]
    batch += [(read("netflow5_test_invalid02.dat"), "192.0.2.8", NOW), (good, EXPORTER, NOW)]
    result = NetflowDecoder().feed_many(batch)
    assert result.count == 60
    assert len(result.errors) == 2
    assert "192.0.2.7" in result.errors[0] and "header count 55582 exceeds the 30" in result.errors[0]
    assert "192.0.2.8" in result.errors[1] and "header count 163" in result.errors[1]


@needs_data
def test_v9_records_match_wireshark() -> None:
    blob = read("netflow9_test_valid01.dat")
    _, _, uptime, secs = struct.unpack_from(">HHII", blob)
    result = NetflowDecoder().feed(blob, EXPORTER, NOW)
    first = row(result, 0)
    # Template 1024: src, dst, LAST_SWITCHED, FIRST_SWITCHED, bytes, packets, ... (flowset at offset 148).
    src, dst, last, start, octets, packets = struct.unpack_from(">4s4sIIII", blob, 152)
    assert (first["source.ip"], first["destination.ip"]) == ("172.16.32.100", "172.16.32.248")
    assert (socket.inet_ntoa(src), socket.inet_ntoa(dst)) == ("172.16.32.100", "172.16.32.248")
    assert (first["source.port"], first["destination.port"], first["network.iana_number"]) == (123, 123, 17)
    assert (first["source.bytes"], first["source.packets"]) == (octets, packets) == (76, 1)
    assert first["@timestamp"] == secs * 1000 - (uptime - start) == 1_444_331_026_140
    assert first["event.end"] == secs * 1000 - (uptime - last)
    ipv6 = row(result, 6)
    assert (ipv6["source.ip"], ipv6["destination.ip"]) == ("fe80::20c:29ff:fe83:3b6e", "ff02::1")
    assert (ipv6["network.iana_number"], ipv6["source.bytes"], ipv6["source.packets"]) == (58, 672, 7)


@needs_data
def test_ipfix_uptime_times_use_system_init_time_from_options_data() -> None:
    blob = read("ipfix.dat")
    # Options template 256 (meteringProcessId; systemInitTimeMilliseconds, selector algorithm, sampling
    # interval/space); its data record starts at offset 194.
    _, init_ms, _, interval, space = struct.unpack_from(">IQHHI", blob, 194)
    assert (interval, space) == (1, 0)  # 1 in 1: no scaling
    start, end = struct.unpack_from(">II", blob, 218 + 36)  # flowStartSysUpTime, flowEndSysUpTime
    result = NetflowDecoder().feed(blob, EXPORTER, NOW)
    first = row(result, 0)
    assert (first["source.ip"], first["source.port"]) == ("192.168.253.1", 60560)
    assert (first["destination.ip"], first["destination.port"]) == ("192.168.253.128", 22)
    assert (first["source.bytes"], first["source.packets"], first["taishi.flow.tcp_flags"]) == (260, 5, 0x10)
    assert (first["@timestamp"], first["event.end"]) == (init_ms + start, init_ms + end)
    assert first["event.end"] == 1_431_516_026_232


@needs_data
def test_ipfix_absolute_millisecond_times() -> None:
    decoder = NetflowDecoder()
    decoder.feed(read("ipfix_test_openbsd_pflow_tpl.dat"), EXPORTER, NOW)
    blob = read("ipfix_test_openbsd_pflow_data.dat")
    src, dst, _, _, packets, octets, start, end, sport, dport = struct.unpack_from(">4s4sIIQQQQHH", blob, 20)
    first = row(decoder.feed(blob, EXPORTER, NOW), 0)
    assert (first["source.ip"], first["destination.ip"]) == (socket.inet_ntoa(src), socket.inet_ntoa(dst))
    assert (first["source.port"], first["destination.port"]) == (sport, dport) == (64020, 80)
    assert (first["source.bytes"], first["source.packets"]) == (octets, packets) == (373, 7)
    assert (first["@timestamp"], first["event.end"]) == (start, end)


@needs_data
def test_yaf_biflow_reverse_counters_fill_the_destination_side() -> None:
    decoder = NetflowDecoder()
    for name in ("ipfix_test_yaf_tpls_option_tpl.dat", "ipfix_test_yaf_tpl45841.dat"):
        decoder.feed(read(name), EXPORTER, NOW)
    blob = read("ipfix_test_yaf_data45841.dat")
    # Template 45841: flowStart/EndMilliseconds, octetTotalCount, reverse (PEN 29305) octetTotalCount,
    # packetTotalCount, reverse packetTotalCount, ...
    start, end, octets, rev_octets, packets, rev_packets = struct.unpack_from(">QQIIII", blob, 20)
    first = row(decoder.feed(blob, EXPORTER, NOW), 0)
    assert (first["source.bytes"], first["destination.bytes"]) == (octets, rev_octets) == (132, 200)
    assert (first["source.packets"], first["destination.packets"]) == (packets, rev_packets) == (2, 2)
    assert (first["@timestamp"], first["event.end"]) == (start, end)


@needs_data
def test_v9_capture_named_invalid_decodes_because_nothing_in_it_breaks_rfc_3954() -> None:
    """netflow9_test_invalid01.dat is called invalid by the parser it came from, which assumed flowsets padded
    to 4 bytes (RFC 3954 says SHOULD; Palo Alto's valid captures break it too) and its header count (2) counts
    flow records only. Its options record says 1-in-100 sampling (interface scope), which is applied."""
    blob = read("netflow9_test_invalid01.dat")
    # Options data at offset 162: scope interface 0, SAMPLING_INTERVAL 100, SAMPLING_ALGORITHM 1.
    assert struct.unpack_from(">HHIIB", blob, 162) == (256, 16, 0, 100, 1)
    result = NetflowDecoder().feed(blob, EXPORTER, NOW)
    assert result.errors == []
    assert column(result, "source.ip") == ["2001:44b8:1118:7200::10", "192.168.0.1"]
    assert column(result, "source.bytes") == [96 * 100, 98 * 100]
    assert column(result, "source.packets") == [100, 100]


@needs_data
def test_template_only_captures_are_learned() -> None:
    decoder = NetflowDecoder()
    decoder.feed(read("netflow9_test_cisco_wlc_8510_tpl_262.dat"), EXPORTER, NOW)
    assert sorted(decoder.templates(EXPORTER, 9, 1)) == [256, 258, 259, 262]


# ------------------------------------------------------------------------------------------ synthetic cases


def test_data_before_its_template_is_held_then_decoded() -> None:
    decoder = NetflowDecoder()
    early = decoder.feed(v9(1, data_set(300, flow("10.0.0.1", "10.0.0.2", 1000, 53, 120))), EXPORTER, NOW)
    assert early.count == 0 and early.dropped == 0 and decoder.pending() == 1
    late = decoder.feed(v9(1, v9_template(300, *FLOW_FIELDS), uptime=200_000), EXPORTER, NOW + 1)
    assert late.count == 1 and decoder.pending() == 0
    assert row(late, 0)["source.ip"] == "10.0.0.1" and row(late, 0)["source.bytes"] == 120
    # Times come from the header of the packet that carried the data, not the template's.
    assert row(late, 0)["@timestamp"] == 1_700_000_000_000 - (100_000 - 90_000)


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", [2, 3]), ("drop_newest", [1, 2])])
def test_held_data_is_bounded(policy: str, kept: list[int]) -> None:
    decoder = NetflowDecoder(max_pending_per_exporter=2, pending_policy=policy)  # type: ignore[arg-type]
    dropped = 0
    for n in (1, 2, 3):
        packet = v9(1, data_set(300, flow("10.0.0.1", "10.0.0.2", n, 53, 100)))
        dropped += decoder.feed(packet, EXPORTER, NOW).dropped
    assert dropped == 1 and decoder.pending() == 2
    result = decoder.feed(v9(1, v9_template(300, *FLOW_FIELDS)), EXPORTER, NOW)
    assert column(result, "source.port") == kept
    assert decoder.dropped_total == 1


def test_held_data_and_templates_expire() -> None:
    decoder = NetflowDecoder(template_timeout_s=60)
    decoder.feed(v9(1, data_set(300, flow("10.0.0.1", "10.0.0.2", 1, 53, 100))), EXPORTER, NOW)
    late = decoder.feed(v9(1, v9_template(300, *FLOW_FIELDS)), EXPORTER, NOW + 61)
    assert late.count == 0 and late.dropped == 1
    # The template learned at NOW + 61 is forgotten 60 s later; data then waits for a refresh.
    stale = decoder.feed(v9(1, data_set(300, flow("10.0.0.1", "10.0.0.2", 2, 53, 100))), EXPORTER, NOW + 122)
    assert stale.count == 0 and decoder.pending() == 1


def test_exporter_keys_keep_templates_apart() -> None:
    decoder = NetflowDecoder()
    decoder.feed(v9(1, v9_template(300, *FLOW_FIELDS)), EXPORTER, NOW)
    for other in (v9(2, data_set(300, flow("10.0.0.1", "10.0.0.2", 1, 53, 1))),):  # other source id
        assert decoder.feed(other, EXPORTER, NOW).count == 0
    packet = v9(1, data_set(300, flow("10.0.0.1", "10.0.0.2", 1, 53, 1)))
    assert decoder.feed(packet, "192.0.2.99", NOW).count == 0  # other exporter address
    assert decoder.feed(packet, EXPORTER, NOW).count == 1


def test_template_redefinition_applies_to_later_data_only() -> None:
    old = v9(
        1,
        v9_template(300, (8, 4), (12, 4), (1, 4)),
        data_set(300, ip("10.0.0.1") + ip("10.0.0.2") + b"\0\0\0\x05"),
    )
    new_layout = ((1, 8), (12, 4), (8, 4), (7, 2))
    new = v9(
        1,
        v9_template(300, *new_layout),
        data_set(
            300, struct.pack(">Q", 7_000_000_000) + ip("10.9.9.9") + ip("10.8.8.8") + struct.pack(">H", 443)
        ),
    )
    again = v9(
        1, data_set(300, struct.pack(">Q", 9) + ip("10.9.9.9") + ip("10.8.8.8") + struct.pack(">H", 80))
    )
    one_by_one = NetflowDecoder()
    results = [one_by_one.feed(p, EXPORTER, NOW) for p in (old, new, again)]
    batched = NetflowDecoder().feed_many([(p, EXPORTER, NOW) for p in (old, new, again)])
    for source in ([a for r in results for a in column(r, "source.ip")], column(batched, "source.ip")):
        assert source == ["10.0.0.1", "10.8.8.8", "10.8.8.8"]
    assert column(batched, "source.bytes") == [5, 7_000_000_000, 9]
    assert column(batched, "source.port") == [0, 443, 80]


def test_v9_options_sampling_interval_scales_counters() -> None:
    decoder = NetflowDecoder()
    options = v9_options_template(400, [(1, 4)], [(34, 4), (35, 1)])  # scope: system; interval, algorithm
    packet = v9(
        1,
        options,
        data_set(400, struct.pack(">IIB", 0, 10, 2)),
        v9_template(300, *FLOW_FIELDS),
        data_set(300, flow("10.0.0.1", "10.0.0.2", 1, 53, 120)),
    )
    first = row(decoder.feed(packet, EXPORTER, NOW), 0)
    assert (first["source.bytes"], first["source.packets"]) == (1200, 30)


def test_v9_sampler_id_selects_the_rate_per_record() -> None:
    decoder = NetflowDecoder()
    sampler = v9_options_template(400, [(1, 4)], [(48, 1), (49, 1), (50, 4)])  # FLOW_SAMPLER_ID/MODE/INTERVAL
    rates = data_set(400, struct.pack(">IBBI", 0, 1, 2, 100), struct.pack(">IBBI", 0, 2, 2, 1000))
    template = v9_template(300, *FLOW_FIELDS, (48, 1))
    records = [flow("10.0.0.1", "10.0.0.2", 1, 53, 5) + bytes([sid]) for sid in (1, 2, 9)]
    result = decoder.feed(v9(1, sampler, rates, template, data_set(300, *records)), EXPORTER, NOW)
    assert column(result, "source.bytes") == [500, 5000, 5]  # sampler 9 was never described


def test_ipfix_packet_sampling_and_per_record_interval() -> None:
    decoder = NetflowDecoder()
    options = ipfix_options_template(400, [ipfix_field(149, 4)], [ipfix_field(305, 2), ipfix_field(306, 4)])
    template = ipfix_template(
        300, ipfix_field(8, 4), ipfix_field(12, 4), ipfix_field(1, 8), ipfix_field(2, 8)
    )
    record = ip("10.0.0.1") + ip("10.0.0.2") + struct.pack(">QQ", 64, 1)
    message = ipfix(5, options, data_set(400, struct.pack(">IHI", 5, 1, 99)), template, data_set(300, record))
    assert column(decoder.feed(message, EXPORTER, NOW), "source.bytes") == [6400]
    # A samplingInterval field in the flow record itself wins over the options data.
    per_record = ipfix_template(
        301, ipfix_field(8, 4), ipfix_field(12, 4), ipfix_field(1, 8), ipfix_field(34, 4)
    )
    message = ipfix(5, per_record, data_set(301, ip("10.0.0.1") + ip("10.0.0.2") + struct.pack(">QI", 64, 4)))
    assert column(decoder.feed(message, EXPORTER, NOW), "source.bytes") == [256]


def test_v5_header_sampling_interval_scales_counters() -> None:
    header = struct.pack(">HHIIIIBBH", 5, 1, 10_000, 1_700_000_000, 0, 1, 0, 0, (1 << 14) | 64)
    record = ip("10.0.0.1") + ip("10.0.0.2") + bytes(8) + struct.pack(">IIII", 3, 300, 9_000, 9_500)
    record += struct.pack(">HHBBBBHHBBH", 1234, 80, 0, 0x12, 6, 0, 0, 0, 0, 0, 0)
    first = row(NetflowDecoder().feed(header + record, EXPORTER, NOW), 0)
    assert (first["source.bytes"], first["source.packets"]) == (300 * 64, 3 * 64)
    assert (first["@timestamp"], first["event.end"]) == (1_700_000_000_000 - 1_000, 1_700_000_000_000 - 500)


def test_enterprise_and_variable_length_fields_are_skipped() -> None:
    template = ipfix_template(
        300,
        ipfix_field(8, 4),
        ipfix_field(1, 4, enterprise=9999),  # an enterprise field numbered like octetDeltaCount: not it
        ipfix_field(82, 0xFFFF),  # interfaceName, variable length
        ipfix_field(12, 4),
        ipfix_field(7, 4, enterprise=2011),  # Huawei-style vendor element, fixed length
        ipfix_field(7, 2),
        ipfix_field(5000, 0xFFFF, enterprise=2011),  # unknown enterprise element, variable length
        ipfix_field(1, 4),
    )
    short = ip("10.0.0.1") + b"\xff\xff\xff\xff" + b"\x03eth" + ip("10.0.0.2") + b"XXXX" + b"\x00\x35"
    short += b"\x00" + struct.pack(">I", 77)
    long_name = b"x" * 300
    long = (
        ip("10.0.0.3") + b"\xff\xff\xff\xff" + b"\xff" + struct.pack(">H", 300) + long_name + ip("10.0.0.4")
    )
    long += b"YYYY" + b"\x01\xbb" + b"\x02ab" + struct.pack(">I", 88)
    result = NetflowDecoder().feed(ipfix(1, template, data_set(300, short, long)), EXPORTER, NOW)
    assert result.errors == []
    assert column(result, "source.ip") == ["10.0.0.1", "10.0.0.3"]
    assert column(result, "destination.ip") == ["10.0.0.2", "10.0.0.4"]
    assert column(result, "source.port") == [53, 443]
    assert column(result, "source.bytes") == [77, 88]


def test_variable_length_record_running_past_its_set_is_rejected_alone() -> None:
    template = ipfix_template(300, ipfix_field(8, 4), ipfix_field(12, 4), ipfix_field(82, 0xFFFF))
    good = ip("10.0.0.1") + ip("10.0.0.2") + b"\x02ab"
    bad = ip("10.0.0.3") + ip("10.0.0.4") + b"\x40abc"  # says 64 bytes follow; 3 do
    body = good + bad
    broken = struct.pack(">HH", 300, 4 + len(body)) + body
    result = NetflowDecoder().feed(ipfix(1, template, broken), EXPORTER, NOW)
    assert column(result, "source.ip") == ["10.0.0.1"]
    assert len(result.errors) == 1
    assert "record 2 at offset" in result.errors[0] and "template 300 runs past the end" in result.errors[0]


def test_reduced_size_and_odd_length_counters() -> None:
    template = v9_template(300, (8, 4), (12, 4), (1, 3), (2, 6), (7, 1))
    record = (
        ip("10.0.0.1")
        + ip("10.0.0.2")
        + (70_000).to_bytes(3, "big")
        + (2**40 + 1).to_bytes(6, "big")
        + b"\x16"
    )
    result = NetflowDecoder().feed(v9(1, template, data_set(300, record)), EXPORTER, NOW)
    assert row(result, 0)["source.bytes"] == 70_000
    assert row(result, 0)["source.packets"] == 2**40 + 1
    assert row(result, 0)["source.port"] == 22


def test_address_fields_of_unexpected_length_are_reported_and_ignored() -> None:
    template = v9_template(300, (8, 4), (12, 4), (27, 4))  # an "IPv6" source of 4 bytes
    result = NetflowDecoder().feed(
        v9(1, template, data_set(300, ip("10.0.0.1") + ip("10.0.0.2") + bytes(4))), EXPORTER, NOW
    )
    assert column(result, "source.ip") == ["10.0.0.1"]
    assert (
        len(result.errors) == 1
        and "sourceIPv6Address (27) has length 4, expected one of (16,)" in result.errors[0]
    )


@pytest.mark.parametrize(
    ("elements", "values", "start", "end"),
    [
        ((150, 151), struct.pack(">II", 1_700_000_000, 1_700_000_010), 1_700_000_000_000, 1_700_000_010_000),
        # NTP: 2^32 * seconds-since-1900 + fraction; 0x80000000 is half a second.
        ((154, 155), struct.pack(">II", 3_908_988_800, 0x80000000) * 2, 1_700_000_000_500, 1_700_000_000_500),
        ((158, 159), struct.pack(">II", 5_000_000, 1_000), 1_699_999_995_000, 1_699_999_999_999),
    ],
)
def test_ipfix_time_encodings(elements: tuple[int, int], values: bytes, start: int, end: int) -> None:
    size = len(values) // 2
    template = ipfix_template(
        300, ipfix_field(8, 4), ipfix_field(12, 4), *(ipfix_field(e, size) for e in elements)
    )
    message = ipfix(1, template, data_set(300, ip("10.0.0.1") + ip("10.0.0.2") + values))
    first = row(NetflowDecoder().feed(message, EXPORTER, NOW), 0)
    assert (first["@timestamp"], first["event.end"]) == (start, end)


def test_v9_switched_times_survive_the_uptime_wrap() -> None:
    # The exporter's uptime wrapped (2^32 ms) between the flow's first packet and the export.
    template = v9_template(300, *FLOW_FIELDS)
    record = flow("10.0.0.1", "10.0.0.2", 1, 2, 3, first=2**32 - 1_000, last=500)
    first = row(NetflowDecoder().feed(v9(1, template, data_set(300, record), uptime=2_000), EXPORTER, NOW), 0)
    assert first["@timestamp"] == 1_700_000_000_000 - 3_000
    assert first["event.end"] == 1_700_000_000_000 - 1_500


def test_ipv6_text_is_compressed() -> None:
    template = v9_template(300, (27, 16), (28, 16), (4, 1))
    src = socket.inet_pton(socket.AF_INET6, "2001:db8:0:0:1:0:0:1")
    dst = socket.inet_pton(socket.AF_INET6, "2001:DB8::0:0:0:ABCD")
    result = NetflowDecoder().feed(v9(1, template, data_set(300, src + dst + b"\x3a")), EXPORTER, NOW)
    assert row(result, 0)["source.ip"] == "2001:db8::1:0:0:1"
    assert row(result, 0)["destination.ip"] == "2001:db8::abcd"


def test_truncated_and_broken_packets_are_rejected_with_reasons() -> None:
    decoder = NetflowDecoder()
    template = v9_template(300, *FLOW_FIELDS)
    good = data_set(300, flow("10.0.0.1", "10.0.0.2", 1, 53, 100))
    v9_cut = v9(1, template, good, good)[:-10]  # the last flowset lost its tail
    v5_cut = struct.pack(">HHIIIIBBH", 5, 2, 0, 0, 0, 0, 0, 0, 0) + bytes(48)
    ipfix_cut = ipfix(1, ipfix_template(301, ipfix_field(8, 4), ipfix_field(12, 4)))[:-4]
    zero_length_set = v9(1, good) + struct.pack(">HH", 300, 2)
    batch = [
        (p, EXPORTER, NOW) for p in (v9_cut, v5_cut, ipfix_cut, zero_length_set, b"\x00\x07" + bytes(30))
    ]
    result = decoder.feed_many(batch)
    assert result.count == 2  # the first flowset of the cut v9 packet, and the good set before the broken one
    expected = [
        "NetFlow v9 packet at offset 0 (source id 1): set 300 at offset 100 declares 36 bytes but only 26 remain",
        "NetFlow v5 packet at offset 0: header count 2 needs 120 bytes but only 72 arrived (truncated)",
        "IPFIX message at offset 0: header length 32 but only 28 bytes arrived (truncated)",
        "set 300 at offset 56 has length 2, expected at least 4",
        "packet at offset 0 has version 7; expected 5, 9 or 10",
    ]
    assert len(result.errors) == len(expected)
    for message, fragment in zip(result.errors, expected, strict=True):
        assert message.startswith(f"exporter {EXPORTER}: ") and fragment in message


def test_zero_fill_after_the_last_flowset_is_padding() -> None:
    packet = v9(1, v9_template(300, *FLOW_FIELDS), data_set(300, flow("10.0.0.1", "10.0.0.2", 1, 53, 100)))
    result = NetflowDecoder().feed(packet + bytes(1000), EXPORTER, NOW)
    assert result.count == 1 and result.errors == []


def test_ipfix_template_withdrawal() -> None:
    decoder = NetflowDecoder()
    template = ipfix_template(300, ipfix_field(8, 4), ipfix_field(12, 4))
    decoder.feed(ipfix(1, template), EXPORTER, NOW)
    assert list(decoder.templates(EXPORTER, 10, 1)) == [300]
    decoder.feed(ipfix(1, struct.pack(">HHHH", 2, 8, 300, 0)), EXPORTER, NOW)
    assert decoder.templates(EXPORTER, 10, 1) == {}


def test_templates_without_addresses_give_no_flow_records() -> None:
    template = v9_template(300, (56, 6), (80, 6), (1, 4))  # MAC addresses and bytes only
    result = NetflowDecoder().feed(v9(1, template, data_set(300, bytes(16))), EXPORTER, NOW)
    assert result.count == 0 and result.errors == []


def test_feed_many_matches_feed_one_by_one_across_versions() -> None:
    v5 = struct.pack(">HHIIIIBBH", 5, 1, 10_000, 1_700_000_000, 0, 1, 0, 0, 0)
    v5 += ip("172.16.0.1") + ip("172.16.0.2") + bytes(8) + struct.pack(">IIII", 1, 60, 9_000, 9_500)
    v5 += struct.pack(">HHBBBBHHBBH", 5, 6, 0, 2, 6, 0, 0, 0, 0, 0, 0)
    packets = [
        v9(1, v9_template(300, *FLOW_FIELDS), data_set(300, flow("10.0.0.1", "10.0.0.2", 1, 53, 100))),
        v5,
        ipfix(
            3,
            ipfix_template(301, ipfix_field(8, 4), ipfix_field(12, 4)),
            data_set(301, ip("10.1.0.1") + ip("10.1.0.2")),
        ),
        v9(
            1,
            data_set(300, flow("10.0.0.3", "10.0.0.4", 2, 53, 200), flow("10.0.0.5", "10.0.0.6", 3, 53, 300)),
        ),
        v5,
    ]
    single = NetflowDecoder()
    one_by_one = [single.feed(p, EXPORTER, NOW) for p in packets]
    batched = NetflowDecoder().feed_many([(p, EXPORTER, NOW) for p in packets])
    for name in COLUMN_DTYPES:
        assert column(batched, name) == [v for r in one_by_one for v in column(r, name)], name
    assert column(batched, "source.ip")[:3] == ["10.0.0.1", "172.16.0.1", "10.1.0.1"]


def test_exporter_keys_are_bounded() -> None:
    decoder = NetflowDecoder(template_timeout_s=60, max_exporter_keys=1)
    packet = v9(1, v9_template(300, *FLOW_FIELDS), data_set(300, flow("10.0.0.1", "10.0.0.2", 1, 53, 100)))
    assert decoder.feed(packet, "192.0.2.1", NOW).count == 1
    refused = decoder.feed(packet, "192.0.2.2", NOW + 1)
    assert refused.count == 0 and "already tracking 1 exporter keys" in refused.errors[0]
    # Once the first exporter has been idle past the template timeout, its key makes room.
    assert decoder.feed(packet, "192.0.2.2", NOW + 120).count == 1
    assert decoder.templates("192.0.2.1", 9, 1) == {}


def test_address_text_cache_stays_right_under_collisions_and_repeats() -> None:
    text = AddressText(cache_bits=4)  # 16 slots: nearly every batch collides
    rng = np.random.default_rng(3)
    for _ in range(200):
        batch = rng.integers(0, 2**32, int(rng.integers(1, 200)), dtype=np.uint32)
        if rng.random() < 0.5:
            batch = batch[rng.integers(0, len(batch), len(batch))]  # heavy repeats
        expected = [socket.inet_ntoa(int(a).to_bytes(4, "big")) for a in batch]
        assert text.ipv4(batch).tolist() == expected


def test_decoder_imports_only_the_standard_library_and_numpy() -> None:
    code = (
        "import sys, taishi.collectors.netflow;"
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    third_party = {
        m for m in ast.literal_eval(out) if not m.startswith("_")
    }  # _-names: interpreter internals
    assert third_party <= {"numpy", "taishi"}
