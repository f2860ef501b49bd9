"""Application metadata from packet payloads: DNS messages, TLS ClientHello server names, HTTP requests.

Candidates are picked with column tests (ports, payload length, the first payload bytes); only those are
parsed, in Python, one message at a time. TCP payloads are followed per direction in sequence order, just
far enough to complete a ClientHello or HTTP request headers, with a bounded number of streams and bytes.

Field values follow Zeek's dns.log / ssl.log / http.log so that they compare: lower-cased DNS names, ``qtype_name`` and
``rcode_name`` mnemonics, A/AAAA answers as addresses, names for CNAME/NS/PTR/MX, ``TXT <len> <text>``
and ``RRSIG <type covered> <signer>`` renderings; the SNI of the first ClientHello; method, Host and URI.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import BinaryIO, Final

import numpy as np

from taishi.collectors.pcap_decode import PROTO_TCP, PROTO_UDP, Decoder, Packets
from taishi.collectors.pcap_reader import iter_packet_batches

DNS_PORTS: Final = frozenset({53, 137, 5353, 5355})

DNS_QTYPES: Final[dict[int, str]] = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR", 10: "NULL", 11: "WKS",
    12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB", 19: "X25", 20: "ISDN",
    21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG", 25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC",
    30: "NXT", 31: "EID", 32: "NIMLOC", 33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT", 38: "A6",
    39: "DNAME", 40: "SINK", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP",
    59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS", 99: "SPF",
    100: "UINFO", 101: "UID", 102: "GID", 103: "UNSPEC", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR",
    253: "MAILB", 254: "MAILA", 255: "*", 256: "URI", 257: "CAA", 32768: "TA", 32769: "DLV",
}  # fmt: skip
DNS_RCODES: Final[dict[int, str]] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
    7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS", 17: "BADKEY", 18: "BADTIME",
    19: "BADMODE", 20: "BADNAME", 21: "BADALG", 22: "BADTRUNC", 23: "BADCOOKIE",
}  # fmt: skip

# bytes a request line may start with (upper-case method characters and the space after a short method)
_METHOD_BYTE: Final = np.zeros(256, dtype=bool)
_METHOD_BYTE[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_- ")] = True


def _looks_like_method(first4: np.ndarray) -> np.ndarray:
    """Column test on the first four payload bytes (big-endian): an upper-case letter, then method bytes."""
    top = first4 >> np.uint64(24)
    ok = (top >= ord("A")) & (top <= ord("Z"))
    for shift in (16, 8, 0):
        ok &= _METHOD_BYTE[((first4 >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.intp)]
    return ok


_TLS_HANDSHAKE: Final = 0x16
_MAX_STREAM_BYTES: Final = 65536


def qtype_name(t: int) -> str:
    """Mnemonic of a DNS query type (Zeek's qtype_name)."""
    return DNS_QTYPES.get(t, f"query-{t}")


def rcode_name(r: int) -> str:
    """Mnemonic of a DNS response code (Zeek's rcode_name)."""
    return DNS_RCODES.get(r, f"rcode-{r}")


# --------------------------------------------------------------------------------------------------------------
# DNS


@dataclass(slots=True)
class DnsMessage:
    """One DNS message: header, the first question, and its answers rendered as Zeek renders them."""

    trans_id: int
    response: bool
    opcode: int
    rcode: int
    query: str | None
    qtype: int | None
    answers: list[str]
    ttls: list[int]


def _name(msg: bytes, off: int) -> tuple[str, int]:
    """A possibly compressed domain name at ``off``; returns it and the offset after it."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if off >= len(msg):
            raise ValueError("name runs past the message")
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg) or jumps > 32:
                raise ValueError("bad compression pointer")
            if end < 0:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            jumps += 1
            continue
        if n == 0:
            return ".".join(labels), (off + 1 if end < 0 else end)
        if n & 0xC0 or off + 1 + n > len(msg):
            raise ValueError("bad label")
        labels.append(msg[off + 1 : off + 1 + n].decode("ascii", "backslashreplace").lower())
        off += 1 + n


def _rdata(msg: bytes, rtype: int, off: int, rdlen: int) -> str | None:
    rd = msg[off : off + rdlen]
    if rtype == 1 and rdlen == 4:
        return str(ipaddress.IPv4Address(rd))
    if rtype == 28 and rdlen == 16:
        return str(ipaddress.IPv6Address(rd))
    if rtype in (2, 5, 12, 39):  # NS, CNAME, PTR, DNAME
        return _name(msg, off)[0]
    if rtype == 15 and rdlen > 2:  # MX: preference, exchange
        return _name(msg, off + 2)[0]
    if rtype == 16:  # TXT: one or more character strings
        parts, i = [], 0
        while i < rdlen:
            n = rd[i]
            parts.append(f"TXT {n} {rd[i + 1 : i + 1 + n].decode('ascii', 'backslashreplace')}")
            i += 1 + n
        return " ".join(parts)
    if rtype == 46 and rdlen > 18:  # RRSIG: type covered ... signer name
        return f"RRSIG {struct.unpack_from('!H', rd)[0]} {_name(msg, off + 18)[0]}"
    return None


def parse_dns(msg: bytes, answers: bool = True) -> DnsMessage | None:
    """Parse a DNS message (UDP payload); None when it is not one. ``answers=False`` skips the answers."""
    if len(msg) < 12:
        return None
    tid, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", msg)
    off = 12
    query: str | None = None
    qtype: int | None = None
    texts: list[str] = []
    ttls: list[int] = []
    try:
        for i in range(qd):
            name, off = _name(msg, off)
            if off + 4 > len(msg):
                raise ValueError("short question")
            if i == 0:
                query, qtype = name, struct.unpack_from("!H", msg, off)[0]
            off += 4
        for _ in range(an if answers else 0):
            _, off = _name(msg, off)
            if off + 10 > len(msg):
                break
            rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
            off += 10
            if off + rdlen > len(msg):
                break
            text = _rdata(msg, rtype, off, rdlen)
            if text is not None:
                texts.append(text)
                ttls.append(ttl)
            off += rdlen
    except ValueError:
        if query is None and qd:
            return None
    return DnsMessage(tid, bool(flags >> 15), (flags >> 11) & 15, flags & 15, query, qtype, texts, ttls)


# --------------------------------------------------------------------------------------------------------------
# TLS and HTTP


def client_hello_length(data: bytes) -> int | None:
    """Bytes needed for the ClientHello that starts ``data`` (its first TLS record), or None if it is not one."""
    if len(data) < 6 or data[0] != _TLS_HANDSHAKE or data[1] != 3 or data[5] != 1:
        return None
    return 5 + struct.unpack_from("!H", data, 3)[0]


def client_hello_sni(data: bytes) -> str | None:
    """The server_name of a ClientHello (first TLS record of ``data``), or None."""
    try:
        if client_hello_length(data) is None:
            return None
        end = 5 + struct.unpack_from("!H", data, 3)[0]
        p = 5 + 4 + 2 + 32  # record header, handshake header, client version, random
        p += 1 + data[p]  # session id
        p += 2 + struct.unpack_from("!H", data, p)[0]  # cipher suites
        p += 1 + data[p]  # compression methods
        ext_end = min(end, p + 2 + struct.unpack_from("!H", data, p)[0])
        p += 2
        while p + 4 <= ext_end:
            etype, elen = struct.unpack_from("!HH", data, p)
            p += 4
            if etype == 0:  # server_name: list length, then (type, length, name) entries
                q, stop = p + 2, p + elen
                while q + 3 <= stop:
                    ntype, nlen = data[q], struct.unpack_from("!H", data, q + 1)[0]
                    if ntype == 0:
                        return data[q + 3 : q + 3 + nlen].decode("ascii", "backslashreplace")
                    q += 3 + nlen
                return None
            p += elen
    except (IndexError, struct.error):
        return None
    return None


@dataclass(slots=True)
class HttpRequest:
    """One HTTP request line and its Host header (``version`` None when the line had none)."""

    method: str
    uri: str
    version: str | None
    host: str | None


# RFC 9110 token characters, which a request method is made of
_TCHAR: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _request_line(line: bytes) -> tuple[str, str, str | None] | None:
    """(method, uri, version) of a request line, or None; lenient the way Zeek's HTTP parser is."""
    sp = line.find(b" ")
    if sp <= 0 or not all(c in _TCHAR for c in line[:sp]):
        return None
    rest = line[sp + 1 :]
    if not rest:
        return None
    method = line[:sp].decode("ascii")
    if rest.startswith(b"HTTP/"):  # no URI at all
        return method, "", rest[5:].decode("ascii", "backslashreplace")
    uri, _, tail = rest.partition(b" ")
    version = tail[5:].decode("ascii", "backslashreplace") if tail.startswith(b"HTTP/") else None
    return method, uri.decode("ascii", "backslashreplace"), version


def parse_http_requests(buf: bytes, final: bool = False) -> tuple[list[HttpRequest], int, bool]:
    """Complete requests at the start of ``buf``: (requests, bytes consumed, whether to keep following).

    Headers end at a blank line; a request line without a version and without headers is an HTTP/0.9
    request (when it is all there is, or ``final`` says no more bytes are coming). Bodies with a
    Content-Length are skipped; anything that is not a request line ends the stream.
    """
    out: list[HttpRequest] = []
    pos = 0
    while pos < len(buf):
        line_end = buf.find(b"\n", pos)
        if line_end < 0:
            return out, pos, len(buf) - pos < 8192
        parsed = _request_line(buf[pos:line_end].rstrip(b"\r"))
        if parsed is None:
            return out, pos, False
        method, uri, version = parsed
        hdr_end, skip = buf.find(b"\r\n\r\n", line_end - 1), 4
        if hdr_end < 0:
            hdr_end, skip = buf.find(b"\n\n", line_end), 2
        if hdr_end < 0:
            if version is None and (final or line_end + 1 == len(buf)):
                out.append(HttpRequest(method, uri, "0.9", None))
                pos = line_end + 1
                continue
            return out, pos, len(buf) - pos < 16384
        host, length = None, 0
        for h in buf[line_end + 1 : hdr_end].split(b"\n"):
            name, _, value = h.rstrip(b"\r").partition(b":")
            key = name.strip().lower()
            if key == b"host" and host is None:
                host = value.strip().decode("ascii", "backslashreplace")
            elif key == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    return out, pos, False
        out.append(HttpRequest(method, uri, version, host))
        pos = hdr_end + skip + length
    return out, min(pos, len(buf)), True


# --------------------------------------------------------------------------------------------------------------
# The extractor


@dataclass(slots=True)
class AppRecord:
    """One application message, with the packet's 5-tuple and time (microseconds)."""

    ts: int
    src: str
    sport: int
    dst: str
    dport: int
    proto: int
    kind: str  # "dns", "tls", "http"
    dns: DnsMessage | None = None
    sni: str | None = None
    http: HttpRequest | None = None


@dataclass(slots=True)
class _Stream:
    kind: str
    next_seq: int
    buf: bytearray = field(default_factory=bytearray)
    first_ts: int = 0


def _addr(hi: int, lo: int) -> str:
    """Text form of an address given as two 64-bit halves (IPv4-mapped as a dotted quad)."""
    if hi == 0 and lo >> 32 == 0xFFFF:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)
