"""State hand-over between two incarnations of the netstack process.

A snapshot holds plain msgpack types only. What it keeps: devices, addresses, static routes
(connected routes follow from addresses), resolved neighbor entries (restored STALE: the new
process has not confirmed them itself, RFC 4861 §7.3.3), UDP sockets with their queues, the
counters and the IP ident counter; TCP's ISN key and listeners, and its connections in a
hand-over (`connections=True`) but not in a checkpoint (tcp/layer.py says why). What it drops: frames not yet taken, INCOMPLETE neighbor
entries and their queues, reassembly buffers, pending events and announcements — all of which
senders recover from as from ordinary loss.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from .config import StackConfig
from .counters import CounterSet
from .device import LOOPBACK, Device
from .errors import StackError
from .route import STATIC, Route
from ..wire import MacAddr

if TYPE_CHECKING:
    from .stack import Stack

FORMAT = 1


def take(stack: "Stack", connections: bool = True) -> dict:
    return {
        "format": FORMAT,
        "devices": [{"name": d.name, "kind": d.kind,
                     "mac": None if d.mac is None else bytes(d.mac),
                     "mtu": d.mtu, "up": d.up, "forwarding": d.forwarding}
                    for d in stack.devs.values() if d.kind != LOOPBACK],
        "addresses": [{"device": d.name, "address": str(a)}
                      for d in stack.devs.values() for a in d.addresses
                      if not (d.kind == LOOPBACK and str(a) == "127.0.0.1/8")],
        "routes": [r.to_dict() for r in stack.ip4.routes if r.kind == STATIC],
        "neighbors": [{"device": dev, "address": str(ipaddress.IPv4Address(a)), "mac": bytes(mac)}
                      for dev, a, mac in stack.arp_neighbors.snapshot()],
        "udp": stack.udp4.snapshot(),
        "counters": stack.ctr.to_dict(),
        "ip4_ident": stack.ip4.next_ident,
        "tcp4": stack.tcp4.snapshot(connections),
    }


def restore(cls, snap: dict, config: StackConfig | None, now: float) -> "Stack":
    if not isinstance(snap, dict) or snap.get("format") != FORMAT:
        raise StackError("bad_argument", "not a snapshot of this format")
    stack = cls(config)
    try:
        stack.ctr = CounterSet.from_dict(snap.get("counters", {}))
        # The layers hold their counter groups; point them at the restored ones.
        _rebind_counters(stack)
        for d in snap["devices"]:
            mac = None if d["mac"] is None else MacAddr(bytes(d["mac"]))
            stack.devs[d["name"]] = Device(d["name"], d["kind"], mac, int(d["mtu"]),
                                           up=bool(d["up"]), forwarding=bool(d["forwarding"]))
        for a in snap["addresses"]:
            stack._add_address_quiet(stack.devs[a["device"]], ipaddress.IPv4Interface(a["address"]))
        for r in snap["routes"]:
            stack.ip4.routes.add(Route(ipaddress.IPv4Network(r["prefix"]),
                                       None if r["gateway"] is None
                                       else ipaddress.IPv4Address(r["gateway"]),
                                       r["device"], int(r["metric"]), STATIC))
        for n in snap["neighbors"]:
            if n["device"] in stack.devs:
                stack.arp_neighbors.restore_entry(n["device"],
                                                  int(ipaddress.IPv4Address(n["address"])),
                                                  MacAddr(bytes(n["mac"])), now)
        stack.udp4.restore(snap.get("udp", {}))
        stack.ip4.next_ident = int(snap.get("ip4_ident", 0)) & 0xFFFF
        if "tcp4" in snap:
            stack.tcp4.restore(snap["tcp4"])
    except (KeyError, TypeError, ValueError) as e:
        raise StackError("bad_argument", f"malformed snapshot: {e!r}") from None
    return stack


def _rebind_counters(stack: "Stack") -> None:
    g = stack.ctr.group
    stack._c = g("stack")
    stack.ip4.c = g("ipv4")
    stack.ip4.reassembly.counters = g("reassembly")
    stack.icmp.c = g("icmp")
    stack.arp.c = g("arp")
    stack.arp_neighbors.counters = g("neighbor")
    stack.udp4.counters = g("udp")
    stack.tcp4.c = g("tcp")
    stack.fast.invalidate()          # it caches device counter groups
