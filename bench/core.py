"""`./scripts/bench core`: the sans-I/O core's own cost per frame, beside a Python floor.

Drives `core.Stack` directly in one process with a fake clock: two Ethernet ports with
addresses and resolved neighbors, then

1. **ping**: a batch of echo requests to our address, replies taken with take_transmit;
2. **forward**: batches of UDP frames (64- and 1400-byte payloads) from port A to port B.

Each figure is µs per frame (median over interleaved rounds, the batch loop and
take_transmit included), printed beside the anchor measured in the same run: a bare
Python loop over the same frames that copies each frame (`bytes`) and unpacks its
Ethernet and IPv4 headers with `struct` — the floor of any per-frame loop in Python.
The ratio (core / floor) moves less than the µs figures when the machine is shared.

Usage: ``python -m bench.core [--quick] [--json FILE] [--profile]``; scripts call ``run(quick)``.
"""
from __future__ import annotations

import cProfile
import struct
import sys
import time
from ipaddress import IPv4Address, IPv4Interface

from components.netstack.core import Stack, StackConfig
from components.netstack.wire import (ARP_REQUEST, BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4,
                                      PROTO_ICMP, PROTO_UDP, ZERO_MAC, ArpPacket, MacAddr,
                                      build_echo, build_ethernet, build_ipv4, build_udp)
from components.netstack.wire.icmpv4 import ICMP_ECHO_REQUEST

from . import common
from .common import Table, fmt_ratio, log, median, ratio

MAC_A = MacAddr(bytes.fromhex("020000000001"))      # our port A
MAC_B = MacAddr(bytes.fromhex("020000000101"))      # our port B
HOST_A = MacAddr(bytes.fromhex("0200000000aa"))     # a peer on A's LAN
HOST_B = MacAddr(bytes.fromhex("0200000001bb"))     # a peer on B's LAN
IP_A, IP_B = IPv4Address("10.0.0.1"), IPv4Address("192.168.1.1")
PEER_A, PEER_B = IPv4Address("10.0.0.2"), IPv4Address("192.168.1.2")
NOW = 1.0
BATCH = 256                   # a driver's largest batch (docs/architecture.md)
AIM_PING_US = 8.0             # issue 8: the core's cost per ping answered
AIM_FORWARD_US = 5.0          # ... and per frame forwarded

_ETH_IP = struct.Struct("!6s6sHBBHHHBBH4s4s")


def make_router() -> Stack:
    """Two ports with addresses, each with one resolved neighbor."""
    s = Stack(StackConfig(random_seed=1, announce_num=1, strict=True))
    s.add_device("a", mac=MAC_A, now=0.0)
    s.add_device("b", mac=MAC_B, now=0.0)
    s.add_address("a", IPv4Interface(f"{IP_A}/24"), 0.0)
    s.add_address("b", IPv4Interface(f"{IP_B}/24"), 0.0)
    for dev, hmac, hip, ours in (("a", HOST_A, PEER_A, IP_A), ("b", HOST_B, PEER_B, IP_B)):
        # The peer asks who has our address: we learn it (RFC 826 merge) and answer.
        req = ArpPacket(ARP_REQUEST, hmac, hip, ZERO_MAC, ours).build()
        s.receive(dev, build_ethernet(BROADCAST_MAC, hmac, ETHERTYPE_ARP, req), 0.0)
    s.take_transmit()
    s.take_events()
    return s


def ping_frames(n: int) -> list[bytes]:
    return [build_ethernet(MAC_A, HOST_A, ETHERTYPE_IPV4,
                           build_ipv4(PEER_A, IP_A, PROTO_ICMP,
                                      build_echo(ICMP_ECHO_REQUEST, 7, i, bytes(56)), ident=i))
            for i in range(n)]


def udp_frames(n: int, size: int) -> list[bytes]:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    return [build_ethernet(MAC_A, HOST_A, ETHERTYPE_IPV4,
                           build_ipv4(PEER_A, PEER_B, PROTO_UDP,
                                      build_udp(PEER_A, PEER_B, 40000, 9, payload), ident=i))
            for i in range(n)]


