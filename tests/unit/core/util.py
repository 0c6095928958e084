"""Helpers for core tests: a two-port router stack and scapy-built peer frames."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from components.netstack.core import Stack, StackConfig

MAC0 = "02:00:00:00:00:01"      # our eth0
MAC1 = "02:00:00:00:01:01"      # our eth1
HOST_A = "02:00:00:00:00:aa"    # a peer on eth0's LAN
HOST_B = "02:00:00:00:01:bb"    # a peer on eth1's LAN
IP0 = "10.0.0.1"
IP1 = "192.168.1.1"
A = "10.0.0.2"
B = "192.168.1.2"
BCAST = "ff:ff:ff:ff:ff:ff"


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def make_stack(now: float = 0.0, **cfg) -> Stack:
    cfg.setdefault("strict", True)
    cfg.setdefault("random_seed", 1)
    cfg.setdefault("announce_num", 1)   # no second announcement timer muddling the tests
    # IPv6 is on in every real stack; these helpers serve the IPv4 tests, which count IPv4's
    # frames (test_ipv6.py and its own helpers cover IPv6 beside IPv4).
    cfg.setdefault("ipv6", False)
    s = Stack(StackConfig(**cfg))
    s.add_device("eth0", mac=mac(MAC0), now=now)
    s.add_device("eth1", mac=mac(MAC1), now=now)
    s.add_address("eth0", IPv4Interface(f"{IP0}/24"), now)
    s.add_address("eth1", IPv4Interface(f"{IP1}/24"), now)
    s.take_transmit()   # gratuitous ARP announcements
    s.take_events()
    return s


def arp_request(src_mac: str, src_ip: str, target_ip: str, dst_mac: str = BCAST) -> bytes:
    return bytes(Ether(dst=dst_mac, src=src_mac) /
                 ARP(op=1, hwsrc=src_mac, psrc=src_ip, hwdst="00:00:00:00:00:00", pdst=target_ip))


def arp_reply(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str) -> bytes:
    return bytes(Ether(dst=dst_mac, src=src_mac) /
                 ARP(op=2, hwsrc=src_mac, psrc=src_ip, hwdst=dst_mac, pdst=dst_ip))


def learn(s: Stack, dev: str, peer_mac: str, peer_ip: str, our_ip: str, now: float = 0.0) -> None:
    """Make the stack know peer (it asks us who has our_ip); drop our reply."""
    s.receive(dev, arp_request(peer_mac, peer_ip, our_ip), now)
    sent_raw(s, dev)


def ip_frame(src_mac: str, dst_mac: str, pkt) -> bytes:
    return bytes(Ether(src=src_mac, dst=dst_mac) / pkt)


def ping_frame(src_mac: str, dst_mac: str, src: str, dst: str, ident: int = 7, seq: int = 1,
               payload: bytes = b"ping", ttl: int = 64) -> bytes:
    return ip_frame(src_mac, dst_mac, IP(src=src, dst=dst, ttl=ttl) /
                    ICMP(type=8, id=ident, seq=seq) / Raw(payload))


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int,
              payload: bytes = b"data", ttl: int = 64) -> bytes:
    return ip_frame(src_mac, dst_mac, IP(src=src, dst=dst, ttl=ttl) /
                    UDP(sport=sport, dport=dport) / Raw(payload))


def _take(s: Stack) -> dict[str, list[bytes]]:
    # Frames taken but not yet asked for stay in a per-stack stash, so that looking at one
    # device's frames does not lose another's.
    pending = s.__dict__.setdefault("_test_pending", {})
    for d, fs in s.take_transmit().items():
        pending.setdefault(d, []).extend(fs)
    return pending


def sent_raw(s: Stack, dev: str | None = None) -> list[bytes]:
    pending = _take(s)
    if dev is None:
        out = [f for fs in pending.values() for f in fs]
        pending.clear()
        return out
    return pending.pop(dev, [])


def sent(s: Stack, dev: str | None = None) -> list:
    """Frames the stack transmitted (since the last look), parsed by scapy."""
    return [Ether(f) for f in sent_raw(s, dev)]


def addr(s: str) -> IPv4Address:
    return IPv4Address(s)


def udp_checksum_ok(pkt) -> bool:
    """Recompute the UDP checksum of a scapy IP/UDP packet independently."""
    p = IP(bytes(pkt))
    orig = p[UDP].chksum
    del p[UDP].chksum
    return IP(bytes(p))[UDP].chksum == orig
