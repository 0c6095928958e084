"""Random rule sets and random frames through the core (issue 11): rule texts drawn over the
test topology's own ports, addresses and protocols (so that rules match and NAT happens),
read by the firewall's parser, installed in a Stack, then random and mutated frames from both
sides with time advancing. Nothing raises (the strict config raises internal errors too),
the conntrack table stays within its bound, and the state survives a snapshot."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP

from components.firewall.rules import parse_text
from components.netstack.core import Stack

from .test_fuzz import frames
from .util import A, B, HOST_A, HOST_B, IP0, IP1, MAC0, MAC1, ip_frame, learn, make_stack

MAX_CT = 16
HOOKS = ("ingress", "input", "forward", "output", "egress")
ADDRS = [A, B, IP0, IP1, "10.0.0.0/24", "10.0.1.0/24", "0.0.0.0/0", "@s"]


def _sometimes(draw) -> bool:
    return draw(st.integers(0, 3)) == 0      # few matches per rule: rules that do match


@st.composite
def rule_line(draw) -> str:
    hook = draw(st.sampled_from(HOOKS))
    words = [hook]
    if hook not in ("output",) and _sometimes(draw):
        words += ["iif", draw(st.sampled_from(["eth0", "eth1"]))]
    if hook in ("forward", "output", "egress") and _sometimes(draw):
        words += ["oif", draw(st.sampled_from(["eth0", "eth1"]))]
    for field in ("saddr", "daddr"):
        if _sometimes(draw):
            words += [field, draw(st.sampled_from(ADDRS))]
    proto = draw(st.sampled_from([None, None, "tcp", "udp", "icmp"]))
    if proto:
        words += ["proto", proto]
    if proto in ("tcp", "udp") and _sometimes(draw):
        words += ["dport", draw(st.sampled_from(["53", "80", "1-1024", "4000"]))]
    if proto == "icmp" and _sometimes(draw):
        words += ["icmp", "type", draw(st.sampled_from(["echo-request", "echo-reply"]))]
    if _sometimes(draw):
        words += ["ct", "state", draw(st.sampled_from(
            ["new", "established", "related,established", "invalid"]))]
    if _sometimes(draw):
        words += ["mark", draw(st.sampled_from(["1", "2:7"]))]
    if draw(st.integers(0, 4)) == 0:
        words += ["limit", "3/second", "burst", "2"]
    actions = ["accept", "drop", "reject", "log", "mark 3", "mark 2:7"]
    ported = proto in ("tcp", "udp")
    if hook == "egress":
        actions += ["masquerade", f"snat {IP1}", f"snat {IP0}" + (":2000" if ported else "")]
    if hook in ("ingress", "output"):
        actions += [f"dnat {B}" + (":80" if ported else ""), "table 10", "table 11"]
    if hook == "ingress" and ported:
        actions += ["redirect 7"]
    return " ".join(words + [draw(st.sampled_from(actions))])


@st.composite
def ruleset(draw) -> str:
    lines = [f"policy {h} {draw(st.sampled_from(['accept', 'accept', 'drop']))}"
             for h in draw(st.lists(st.sampled_from(HOOKS), unique=True))]
    lines.append(f"set s {A} 10.0.1.0/24")
    lines += draw(st.lists(rule_line(), max_size=8))
    return "\n".join(lines) + "\n"


def flow_frame(i: int, back: bool, flags: str) -> bytes:
    """A well-formed packet of a few flows between A (eth0) and B (eth1), either way."""
    kind = i % 3
    src, dst, host, mac = (B, A, HOST_B, MAC1) if back else (A, B, HOST_A, MAC0)
    if kind == 0:
        l4 = TCP(sport=80 if back else 4000 + i % 2, dport=4000 + i % 2 if back else 80,
                 flags=flags, seq=1000 + i, ack=1 if "A" in flags else 0)
    elif kind == 1:
        l4 = UDP(sport=53 if back else 4000, dport=4000 if back else 53) / b"x"
    else:
        l4 = ICMP(type=0 if back else 8, id=7, seq=i)
    return ip_frame(host, mac, IP(src=src, dst=dst) / l4)


flows = st.builds(lambda i, back, flags: ("eth1" if back else "eth0", flow_frame(i, back, flags)),
                  st.integers(0, 11), st.booleans(),
                  st.sampled_from(["S", "SA", "A", "FA", "R", "PA"]))
packets = st.one_of(st.tuples(st.sampled_from(["eth0", "eth1"]), frames), flows, flows)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=ruleset(), batch=st.lists(st.tuples(packets, st.floats(0, 3)), max_size=25))
def test_random_rule_sets_and_frames_never_raise_and_conntrack_stays_bounded(text, batch):
    s = make_stack(conntrack_max=MAX_CT)
    learn(s, "eth0", HOST_A, A, IP0)
    learn(s, "eth1", HOST_B, B, IP1)
    s.set_forwarding("eth0", True)
    s.set_forwarding("eth1", True)
    s.add_route("0.0.0.0/0", gateway=A, table=10)      # table 11 does not exist: main's
    s.filter.install(parse_text(text).to_wire("fuzz.rules"))
    now = 1.0
    for (dev, frame), dt in batch:
        now += dt
        s.receive(dev, frame, now)      # strict: an internal error raises here
        s.poll(now)
        assert len(s.filter.conntrack) <= MAX_CT
        assert s.counters()["stack"].get("internal_errors", 0) == 0
    s.take_transmit()
    again = Stack.restore(s.snapshot(now=now), s.cfg, now=now)
    assert len(again.filter.conntrack) == len(s.filter.conntrack)
    assert again.filter.ruleset == s.filter.ruleset
