"""Limits and timers of the sans-I/O core.

Every table the core keeps is bounded by one of these numbers; every bound has a drop counter
in `Stack.counters()`. Timer values are seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class StackConfig:
    # Devices and their transmit queues (frames produced but not yet taken by the binding).
    max_devices: int = 256
    tx_queue_frames: int = 4096
    # Frames looped back to ourselves (lo, own addresses) in one call.
    loopback_queue_frames: int = 1024

    # Neighbor (ARP) table. Timers follow RFC 4861 §10 constants, which Linux also uses for ARP.
    neighbor_table_size: int = 1024
    neighbor_queue_packets: int = 64        # packets waiting on one INCOMPLETE entry
    neighbor_queue_bytes: int = 128 * 1024  # ... and their bytes (a 64 KiB ping is ~45 fragments)
    neighbor_queue_total_bytes: int = 4 * 1024 * 1024
    arp_retrans_time: float = 1.0           # RETRANS_TIMER
    arp_max_multicast_solicit: int = 3      # broadcast requests while INCOMPLETE
    arp_max_unicast_solicit: int = 3        # unicast requests while PROBE
    reachable_time: float = 30.0            # REACHABLE_TIME
    delay_first_probe_time: float = 5.0     # DELAY_FIRST_PROBE_TIME
    failed_hold_time: float = 3.0           # a FAILED entry is kept this long, then collected
    stale_gc_time: float = 600.0            # an unused STALE entry is collected after this
    # RFC 5227 §1.1 constants.
    announce_num: int = 2
    announce_interval: float = 2.0
    defend_interval: float = 10.0

    # IPv6 on Ethernet devices (ipv6.py, ndp.py, icmpv6.py): every Ethernet device gets a
    # link-local address and probes it (a DAD solicitation when added or brought up). Off
    # (netstack's `ipv6 = false`), IPv6 frames are counted as rx_drop_ipv6_unsupported.
    ipv6: bool = True
    # IPv6 addresses (RFC 4862). Neighbor Discovery shares the neighbor settings above: one
    # table per version, each of neighbor_table_size, and RETRANS_TIMER is arp_retrans_time.
    max_ipv6_addresses: int = 1024
    dup_addr_detect_transmits: int = 1      # RFC 4862 §5.1 DupAddrDetectTransmits
    router_solicitations: int = 3           # RFC 4861 §10 MAX_RTR_SOLICITATIONS (0: none)
    icmp6_echo_ignore_multicast: bool = False   # Linux's default: ff02::1 pings are answered

    # Routing.
    max_routes: int = 4096

    # Reassembly (RFC 791 suggests a 15 s timer; Linux uses 30 s).
    reassembly_timeout: float = 30.0
    reassembly_max_datagrams: int = 256
    reassembly_bytes_per_source: int = 256 * 1024
    reassembly_bytes_total: int = 4 * 1024 * 1024
    reassembly_max_fragments: int = 128     # per datagram: bounds the work of one hostile source

    # ICMP errors: token bucket (RFC 1812 §4.3.2.8).
    icmp_error_rate: float = 100.0          # tokens per second
    icmp_error_burst: int = 50
    icmp_echo_ignore_broadcasts: bool = True

    # UDP.
    max_sockets: int = 4096
    # Connection tracking (filter.py): tracked connections at most; new ones beyond are refused.
    conntrack_max: int = 65536
    udp_recv_queue_datagrams: int = 256
    udp_recv_queue_bytes: int = 1024 * 1024
    ephemeral_port_min: int = 49152        # RFC 6056 §2.1: the IANA dynamic range
    ephemeral_port_max: int = 65535

    default_ttl: int = 64
    # Events not yet taken by the binding.
    max_events: int = 4096
    # Re-raise internal errors from receive() instead of counting them (for tests).
    strict: bool = False
    # Seed for the ephemeral-port and MAC generators; None draws from os.urandom.
    random_seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StackConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