def floor_loop(frames: list[bytes]) -> int:
    """The anchor: copy each frame and unpack its Ethernet + IPv4 headers."""
    unpack = _ETH_IP.unpack_from
    ttl_sum = 0
    for f in frames:
        h = unpack(bytes(f))
        ttl_sum += h[8]
    return ttl_sum


def _core_batch(stack: Stack, dev: str, out: str, frames: list[bytes]) -> None:
    stack.receive_batch(dev, frames, NOW)
    sent = stack.take_transmit()
    if len(sent.get(out, ())) != len(frames):    # a broken path must not read as a fast one
        raise RuntimeError(f"expected {len(frames)} frames on {out}, got "
                           f"{ {d: len(f) for d, f in sent.items()} }; "
                           f"counters {stack.counters()}")


def _time_us_per_frame(fn, frames: list[bytes], batches: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(batches):
        fn(frames)
    return (time.perf_counter_ns() - t0) / (batches * len(frames)) / 1000.0


def run(quick: bool = False, profile: bool = False) -> dict:
    rounds = 3 if quick else 9
    batches = 4 if quick else 20
    stack = make_router()
    cases = {
        "ping": (ping_frames(BATCH), "a", "a"),
        "forward_64": (udp_frames(BATCH, 64), "a", "b"),
        "forward_1400": (udp_frames(BATCH, 1400), "a", "b"),
    }
    samples: dict[str, dict[str, list[float]]] = {k: {"core": [], "floor": []} for k in cases}
    for frames, dev, out in cases.values():            # warm-up: caches, neighbor state
        _core_batch(stack, dev, out, frames)
    for _ in range(rounds):
        for name, (frames, dev, out) in cases.items():
            samples[name]["core"].append(_time_us_per_frame(
                lambda fs, d=dev, o=out: _core_batch(stack, d, o, fs), frames, batches))
            samples[name]["floor"].append(_time_us_per_frame(floor_loop, frames, batches))
    res: dict = {"batch": BATCH, "rounds": rounds, "batches_per_round": batches}
    for name, s in samples.items():
        core, floor = median(s["core"]), median(s["floor"])
        res[name] = {"core_us": round(core, 3), "floor_us": round(floor, 3),
                     "ratio": round(ratio(core, floor), 2)}
    if profile:
        res["profile"] = {}
        for name, (frames, dev, out) in cases.items():
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(batches):
                _core_batch(stack, dev, out, frames)
            prof.disable()
            res["profile"][name] = common.profile_text(prof, top=20)
    return res


def main(argv: list[str] | None = None) -> int:
    p = common.arg_parser(__doc__.splitlines()[0], prog="bench.core")
    p.add_argument("--profile", action="store_true", help="also print a cProfile table per case")
    args = p.parse_args(argv)
    log("bench core: driving core.Stack in-process with a fake clock ...")
    res = run(args.quick, args.profile)
    aims = {"ping": AIM_PING_US, "forward_64": AIM_FORWARD_US, "forward_1400": AIM_FORWARD_US}
    labels = {"ping": "per ping answered", "forward_64": "per frame forwarded, 64 B",
              "forward_1400": "per frame forwarded, 1400 B"}
    t = Table("core cost (µs)", "qnet core", "floor: copy+unpack", "core/floor", "aim")
    for name, label in labels.items():
        r = res[name]
        met = "met" if r["core_us"] <= aims[name] else "missed"
        t.add(label, f"{r['core_us']:.2f}", f"{r['floor_us']:.3f}", fmt_ratio(r["ratio"]),
              f"≤ {aims[name]:g} µs: {met}")
    print(t.render())
    print(f"(batches of {res['batch']} frames, median of {res['rounds']} rounds "
          f"of {res['batches_per_round']} batches)")
    for name, text in res.get("profile", {}).items():
        print(f"\n-- profile: {name}\n{text}")
    if args.json:
        res = dict(res, machine=common.machine_info())
        common.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