_MIX: Final = np.uint64(0xBF58476D1CE4E5B9)


def _direction_key(pk: Packets, rows: np.ndarray) -> np.ndarray:
    """A 64-bit key of each packet's (src, sport, dst, dport), to find the streams being followed."""
    h = pk.src_lo[rows] * _GOLDEN
    for col in (pk.dst_lo[rows], pk.src_hi[rows], pk.dst_hi[rows] + np.uint64(1)):
        h ^= col
        h *= _MIX
        h ^= h >> np.uint64(29)
    h ^= ((pk.sport[rows] << 16) | pk.dport[rows]).astype(np.uint64)
    h *= _MIX
    return h ^ (h >> np.uint64(31))


class AppExtractor:
    """Turns decoded packets into :class:`AppRecord`; follows TCP client streams within fixed bounds.

    With ``first_only`` a stream is dropped after its first ClientHello or request (what a flow record
    needs); otherwise HTTP streams are followed for every request, as Zeek's http.log lists them.
    """

    def __init__(
        self, max_streams: int = 65536, max_stream_bytes: int = _MAX_STREAM_BYTES, first_only: bool = False
    ) -> None:
        self.max_streams = max_streams
        self.max_stream_bytes = max_stream_bytes
        self.first_only = first_only
        self._streams: OrderedDict[int, _Stream] = OrderedDict()
        self._keys: np.ndarray | None = None  # keys of the followed streams, rebuilt when they change
        self._names: dict[tuple[int, int], str] = {}

    def add(self, pk: Packets) -> list[AppRecord]:
        """Records found in these packets (in packet order)."""
        if not len(pk):
            return []
        plen = pk.payload_len
        off = pk.payload_off
        first4 = np.zeros(plen.size, dtype=np.uint64)
        has4 = np.flatnonzero(plen >= 4)
        if has4.size:
            d = pk.data
            b = [d.take(off[has4] + k).astype(np.uint64) for k in range(4)]
            first4[has4] = (b[0] << np.uint64(24)) | (b[1] << np.uint64(16)) | (b[2] << np.uint64(8)) | b[3]
        udp = pk.proto == PROTO_UDP
        tcp = (pk.proto == PROTO_TCP) & (plen > 0)
        dns_port = np.isin(pk.sport, list(DNS_PORTS)) | np.isin(pk.dport, list(DNS_PORTS))
        dns = udp & dns_port & (plen >= 12)
        starts = tcp & (((first4 >> np.uint64(16)) == 0x1603) | _looks_like_method(first4))
        cand = dns | starts
        tcp_rows = np.flatnonzero(tcp | starts)
        keys = np.zeros(plen.size, dtype=np.uint64)
        keys[tcp_rows] = _direction_key(pk, tcp_rows)
        if self._streams:  # later segments of the streams followed already
            if self._keys is None:
                self._keys = np.fromiter(self._streams, dtype=np.uint64, count=len(self._streams))
            cand[tcp_rows] |= np.isin(keys[tcp_rows], self._keys)
        if not self.first_only:  # and of those opened in this batch
            cand[tcp_rows] |= np.isin(keys[tcp_rows], keys[np.flatnonzero(starts)])
        out = self._rows(pk, np.flatnonzero(cand), dns, starts, keys)
        if self.first_only and self._streams:
            # A ClientHello or request that did not fit in its first segment: take the stream's later
            # segments of this batch too (a second pass keeps the common case, one segment, cheap).
            fresh = np.fromiter(self._streams, dtype=np.uint64, count=len(self._streams))
            more = np.zeros(plen.size, dtype=bool)
            more[tcp_rows] = np.isin(keys[tcp_rows], fresh) & ~cand[tcp_rows]
            out += self._rows(pk, np.flatnonzero(more), dns, starts, keys)
        return out

    def _rows(
        self, pk: Packets, rows: np.ndarray, dns: np.ndarray, starts: np.ndarray, keys: np.ndarray
    ) -> list[AppRecord]:
        out: list[AppRecord] = []
        if rows.size == 0:
            return out
        off, plen = pk.payload_off, pk.payload_len
        cols = (
            pk.ts[rows].tolist(),
            pk.src_hi[rows].tolist(),
            pk.src_lo[rows].tolist(),
            pk.dst_hi[rows].tolist(),
            pk.dst_lo[rows].tolist(),
            pk.sport[rows].tolist(),
            pk.dport[rows].tolist(),
            pk.proto[rows].tolist(),
            off[rows].tolist(),
            plen[rows].tolist(),
            pk.tcp_seq[rows].tolist(),
            dns[rows].tolist(),
            starts[rows].tolist(),
            keys[rows].tolist(),
        )
        data = pk.data
        for ts, sh, sl, dh, dl, sp, dp, proto, o, n, seq, is_dns, opens, key in zip(*cols, strict=True):
            if is_dns:
                msg = parse_dns(data[o : o + n].tobytes(), answers=not self.first_only)
                if msg is not None:
                    out.append(
                        AppRecord(ts, self._addr(sh, sl), sp, self._addr(dh, dl), dp, proto, "dns", dns=msg)
                    )
                continue
            st = self._streams.get(key)
            if st is None and not opens:
                continue
            payload = data[o : o + n].tobytes()
            if st is None:
                kind = "tls" if payload[0] == _TLS_HANDSHAKE else "http"
                st = self._streams[key] = _Stream(kind, seq, first_ts=ts)
                self._keys = None
                while len(self._streams) > self.max_streams:
                    self._streams.popitem(last=False)
            elif seq != st.next_seq:
                continue  # a retransmission or a gap: only in-order bytes are followed
            st.buf += payload
            st.next_seq = (seq + n) & 0xFFFFFFFF
            self._streams.move_to_end(key)
            out += self._stream_records(key, st, ts, (sh, sl, sp, dh, dl, dp, proto))
        return out

    def _stream_records(self, key: int, st: _Stream, ts: int, tup: tuple[int, ...]) -> list[AppRecord]:
        sh, sl, sp, dh, dl, dp, proto = tup
        src, dst = self._addr(sh, sl), self._addr(dh, dl)
        if st.kind == "tls":
            need = client_hello_length(bytes(st.buf[:6]))
            if need is not None and len(st.buf) < need and len(st.buf) < self.max_stream_bytes:
                return []
            self._drop(key)
            if need is None:
                return []
            return [
                AppRecord(st.first_ts, src, sp, dst, dp, proto, "tls", sni=client_hello_sni(bytes(st.buf)))
            ]
        reqs, used, keep = parse_http_requests(bytes(st.buf))
        del st.buf[:used]
        if not keep or len(st.buf) > self.max_stream_bytes or (self.first_only and reqs):
            self._drop(key)
        return [AppRecord(ts, src, sp, dst, dp, proto, "http", http=r) for r in reqs]

    def _addr(self, hi: int, lo: int) -> str:
        text = self._names.get((hi, lo))
        if text is None:
            if len(self._names) > 1 << 16:
                self._names.clear()
            text = self._names[(hi, lo)] = _addr(hi, lo)
        return text

    def _drop(self, key: int) -> None:
        del self._streams[key]
        self._keys = None


