"""DNS, TLS server name and HTTP request metadata from packets, against Zeek's dns.log, ssl.log and http.log.

Zeek logs per transaction (a DNS query and its response, an HTTP request and its reply); we report per
message. So each Zeek row is matched to our messages of the same connection (and DNS transaction id),
and the fields Zeek filled in must agree: query, qtype_name, rcode_name and answers; server_name; method,
host and uri. Rows where Zeek saw no message (a '-' method, a reply without a query) have nothing to match.
"""

from __future__ import annotations

import collections
import re
import struct
from pathlib import Path

import pytest

from taishi.collectors.pcap_app import (
    APP_COLUMNS,
    AppRecord,
    client_hello_sni,
    parse_dns,
    parse_http_requests,
    qtype_name,
    rcode_name,
    read_app_records,
)
from taishi.collectors.pcap_flows import FlowParams, read_flows
from tests.unit.collectors.test_pcap_frames import ACK, PSH, SYN, eth, ipv4, pcap, tcp, udp

ZEEK = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "pcaps" / "zeek"


def _baselines(log: str) -> list[tuple[str, str]]:
    readme = ZEEK / "README.md"
    if not readme.exists():
        return []
    pattern = rf"^\|\s*(traces/\S+)\s*\|\s*(baselines/\S+/{log})\s*\|"
    rows = re.findall(pattern, readme.read_text(), re.M)
    return [(t, b) for t, b in rows if (ZEEK / t).exists() and (ZEEK / b).exists()]


def _zeek_log(path: Path) -> list[dict[str, str]]:
    fields: list[str] = []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"), strict=False)))
    return rows


def _conn(r: dict[str, str]) -> tuple[str, int, str, int]:
    return (r["id.orig_h"], int(r["id.orig_p"]), r["id.resp_h"], int(r["id.resp_p"]))


def _either_way(rec: AppRecord) -> list[tuple[str, int, str, int]]:
    return [(rec.src, rec.sport, rec.dst, rec.dport), (rec.dst, rec.dport, rec.src, rec.sport)]


def _ids(v: str) -> str:
    return v.split("/")[1] if v.startswith("baselines/") else v.split("/")[-1]


needs_zeek = pytest.mark.skipif(not ZEEK.exists(), reason="Zeek reference traces not present")


@needs_zeek
@pytest.mark.parametrize(("trace", "baseline"), _baselines("dns.log"), ids=_ids)
def test_dns_matches_zeek(trace: str, baseline: str) -> None:
    msgs: dict[tuple[object, ...], list[AppRecord]] = collections.defaultdict(list)
    for rec in read_app_records(ZEEK / trace):
        if rec.dns is not None:
            for conn in _either_way(rec):
                msgs[(*conn, rec.dns.trans_id)].append(rec)
    problems = []
    for row in _zeek_log(ZEEK / baseline):
        mine = msgs.get((*_conn(row), int(row["trans_id"])), [])
        if not mine:
            problems.append(f"{_conn(row)} id {row['trans_id']}: no message")
            continue
        queries = {m.dns.query for m in mine if m.dns}
        if row["query"] != "-" and row["query"] not in queries:
            problems.append(f"{_conn(row)}: query {row['query']!r}, ours {queries}")
        types = {qtype_name(m.dns.qtype) for m in mine if m.dns and m.dns.qtype is not None}
        if row["qtype_name"] != "-" and row["qtype_name"] not in types:
            problems.append(f"{_conn(row)}: qtype {row['qtype_name']}, ours {types}")
        responses = [m.dns for m in mine if m.dns and m.dns.response]
        if row["rcode_name"] != "-" and row["rcode_name"] not in {rcode_name(m.rcode) for m in responses}:
            problems.append(f"{_conn(row)}: rcode {row['rcode_name']}, ours {[m.rcode for m in responses]}")
        if row["answers"] != "-":
            answers = row["answers"].split(",")
            if answers not in [m.answers for m in responses]:
                problems.append(f"{_conn(row)}: answers {answers}, ours {[m.answers for m in responses]}")
    assert not problems, "\n".join(problems)


@needs_zeek
@pytest.mark.parametrize(("trace", "baseline"), _baselines("ssl.log"), ids=_ids)
def test_tls_server_name_matches_zeek(trace: str, baseline: str) -> None:
    sni: dict[tuple[str, int, str, int], list[str | None]] = collections.defaultdict(list)
    for rec in read_app_records(ZEEK / trace):
        if rec.kind == "tls":
            sni[(rec.src, rec.sport, rec.dst, rec.dport)].append(rec.sni)
    problems = []
    for row in _zeek_log(ZEEK / baseline):
        expected = None if row["server_name"] == "-" else row["server_name"]
        if sni.get(_conn(row), [])[:1] != [expected]:
            problems.append(f"{_conn(row)}: server_name {expected!r}, ours {sni.get(_conn(row))}")
    assert not problems, "\n".join(problems)


