"""netstack's packet filter (qnet.filter): the rule set that its data path enforces.

The firewall component owns the rules (components/firewall: the text format, the file, the
CLI); what it installs here is the compiled form below, validated again on arrival. netstack
evaluates it in its own process at five hooks — never an IPC per packet:

    ingress   every IPv4 packet received on a port, before routing (destination NAT here)
    input     packets for one of our addresses (local delivery)
    forward   packets routed from one port to another
    output    packets that netstack's own sockets send (destination NAT here)
    egress    every IPv4 packet leaving on a port, after routing (source NAT here)

Within a hook, rules apply in order; the first accept, drop, reject or NAT verdict ends the
hook, `log`, `mark` and `table` go on to the next rule, and the hook's policy decides a packet
no rule ended. `install` replaces the whole rule set between two packets: never neither.

`table N` (1.1; ingress and output only) picks the routing table (qnet.netstack's numbered
tables) that the packet's destination is looked up in first; main where it has no route.
"""
from ..decl import Method, Protocol, Version
from ..types import (ANY, BOOL, IPV4, NAME, Enum, Field, Int, List, Map, Optional, Str, U8, U16,
                     U32, U64, struct)
from .netstack import ROUTE_TABLE

HOOK = Enum("FilterHook", ("ingress", "input", "forward", "output", "egress"))
HOOKS = ("ingress", "input", "forward", "output", "egress")
VERDICT = Enum("FilterPolicy", ("accept", "drop"))
L4 = Enum("FilterProto", ("tcp", "udp", "icmp"))
CT_STATE = Enum("CtState", ("new", "established", "related", "invalid"))
ACTION = Enum("FilterAction", ("accept", "drop", "reject", "log", "mark", "masquerade", "snat",
                               "dnat", "redirect", "table"))