def read_app_records(source: str | os.PathLike[str] | BinaryIO, first_only: bool = False) -> list[AppRecord]:
    """Every DNS message, ClientHello and HTTP request of a capture file, in packet order."""
    decoder = Decoder()
    extractor = AppExtractor(first_only=first_only)
    out: list[AppRecord] = []
    for batch in iter_packet_batches(source):
        for pk in decoder.decode(batch):
            out += extractor.add(pk)
    return out


APP_COLUMNS: Final = (
    "dns.question.name",
    "dns.question.type",
    "dns.response_code",
    "tls.client.server_name",
    "http.request.method",
    "url.domain",
    "url.original",
)


class AppJoin:
    """Attaches the first DNS question and response code, SNI and HTTP request of a flow to its record.

    Records wait here until the flow they belong to (same 5-tuple either way round, first packet at or
    before the record) is reported; those older than ``keep_us`` before the newest are dropped.
    """

    def __init__(self, keep_us: int) -> None:
        self.keep_us = keep_us
        self._pending: dict[tuple[object, ...], list[AppRecord]] = {}
        self._newest = 0

    def add(self, records: list[AppRecord]) -> None:
        for r in records:
            a, b = (r.src, r.sport), (r.dst, r.dport)
            key: tuple[object, ...] = (*a, *b, r.proto) if a <= b else (*b, *a, r.proto)
            self._pending.setdefault(key, []).append(r)
            self._newest = max(self._newest, r.ts)

    def columns(self, flows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The APP_COLUMNS for a batch of flow records (object arrays, None where nothing was seen)."""
        n = flows["@timestamp"].size
        out = {c: np.full(n, None, dtype=object) for c in APP_COLUMNS}
        if not self._pending:
            return out
        cols = [flows[c].tolist() for c in ("source.ip", "source.port", "destination.ip", "destination.port")]
        proto = flows["network.iana_number"].tolist()
        start, end = flows["@timestamp"].tolist(), flows["event.end"].tolist()
        for i, (sip, sp, dip, dp) in enumerate(zip(*cols, strict=True)):
            a, b = (sip, sp), (dip, dp)
            key: tuple[object, ...] = (*a, *b, proto[i]) if a <= b else (*b, *a, proto[i])
            recs = self._pending.get(key)
            if not recs:
                continue
            lo, hi = start[i] * 1000, end[i] * 1000 + 999
            mine = [r for r in recs if lo <= r.ts <= hi]
            if not mine:
                continue
            rest = [r for r in recs if not lo <= r.ts <= hi]
            if rest:
                self._pending[key] = rest
            else:
                del self._pending[key]
            self._fill(out, i, mine)
        horizon = self._newest - self.keep_us
        for key in [k for k, v in self._pending.items() if v[-1].ts < horizon]:
            del self._pending[key]
        return out

    @staticmethod
    def _fill(out: dict[str, np.ndarray], i: int, recs: list[AppRecord]) -> None:
        for r in recs:
            if r.dns is not None:
                if out["dns.question.name"][i] is None and r.dns.query is not None:
                    out["dns.question.name"][i] = r.dns.query
                    out["dns.question.type"][i] = qtype_name(r.dns.qtype or 0)
                if r.dns.response and out["dns.response_code"][i] is None:
                    out["dns.response_code"][i] = rcode_name(r.dns.rcode)
            elif r.kind == "tls" and out["tls.client.server_name"][i] is None:
                out["tls.client.server_name"][i] = r.sni
            elif r.http is not None and out["http.request.method"][i] is None:
                out["http.request.method"][i] = r.http.method
                out["url.domain"][i] = r.http.host
                out["url.original"][i] = r.http.uri
