"""Wire formats: parse bytes into checked, frozen views; build headers back into bytes.

Every parser raises only ParseError. Nothing here keeps state or does I/O.
"""

from .addr import BROADCAST_MAC, ZERO_MAC, MacAddr
from .arp import ARP_LEN, ARP_REPLY, ARP_REQUEST, ArpPacket
from .checksum import (checksum_adjust, internet_checksum, ones_complement_sum,
                       pseudo_header_sum)
from .errors import ParseError
from .ethernet import (ETHERNET_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6,
                       ETHERTYPE_VLAN, EthernetFrame, build_ethernet, build_ethernet_vlan)
from .icmpv4 import (ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAM_PROBLEM,
                     ICMP_REDIRECT, ICMP_TIME_EXCEEDED, ICMPV4_HEADER_LEN, TIME_EXCEEDED_REASSEMBLY,
                     TIME_EXCEEDED_TTL, UNREACH_ADMIN_PROHIBITED, UNREACH_FRAG_NEEDED, UNREACH_HOST,
                     UNREACH_NET, UNREACH_PORT, UNREACH_PROTOCOL, Icmpv4Message, build_echo,
                     build_frag_needed, build_icmpv4)
from .ipv4 import (IPV4_HEADER_LEN, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Ipv4Option,
                   Ipv4Packet, build_ipv4, options_for_fragment, parse_options)
from .ipv6 import IPV6_HEADER_LEN, Ipv6Packet, build_ipv6
from .pcap import LINKTYPE_ETHERNET, PcapWriter
from .tcp import (ACK, CWR, ECE, FIN, PSH, RST, SYN, TCP_HEADER_LEN, URG, TcpSegment, build_tcp,
                  build_tcp_options)
from .udp import UDP_HEADER_LEN, UdpDatagram, build_udp

__all__ = [
    "ACK", "ARP_LEN", "ARP_REPLY", "ARP_REQUEST", "ArpPacket", "BROADCAST_MAC", "CWR", "ECE",
    "ETHERNET_HEADER_LEN", "ETHERTYPE_ARP", "ETHERTYPE_IPV4", "ETHERTYPE_IPV6",
    "ETHERTYPE_VLAN", "EthernetFrame", "FIN", "ICMPV4_HEADER_LEN", "ICMP_DEST_UNREACH",
    "ICMP_ECHO_REPLY", "ICMP_ECHO_REQUEST", "ICMP_PARAM_PROBLEM", "ICMP_REDIRECT",
    "ICMP_TIME_EXCEEDED", "IPV4_HEADER_LEN", "IPV6_HEADER_LEN", "Icmpv4Message", "Ipv4Option",
    "Ipv4Packet", "Ipv6Packet", "LINKTYPE_ETHERNET", "MacAddr", "PROTO_ICMP", "PROTO_ICMPV6",
    "PROTO_TCP", "PROTO_UDP", "PSH", "ParseError", "PcapWriter", "RST", "SYN", "TCP_HEADER_LEN",
    "TIME_EXCEEDED_REASSEMBLY", "TIME_EXCEEDED_TTL", "TcpSegment", "UDP_HEADER_LEN",
    "UNREACH_ADMIN_PROHIBITED", "UNREACH_FRAG_NEEDED", "UNREACH_HOST", "UNREACH_NET",
    "UNREACH_PORT", "UNREACH_PROTOCOL", "URG", "UdpDatagram", "ZERO_MAC",
    "build_echo", "build_ethernet", "build_ethernet_vlan", "build_frag_needed", "build_icmpv4",
    "build_ipv4", "build_ipv6", "build_tcp", "build_tcp_options", "build_udp",
    "checksum_adjust", "internet_checksum", "ones_complement_sum", "options_for_fragment",
    "parse_options", "pseudo_header_sum",
]
