"""Checks made with scapy, the independent packet builder the tests compare against."""
from __future__ import annotations

from scapy.layers.inet import IP
from scapy.layers.l2 import Ether


def checksums_agree(p: Ether, layer) -> tuple[bool, bool]:
    """(IPv4 header checksum right, ``layer``'s checksum right), as scapy recomputes them.

    A frame without IPv4 (IPv6) counts its header as right: it has no header checksum.
    """
    again = p.copy()
    if IP in again:
        del again[IP].chksum
    del again[layer].chksum
    again = Ether(bytes(again))
    return (IP not in p or p[IP].chksum == again[IP].chksum), p[layer].chksum == again[layer].chksum
