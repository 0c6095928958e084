"""State hand-over between two incarnations of the netstack process.

A snapshot holds plain msgpack types only, one key (or a few) per layer, each written and
read by its layer: devices (Links), addresses, static routes (main's under `routes`, the
numbered policy-routing tables' under `route_tables`, absent from older snapshots) and the IP
ident (Ipv4Layer; connected routes follow from the addresses), resolved neighbor entries
(Arp; restored STALE: the new process has not confirmed them itself, RFC 4861 §7.3.3), the
IPv6 addresses with their DAD state (Ipv6Layer, `ipv6_addresses`; a tentative one is probed
again from the restore) and IPv6 neighbors (Ndp, `neighbors6`, STALE likewise), UDP
sockets with their queues (UdpSockets), TCP's ISN key and listeners, and its connections in a
hand-over (`connections=True`) but not in a checkpoint (tcp/layer.py says why), and the
counters.
What it drops: frames not yet taken, INCOMPLETE neighbor entries and their queues, reassembly
buffers, pending events and announcements — all of which senders recover from as from
ordinary loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import StackConfig
from .errors import StackError

if TYPE_CHECKING:
    from .stack import Stack

FORMAT = 1


def take(stack: "Stack", connections: bool = True, now: float = 0.0) -> dict:
    snap = {"format": FORMAT, "devices": stack.links.snapshot()}
    snap.update(stack.ip4.snapshot())           # addresses, routes, route_tables, ip4_ident
    snap["neighbors"] = stack.arp.snapshot()
    snap.update(stack.ip6.snapshot())           # ipv6_addresses
    snap["neighbors6"] = stack.ndp.snapshot()
    snap["routers6"] = stack.routers6.snapshot(now)
    snap["udp"] = stack.udp4.snapshot()
    snap["udp6"] = stack.udp6.snapshot()
    snap["counters"] = stack.ctr.to_dict()
    snap["tcp4"] = stack.tcp4.snapshot(connections)
    snap["tcp6"] = stack.tcp6.snapshot(connections)
    snap["filter"] = stack.filter.snapshot(now)
    return snap


def restore(cls, snap: dict, config: StackConfig | None, now: float) -> "Stack":
    if not isinstance(snap, dict) or snap.get("format") != FORMAT:
        raise StackError("bad_argument", "not a snapshot of this format")
    stack = cls(config)
    try:
        # Into the groups the layers already hold: a group is never replaced.
        for name, values in snap.get("counters", {}).items():
            group = stack.ctr.group(str(name))
            group.clear()
            group.update({str(k): int(v) for k, v in values.items()})
        stack.links.restore(snap["devices"])
        stack.ip4.restore(snap)
        stack.arp.restore(snap["neighbors"], now)
        if stack.cfg.ipv6:
            # Absent before IPv6: Ethernet devices then get their link-local addresses anew.
            stack.ip6.restore(snap)
            stack.ndp.restore(snap.get("neighbors6", []), now)
            stack.routers6.restore(snap.get("routers6", {}), now)
        stack.udp4.restore(snap.get("udp", {}))
        stack.udp6.restore(snap.get("udp6", {}))
        if "tcp4" in snap:
            stack.tcp4.restore(snap["tcp4"])
        if "tcp6" in snap:
            stack.tcp6.restore(snap["tcp6"])
        if snap.get("filter"):
            stack.filter.restore(snap["filter"], now)
    except (KeyError, TypeError, ValueError) as e:
        raise StackError("bad_argument", f"malformed snapshot: {e!r}") from None
    return stack
