"""`qnet fw`: the firewall's rule set, in the idiom of nftables (docs/firewall.md)."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .cli import COMMAND_MODULES, CliError, EXIT_USAGE, out_json, table
from .cli_net import provider_call

HOOKS = ("ingress", "input", "forward", "output", "egress")


def fw_call(args, method: str, timeout: float = 15.0, **kw):
    from ipc.protocols.firewall import FIREWALL
    return provider_call(args, FIREWALL, "firewall", method, timeout, **kw)


def _count(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def cmd_fw(args) -> int:
    sub = args.fw_cmd
    if sub == "add":
        if not args.rule:
            raise CliError("qnet fw add: say HOOK [MATCH ...] ACTION, e.g. "
                           "'qnet fw add input proto tcp dport 22 accept'", EXIT_USAGE)
        row = fw_call(args, "add", tokens=list(args.rule), position=args.before)
        print(f"rule {row['number']}: {row['text']}")
        return 0
    if sub == "del":
        text = fw_call(args, "delete", number=args.number)
        print(f"deleted rule {args.number}: {text}")
        return 0
    if sub == "policy":
        fw_call(args, "policy", hook=args.hook, verdict=args.verdict)
        print(f"policy {args.hook} {args.verdict}")
        return 0
    if sub == "load":
        try:
            with open(args.file, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise CliError(f"qnet fw load: cannot read {args.file}: {e.strerror}") from None
        n = fw_call(args, "load", text=text, source=os.path.abspath(args.file))
        print(f"loaded {n} rules from {args.file}")
        return 0
    if sub == "save":
        text = fw_call(args, "save")
        if args.file == "-":
            sys.stdout.write(text)
            return 0
        tmp = args.file + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, args.file)
        except OSError as e:
            raise CliError(f"qnet fw save: cannot write {args.file}: {e.strerror}") from None
        print(f"saved to {args.file}")
        return 0
    if sub == "set":
        n = fw_call(args, "set_add", name=args.name, elements=list(args.elements))
        print(f"set {args.name}: {n} elements")
        return 0
    if sub == "conntrack":
        t = fw_call(args, "conntrack", limit=args.limit)
        if args.json:
            out_json(t)
            return 0
        rows = [{"proto": c["proto"], "state": c["state"],
                 "orig": f"{c['src']}:{c['sport']} -> {c['dst']}:{c['dport']}",
                 "reply": f"{c['reply_src']}:{c['reply_sport']} -> {c['reply_dst']}:{c['reply_dport']}",
                 "expires": f"{c['expires_in']} s", "packets": c["packets"],
                 "flags": "assured" if c["assured"] else ""} for c in t["connections"]]
        print(table(rows, [("proto", "PROTO"), ("state", "STATE"), ("orig", "ORIGINAL"),
                           ("reply", "REPLY"), ("expires", "EXPIRES"), ("packets", "PACKETS"),
                           ("flags", "")]))
        refused = t["counters"].get("refused_full", 0)
        print(f"{t['entries']} of {t['max_entries']} tracked" +
              (f"; {refused} new connections refused (table full)" if refused else ""))
        return 0
    if sub == "log":
        after = 0
        deadline = time.monotonic() + args.follow if args.follow else 0
        while True:
            lines = fw_call(args, "log", after=after, limit=10000)
            for x in lines:
                stamp = time.strftime("%H:%M:%S", time.localtime(x["time"] / 1000))
                print(f"{stamp} {x['text']}", flush=True)
                after = x["seq"]
            if not args.follow or time.monotonic() >= deadline:
                return 0
            time.sleep(0.5)
    # list
    st = fw_call(args, "list")
    if args.json:
        out_json(st)
        return 0
    for hook in HOOKS:
        rows = [r for r in st["rules"] if r["hook"] == hook]
        policy = st["policies"].get(hook, "accept")
        if not rows and policy == "accept":
            continue
        drops = st["policy_drops"].get(hook, 0)
        print(f"hook {hook} (policy {policy}" + (f", {drops} dropped" if drops else "") + ")")
        for r in rows:
            print(f"  {r['number']:>4}  {r['text']:<60}  packets {r['packets']} bytes {_count(r['bytes'])}")
    for name, n in sorted(st["sets"].items()):
        print(f"set {name}: {n} elements")
    if not st["rules"] and all(p == "accept" for p in st["policies"].values()):
        print("no rules; every hook accepts")
    if not st["installed"]:
        print("note: netstack does not enforce this rule set yet (the firewall retries)")
    return 0


def add_commands(sub) -> None:
    from .cli import _Parser
    p = sub.add_parser("fw", help="the firewall: rules, policies, sets, conntrack, log")
    ps = p.add_subparsers(dest="fw_cmd", metavar="list|add|del|policy|load|save|set|conntrack|log",
                          parser_class=_Parser)
    a = ps.add_parser("add", help="qnet fw add [--before N] HOOK [MATCH ...] ACTION")
    a.add_argument("--before", type=int, default=None, metavar="N",
                   help="insert before rule N (default: append)")
    a.add_argument("rule", nargs=argparse.REMAINDER,
                   help="HOOK (ingress|input|forward|output|egress), matches (proto, dport, sport, "
                        "saddr, daddr, iif, oif, icmp type, ct state, mark, limit), then the action "
                        "(accept|drop|reject|log|mark|masquerade|snat|dnat|redirect)")
    d = ps.add_parser("del", help="qnet fw del N (the number 'qnet fw list' shows)")
    d.add_argument("number", type=int)
    po = ps.add_parser("policy", help="qnet fw policy HOOK accept|drop")
    po.add_argument("hook", choices=HOOKS)
    po.add_argument("verdict", choices=("accept", "drop"))
    lo = ps.add_parser("load", help="qnet fw load FILE: replace the rule set atomically")
    lo.add_argument("file")
    sa = ps.add_parser("save", help="qnet fw save FILE ('-': standard output)")
    sa.add_argument("file")
    st = ps.add_parser("set", help="qnet fw set add NAME ELEMENT...")
    st.add_argument("set_cmd", choices=("add",))
    st.add_argument("name")
    st.add_argument("elements", nargs="+")
    ls = ps.add_parser("list", help="the rules with their numbers and counters")
    ls.add_argument("--json", action="store_true")
    ct = ps.add_parser("conntrack", help="tracked connections")
    ct.add_argument("--json", action="store_true")
    ct.add_argument("--limit", type=int, default=1000)
    lg = ps.add_parser("log", help="what the log action recorded")
    lg.add_argument("--follow", type=float, default=0.0, metavar="SECONDS",
                    help="keep printing new lines for this long")
    p.set_defaults(func=cmd_fw, fw_cmd="list", json=False)


COMMAND_MODULES.append(add_commands)