@needs_zeek
@pytest.mark.parametrize(("trace", "baseline"), _baselines("http.log"), ids=_ids)
def test_http_requests_match_zeek(trace: str, baseline: str) -> None:
    reqs: dict[tuple[str, int, str, int], list[tuple[str, str, str]]] = collections.defaultdict(list)
    for rec in read_app_records(ZEEK / trace):
        if rec.http is not None:
            h = rec.http
            reqs[(rec.src, rec.sport, rec.dst, rec.dport)].append(
                (h.method, h.host or "-", h.uri or "(empty)")
            )
    problems = []
    rows = [r for r in _zeek_log(ZEEK / baseline) if r["method"] != "-"]
    assert rows
    for row in rows:
        depth = int(row["trans_depth"])
        mine = reqs.get(_conn(row), [])
        got = mine[depth - 1] if len(mine) >= depth else None
        if got != (row["method"], row["host"], row["uri"]):
            problems.append(
                f"{_conn(row)} #{depth}: zeek {(row['method'], row['host'], row['uri'])}, ours {got}"
            )
    assert not problems, "\n".join(problems)


# ---- parsers on their own, and the flow columns -------------------------------------------------------------


def _dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def test_dns_compression_truncation_and_loops() -> None:
    q = struct.pack("!HHHHHH", 7, 0x8183, 1, 2, 0, 0) + _dns_name("Example.ORG") + struct.pack("!HH", 1, 1)
    a1 = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 6) + b"\x03www\xc0\x0c"  # CNAME via pointers
    a2 = b"\xc0\x1d" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 9])
    msg = parse_dns(q + a1 + a2)
    assert msg is not None and msg.response and msg.rcode == 3 and rcode_name(msg.rcode) == "NXDOMAIN"
    assert msg.query == "example.org" and qtype_name(msg.qtype or 0) == "A"
    assert msg.answers == ["www.example.org", "192.0.2.9"]
    loop = struct.pack("!HHHHHH", 8, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    assert parse_dns(loop) is None  # a name pointing at itself
    assert parse_dns(b"\x00" * 11) is None
    cut = parse_dns(q + a1[:5])  # an answer cut short keeps the question
    assert cut is not None and cut.query == "example.org" and cut.answers == []


def _client_hello(sni: str, pad: int = 0) -> bytes:
    name = sni.encode()
    sn = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    ext = struct.pack("!HH", 0, len(sn)) + sn + struct.pack("!HH", 21, pad) + b"\0" * pad
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + struct.pack("!H", 2) + b"\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_client_hello_sni() -> None:
    assert client_hello_sni(_client_hello("mail.example.net")) == "mail.example.net"
    assert client_hello_sni(_client_hello("x")[:20]) is None
    assert client_hello_sni(b"\x17\x03\x03\x00\x10" + b"\0" * 16) is None


def test_http_pipelining_bodies_and_http09() -> None:
    two = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: h2\r\n\r\n"
    reqs, used, keep = parse_http_requests(two + b"GET /c HT")
    assert [(r.method, r.uri, r.host) for r in reqs] == [("POST", "/a", "h"), ("GET", "/b", "h2")]
    assert used == len(two) and keep
    reqs, _, keep = parse_http_requests(b"GET /zeek.html\n")
    assert [(r.method, r.uri, r.version, r.host) for r in reqs] == [("GET", "/zeek.html", "0.9", None)]
    assert parse_http_requests(b"\x16\x03\x01 not http\r\n")[2] is False


def test_flow_columns_with_segmented_client_hello(tmp_path: Path) -> None:
    hello = _client_hello("video.example.com", pad=2500)  # longer than one segment
    c, s = "10.1.0.5", "203.0.113.80"
    seq = 5000
    pkts = [(1.0, eth(ipv4(c, s, 6, tcp(40000, 443, SYN, seq=seq - 1))))]
    for i in range(0, len(hello), 1400):
        seg = hello[i : i + 1400]
        pkts.append((1.1 + i * 1e-6, eth(ipv4(c, s, 6, tcp(40000, 443, ACK | PSH, seq=seq, payload=seg)))))
        seq += len(seg)
    query = (
        struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + _dns_name("video.example.com") + b"\x00\x1c\x00\x01"
    )
    pkts.append((2.0, eth(ipv4(c, "10.1.0.1", 17, udp(5555, 53, query)))))
    request = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
    pkts.append((3.0, eth(ipv4(c, s, 6, tcp(40001, 80, ACK | PSH, seq=1, payload=request)))))
    path = tmp_path / "app.pcap"
    path.write_bytes(pcap(pkts))
    f = read_flows(path, FlowParams(app_metadata=True))
    rows = {int(p): {col: f[col][i] for col in APP_COLUMNS} for i, p in enumerate(f["destination.port"])}
    assert rows[443]["tls.client.server_name"] == "video.example.com"
    assert (rows[53]["dns.question.name"], rows[53]["dns.question.type"]) == ("video.example.com", "AAAA")
    assert rows[53]["dns.response_code"] is None  # no response was seen
    assert (rows[80]["http.request.method"], rows[80]["url.domain"], rows[80]["url.original"]) == (
        "GET",
        "www.example.com",
        "/index.html",
    )
    assert "dns.question.name" not in read_flows(path)  # only when asked for
