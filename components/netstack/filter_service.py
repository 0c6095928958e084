"""netstack's qnet.filter: installing the firewall's rule set, listing connections and the
`log` action's lines. The filter itself (core/filter.py) runs inside the core's data path;
this is only its control plane."""
from __future__ import annotations

import time
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from components.netstack.core import StackError
from ipc import errors
from ipc.decl import to_plain

if TYPE_CHECKING:
    from components.netstack.process import Netstack

_PROTO = {6: "tcp", 17: "udp", 1: "icmp"}


class FilterService:
    """Handlers of qnet.filter."""

    def __init__(self, ns: "Netstack"):
        self.ns = ns

    @property
    def filter(self):
        return self.ns.stack.filter

    def install(self, ruleset):
        plain = to_plain(ruleset)
        try:
            generation, rules, elements = self.filter.install(plain)
        except StackError as exc:
            code = exc.code if exc.code in ("bad_argument", "unknown_set") else "bad_argument"
            raise errors.RemoteError(str(exc), code=code) from None
        self.ns.checkpoint()      # a crash of netstack comes back with this rule set
        return {"generation": generation, "rules": rules, "set_elements": elements}

    def get(self):
        f = self.filter
        counters = [{"index": i, "packets": p, "bytes": b} for i, p, b in f.rule_counters()]
        return {"generation": f.generation, "ruleset": f.ruleset, "counters": counters,
                "policy_drops": {name: f.policy_drops[i] for i, name in
                                 enumerate(("ingress", "input", "forward", "output", "egress"))}}

    def conntrack(self, limit):
        ct = self.filter.conntrack
        now = time.monotonic()
        rows = []
        for d in ct.describe(now):
            if len(rows) >= limit:
                break
            rows.append({"proto": _PROTO.get(d["proto"], str(d["proto"])),
                         "src": IPv4Address(d["src"]), "sport": d["sport"],
                         "dst": IPv4Address(d["dst"]), "dport": d["dport"],
                         "reply_src": IPv4Address(d["reply_src"]), "reply_sport": d["reply_sport"],
                         "reply_dst": IPv4Address(d["reply_dst"]), "reply_dport": d["reply_dport"],
                         "state": str(d["state"]), "assured": bool(d["assured"]),
                         "expires_in": max(0, int(d["expires_in"])),
                         "packets": int(d["packets"]), "bytes": int(d["bytes"])})
        counters = {k: int(v) for k, v in self.ns.stack.ctr.group("conntrack").items()}
        return {"entries": len(ct), "max_entries": ct.max_entries, "connections": rows,
                "counters": counters}

    def conntrack_flush(self):
        n = self.filter.conntrack.flush()
        return n

    def log(self, after, limit):
        # The core's clock is monotonic; lines carry wall-clock milliseconds.
        offset = time.time() - time.monotonic()
        return [{"seq": seq, "time": int((t + offset) * 1000), "text": text}
                for seq, t, text in self.filter.take_log(after, limit)]
