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
    s.take_transmit()


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


def sent(s: Stack, dev: str | None = None) -> list:
    """Frames the stack transmitted (since the last call), parsed by scapy."""
    tx = s.take_transmit()
    if dev is None:
        return [Ether(f) for fs in tx.values() for f in fs]
    return [Ether(f) for f in tx.get(dev, [])]


def sent_ip(s: Stack, dev: str | None = None, kind: str = "ethernet") -> list:
    tx = s.take_transmit()
    frames = [f for d, fs in tx.items() if dev is None or d == dev for f in fs]
    if kind == "ip":
        return [IP(f) for f in frames]
    return [Ether(f)[IP] for f in frames if Ether(f).haslayer(IP)]


def addr(s: str) -> IPv4Address:
    return IPv4Address(s)
