"""The NetFlow v9 / IPFIX information elements the decoder reads, and how it reads them.

NetFlow v9 field types 1-127 (RFC 3954) are the same numbers as the IANA IPFIX information elements (RFC 7012),
so one table serves both. Every other field, including vendor fields (Cisco NSEL 33000+, Palo Alto 56701,
Huawei/H3C NetStream extensions) and enterprise-specific IPFIX elements, is carried past by its length and
ignored. A few enterprise elements that carry flow facts are read: RFC 5103 reverse counters (PEN 29305) and
CERT YAF TCP flags (PEN 6871).
"""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal["uint", "ipv4", "ipv6", "float"]

REVERSE_PEN: Final = 29305  # RFC 5103 biflow reverse information elements
CERT_PEN: Final = 6871  # CERT NetSA (YAF)
VARIABLE_LENGTH: Final = 0xFFFF  # IPFIX field length meaning "length prefixed in the record"

# (enterprise number, element id) -> (column name inside the decoder, kind, element name for messages).
# The column name is what the structured dtype calls the field; it is also how column building finds it.
WANTED: Final[dict[tuple[int, int], tuple[str, Kind, str]]] = {
    (0, 1): ("octets", "uint", "octetDeltaCount"),
    (0, 2): ("packets", "uint", "packetDeltaCount"),
    (0, 4): ("proto", "uint", "protocolIdentifier"),
    (0, 6): ("flags", "uint", "tcpControlBits"),
    (0, 7): ("sport", "uint", "sourceTransportPort"),
    (0, 8): ("src4", "ipv4", "sourceIPv4Address"),
    (0, 11): ("dport", "uint", "destinationTransportPort"),
    (0, 12): ("dst4", "ipv4", "destinationIPv4Address"),
    (0, 21): ("end_uptime", "uint", "flowEndSysUpTime"),
    (0, 22): ("start_uptime", "uint", "flowStartSysUpTime"),
    (0, 23): ("post_octets", "uint", "postOctetDeltaCount"),
    (0, 24): ("post_packets", "uint", "postPacketDeltaCount"),
    (0, 27): ("src6", "ipv6", "sourceIPv6Address"),
    (0, 28): ("dst6", "ipv6", "destinationIPv6Address"),
    (0, 34): ("sampling_interval", "uint", "samplingInterval"),
    (0, 48): ("sampler_id", "uint", "samplerId"),
    (0, 50): ("sampler_interval", "uint", "samplerRandomInterval"),
    (0, 85): ("octets_total", "uint", "octetTotalCount"),
    (0, 86): ("packets_total", "uint", "packetTotalCount"),
    (0, 150): ("start_s", "uint", "flowStartSeconds"),
    (0, 151): ("end_s", "uint", "flowEndSeconds"),
    (0, 152): ("start_ms", "uint", "flowStartMilliseconds"),
    (0, 153): ("end_ms", "uint", "flowEndMilliseconds"),
    (0, 154): ("start_us", "uint", "flowStartMicroseconds"),
    (0, 155): ("end_us", "uint", "flowEndMicroseconds"),
    (0, 156): ("start_ns", "uint", "flowStartNanoseconds"),
    (0, 157): ("end_ns", "uint", "flowEndNanoseconds"),
    (0, 158): ("start_delta_us", "uint", "flowStartDeltaMicroseconds"),
    (0, 159): ("end_delta_us", "uint", "flowEndDeltaMicroseconds"),
    (0, 160): ("system_init_ms", "uint", "systemInitTimeMilliseconds"),
    (0, 180): ("udp_sport", "uint", "udpSourcePort"),
    (0, 181): ("udp_dport", "uint", "udpDestinationPort"),
    (0, 182): ("tcp_sport", "uint", "tcpSourcePort"),
    (0, 183): ("tcp_dport", "uint", "tcpDestinationPort"),
    (0, 231): ("initiator_octets", "uint", "initiatorOctets"),
    (0, 232): ("responder_octets", "uint", "responderOctets"),
    (0, 298): ("initiator_packets", "uint", "initiatorPackets"),
    (0, 299): ("responder_packets", "uint", "responderPackets"),
    (0, 302): ("selector_id", "uint", "selectorId"),
    (0, 305): ("sampling_packet_interval", "uint", "samplingPacketInterval"),
    (0, 306): ("sampling_packet_space", "uint", "samplingPacketSpace"),
    (0, 309): ("sampling_size", "uint", "samplingSize"),
    (0, 310): ("sampling_population", "uint", "samplingPopulation"),
    (0, 311): ("sampling_probability", "float", "samplingProbability"),
    (0, 322): ("obs_s", "uint", "observationTimeSeconds"),
    (0, 323): ("obs_ms", "uint", "observationTimeMilliseconds"),
    (REVERSE_PEN, 1): ("rev_octets", "uint", "reverseOctetDeltaCount"),
    (REVERSE_PEN, 2): ("rev_packets", "uint", "reversePacketDeltaCount"),
    (REVERSE_PEN, 6): ("rev_flags", "uint", "reverseTcpControlBits"),
    (REVERSE_PEN, 85): ("rev_octets_total", "uint", "reverseOctetTotalCount"),
    (REVERSE_PEN, 86): ("rev_packets_total", "uint", "reversePacketTotalCount"),
    (CERT_PEN, 14): ("cert_initial_flags", "uint", "initialTCPFlags"),
    (CERT_PEN, 15): ("cert_union_flags", "uint", "unionTCPFlags"),
    (CERT_PEN, 16398): ("cert_rev_initial_flags", "uint", "reverseInitialTCPFlags"),
    (CERT_PEN, 16399): ("cert_rev_union_flags", "uint", "reverseUnionTCPFlags"),
}

