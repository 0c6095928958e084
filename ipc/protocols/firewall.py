"""The firewall component's interface (qnet.firewall): the rule set as its owner keeps it.

The firewall holds the rules in the text format of components/firewall/rules.py (docs/
firewall.md), in its file; every change is compiled, installed in netstack (qnet.filter) and
only then written to the file and answered. A change netstack refuses changes nothing.
"""
from ..decl import Method, Protocol, Version
from ..types import Field, Int, List, Map, Optional, Str, U32, U64, struct
from .filter import CONNECTION, HOOK, VERDICT

TOKEN = Str(max_len=256)
FW_ERRORS = ("bad_argument", "not_found", "netstack_down", "limit")

FW_RULE_ROW = struct(
    "FirewallRule",
    Field("number", U32, doc="1-based, as `qnet fw del` takes it"),
    Field("hook", HOOK),
    Field("text", Str(max_len=1024)),
    Field("packets", U64),
    Field("bytes", U64),
)

FW_LISTING = struct(
    "FirewallListing",
    Field("policies", Map(VERDICT, max_len=5)),
    Field("sets", Map(U32, max_len=1024), doc="set name -> number of elements"),
    Field("rules", List(FW_RULE_ROW, max_len=65536)),
    Field("policy_drops", Map(U64, max_len=5)),
    Field("generation", U32, doc="netstack's install count"),
    Field("file", Str(max_len=4096)),
    Field("installed", Int(0, 1), doc="1 when netstack enforces exactly this rule set"),
)

FIREWALL = Protocol(
    "qnet.firewall", Version(1, 0),
    doc="The firewall: owns the rule set and its file, installs it in netstack (qnet.filter) "
        "atomically, reinstalls it when netstack restarts.",
    methods=(
        Method("add", args=(Field("tokens", List(TOKEN, max_len=256)),
                            Field("position", Optional(U32), default=None,
                                  doc="insert before this rule number; None: append")),
               result=FW_RULE_ROW, errors=FW_ERRORS,
               doc="Add one rule, written as on a rule-file line, split into tokens."),
        Method("delete", args=(Field("number", U32),), result=Str(max_len=1024), errors=FW_ERRORS,
               doc="Delete rule `number` (1-based, as `list` shows); answers its text."),
        Method("policy", args=(Field("hook", HOOK), Field("verdict", VERDICT)), result=U32,
               errors=FW_ERRORS, doc="Set a hook's policy."),
        Method("set_add", args=(Field("name", Str(max_len=32)),
                                Field("elements", List(TOKEN, max_len=1 << 20))),
               result=U32, errors=FW_ERRORS, doc="Add elements to a named set (made if new); "
                                                 "answers its size."),
        Method("load", args=(Field("text", Str(max_len=64 << 20)),
                             Field("source", Str(max_len=4096), default="")),
               result=U32, errors=FW_ERRORS,
               doc="Replace the whole rule set with a rule file's text, atomically: refused "
                   "whole, with the line and field at fault, if anything in it is bad. Answers "
                   "the rule count."),
        Method("save", args=(), result=Str(max_len=64 << 20), doc="The rule set as rule-file text."),
        Method("list", args=(), result=FW_LISTING, errors=FW_ERRORS,
               doc="The rule set with netstack's per-rule counters."),
        Method("conntrack", args=(Field("limit", Int(1, 1 << 20), default=1000),),
               result=struct("FirewallConntrack", Field("entries", U32), Field("max_entries", U32),
                             Field("connections", List(CONNECTION, max_len=1 << 20)),
                             Field("counters", Map(U64, max_len=64))),
               errors=FW_ERRORS, doc="netstack's tracked connections."),
        Method("log", args=(Field("after", U64, default=0), Field("limit", Int(1, 10000), default=100)),
               result=List(struct("FirewallLogLine", Field("seq", U64), Field("time", Int(0, 1 << 62)),
                                  Field("text", Str(max_len=512))), max_len=10000),
               doc="Lines of the `log` action (kept by the firewall, also in its log file)."),
    ),
)