# Socket marks: four independent domains (qnet.socket's set_mark; SO_MARK is domain 1).
MARK_DOMAINS = 4
MARK_DOMAIN = Int(1, MARK_DOMAINS)
# An address match: prefixes written as text ("10.0.0.0/8", "192.0.2.1" = /32).
PREFIX_TEXT = Str(max_len=18, min_len=7, pattern=r"^[0-9.]+(/[0-9]{1,2})?$", label="prefix")
SET_NAME = Str(max_len=32, min_len=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", label="set name")
MAX_RULES = 65536
MAX_SET_ELEMENTS = 1 << 20

PORT_RANGE = struct(
    "PortRange",
    Field("lo", U16),
    Field("hi", U16),
)

MARK_MATCH = struct(
    "MarkMatch",
    Field("domain", MARK_DOMAIN, default=1),
    Field("value", U32),
)

RULE = struct(
    "FilterRule",
    Field("hook", HOOK),
    Field("proto", Optional(L4), default=None),
    Field("sport", Optional(PORT_RANGE), default=None, doc="tcp/udp only"),
    Field("dport", Optional(PORT_RANGE), default=None, doc="tcp/udp only"),
    Field("saddr", List(PREFIX_TEXT, max_len=256), default=[], doc="any of these prefixes"),
    Field("saddr_set", Optional(SET_NAME), default=None, doc="or: a member of this named set"),
    Field("daddr", List(PREFIX_TEXT, max_len=256), default=[]),
    Field("daddr_set", Optional(SET_NAME), default=None),
    Field("iif", Optional(NAME), default=None, doc="the receiving port (not at output)"),
    Field("oif", Optional(NAME), default=None, doc="the sending port (not at ingress/input)"),
    Field("icmp_type", Optional(U8), default=None, doc="icmp only"),
    Field("ct_state", List(CT_STATE, max_len=4), default=[], doc="any of these states"),
    Field("mark", Optional(MARK_MATCH), default=None),
    Field("limit_rate", Optional(Int(1, 1 << 30)), default=None,
          doc="packets per `limit_per` seconds; beyond it the rule does not match"),
    Field("limit_per", Int(1, 86400), default=1),
    Field("limit_burst", Int(1, 1 << 30), default=5),
    Field("action", ACTION),
    Field("set_mark", Optional(MARK_MATCH), default=None, doc="action mark: the mark to set"),
    Field("to_address", Optional(IPV4), default=None, doc="snat/dnat: the new address"),
    Field("to_port", Optional(U16), default=None, doc="snat/dnat/redirect: the new port"),
    Field("table", Optional(ROUTE_TABLE), default=None, doc="1.1: action table: the routing table"),
    Field("text", Str(max_len=1024), default="", doc="the rule as written, for listings"),
)

RULESET = struct(
    "FilterRuleset",
    Field("policies", Map(VERDICT, max_len=5), default={}, doc="hook -> policy; absent: accept"),
    Field("sets", Map(List(PREFIX_TEXT, max_len=MAX_SET_ELEMENTS), max_len=1024), default={}),
    Field("rules", List(RULE, max_len=MAX_RULES), default=[]),
    Field("source", Str(max_len=256), default="", doc="where it came from, for status"),
)

RULE_COUNTERS = struct(
    "FilterRuleCounters",
    Field("index", U32, doc="0-based position in the installed rule list"),
    Field("packets", U64),
    Field("bytes", U64),
)

INSTALLED = struct(
    "FilterInstalled",
    Field("generation", U32, doc="counts installs in this netstack's life (kept across restarts)"),
    Field("rules", U32),
    Field("set_elements", U32),
)

CONNECTION = struct(
    "Connection",
    Field("proto", Str(max_len=8)),
    Field("src", IPV4), Field("sport", U16), Field("dst", IPV4), Field("dport", U16),
    Field("reply_src", IPV4), Field("reply_sport", U16),
    Field("reply_dst", IPV4), Field("reply_dport", U16),
    Field("state", Str(max_len=16), doc="tcp: its conntrack state; else new or established"),
    Field("assured", BOOL),
    Field("expires_in", Int(0, 1 << 31), doc="seconds"),
    Field("packets", U64), Field("bytes", U64),
)

FILTER_ERRORS = ("bad_argument", "unknown_set", "limit")

FILTER = Protocol(
    "qnet.filter", Version(1, 1),
    doc="netstack's packet filter and connection tracking: the compiled rule set its data path "
        "enforces at five hooks (ingress, input, forward, output, egress), installed whole by the "
        "firewall component. Kept across netstack's restarts (in its snapshot).",
    methods=(
        Method("install", args=(Field("ruleset", RULESET),),
               result=INSTALLED, errors=FILTER_ERRORS,
               doc="Replace the rule set atomically: each packet sees the old one or the new one. "
                   "Refused whole (the old one stays) if any rule is bad."),
        Method("get", args=(), result=struct(
                   "FilterState",
                   Field("generation", U32),
                   Field("ruleset", RULESET),
                   Field("counters", List(RULE_COUNTERS, max_len=MAX_RULES)),
                   Field("policy_drops", Map(U64, max_len=5), doc="hook -> packets its policy dropped")),
               doc="The installed rule set with its per-rule counters."),
        Method("conntrack", args=(Field("limit", Int(1, 1 << 20), default=1000),),
               result=struct("ConntrackTable",
                             Field("entries", U32), Field("max_entries", U32),
                             Field("connections", List(CONNECTION, max_len=1 << 20)),
                             Field("counters", Map(U64, max_len=64))),
               doc="Tracked connections (at most `limit`) and the table's counters."),
        Method("conntrack_flush", args=(), result=U32, doc="Forget every tracked connection."),
        Method("log", args=(Field("after", U64, default=0), Field("limit", Int(1, 10000), default=100)),
               result=List(struct("FilterLogLine", Field("seq", U64), Field("time", Int(0, 1 << 62)),
                                  Field("text", Str(max_len=512))), max_len=10000),
               doc="Lines the `log` action wrote, after sequence number `after` (a bounded ring)."),
    ),
)