# Where a column comes from, best source first. The first one a template carries wins.
SOURCE_OCTETS: Final = ("octets", "octets_total", "initiator_octets", "post_octets")
SOURCE_PACKETS: Final = ("packets", "packets_total", "initiator_packets", "post_packets")
DESTINATION_OCTETS: Final = ("rev_octets", "rev_octets_total", "responder_octets")
DESTINATION_PACKETS: Final = ("rev_packets", "rev_packets_total", "responder_packets")
SOURCE_PORT: Final = ("sport", "tcp_sport", "udp_sport")
DESTINATION_PORT: Final = ("dport", "tcp_dport", "udp_dport")
TCP_FLAGS: Final = (
    "flags",
    "rev_flags",
    "cert_initial_flags",
    "cert_union_flags",
    "cert_rev_initial_flags",
    "cert_rev_union_flags",
)
# Flow start / end, most precise first; "uptime" and "delta" forms need header or options context.
START_FIELDS: Final = (
    "start_ms",
    "start_us",
    "start_ns",
    "start_s",
    "start_uptime",
    "start_delta_us",
    "obs_ms",
    "obs_s",
)
END_FIELDS: Final = ("end_ms", "end_us", "end_ns", "end_s", "end_uptime", "end_delta_us", "obs_ms", "obs_s")
SAMPLER_KEYS: Final = ("sampler_id", "selector_id")

# Lengths an element must have to be read; others are carried past and reported once per template.
FIXED_LENGTHS: Final[dict[Kind, tuple[int, ...]]] = {
    "ipv4": (4,),
    "ipv6": (16,),
    "float": (4, 8),
    "uint": (1, 2, 3, 4, 5, 6, 7, 8),  # reduced-size encoding (RFC 7011 section 6.2)
}


def element_name(enterprise: int, element: int) -> str:
    """Human name of an element for error messages, e.g. ``sourceIPv4Address (8)``."""
    known = WANTED.get((enterprise, element))
    label = f"{known[2]} " if known else ""
    if enterprise:
        return f"{label}(enterprise {enterprise}, element {element})"
    return f"{label}({element})"
