"""The packet filter: the firewall's rule set, compiled, evaluated at five hooks.

The rule set arrives whole (ipc/protocols/filter.py RULESET as plain data, from the firewall
component or a snapshot) and `install` compiles it before swapping it in: a packet sees the
old rule set or the new one, never neither, and a bad one is refused with the old one kept.

Hooks, and where the IPv4 layer and the fast path call them:

    ingress   a packet received on a port (not lo), after the martian checks, before routing:
              connection tracking first, then the rules; destination NAT here
    input     to one of our addresses; the packet's connection is confirmed after it
    forward   routed from one port to another
    output    sent by our own sockets and layers (not through lo): connection tracking first;
              destination NAT here
    egress    leaving on a port, forwarded or our own; source NAT here; confirmed after it

Within a hook rules apply in order. accept, drop and reject end the hook (reject answers a
TCP segment with a RST and anything else with ICMP port unreachable, RFC 1812 §5.2.7.1),
and so do the NAT actions (the packet goes on translated); `log`, `mark` and `table` go on
to the next rule; a packet no rule ended gets the hook's policy. NAT rules see only a connection's
first packet (as Linux's nat table): the rest of the connection follows the translation
recorded in its conntrack entry, un-done for replies.

Traffic through lo is neither filtered nor tracked, and neither are IP fragments past the
first (they match no port and no ct state). Marks belong to the connection (conntrack entry):
`mark D:N` sets one, `mark D:N` as a match reads it, so a reply carries its request's marks.

Policy routing: `table N` (ingress and output only, before routing) records in the packet's
Meta the routing table IPv4 looks its destination up in first (route.py RoutingTables; a later
`table` rule overrides an earlier one). It belongs to the packet, not the connection: to route
a whole connection by a table, match what its packets share (`mark`, which is the
connection's). While any `table` rule is installed the fast path declines every packet.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from .conntrack import ESTABLISHED, INVALID, NEW, ORIGINAL, RELATED, Conntrack
from .errors import StackError
from .nat import error_translation, rewrite_icmp_error, rewrite_ipv4
from .route import MAX_TABLE

INGRESS, INPUT, FORWARD, OUTPUT, EGRESS = range(5)
HOOK_NAMES = ("ingress", "input", "forward", "output", "egress")
_HOOK = {n: i for i, n in enumerate(HOOK_NAMES)}
_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
_PROTO_NAME = {6: "tcp", 17: "udp", 1: "icmp"}
_CT = {"new": NEW, "established": ESTABLISHED, "related": RELATED, "invalid": INVALID}
_CT_NAME = {v: k for k, v in _CT.items()}
MARK_DOMAINS = 4

# Verdicts of a hook.
ACCEPT, DROP, REJECT = 0, 1, 2
# Actions, as compiled (the NAT actions last: run() tells them apart by `>= A_MASQ`).
A_ACCEPT, A_DROP, A_REJECT, A_LOG, A_MARK, A_TABLE, A_MASQ, A_SNAT, A_DNAT, A_REDIRECT = range(10)
_ACTION = {"accept": A_ACCEPT, "drop": A_DROP, "reject": A_REJECT, "log": A_LOG, "mark": A_MARK,
           "table": A_TABLE, "masquerade": A_MASQ, "snat": A_SNAT, "dnat": A_DNAT,
           "redirect": A_REDIRECT}
_NAT_ACTIONS = (A_MASQ, A_SNAT, A_DNAT, A_REDIRECT)
# Where each action may stand (the firewall's parser says so too; this is the last word).
# redirect only at ingress: our own traffic through lo is not tracked, so a redirect of it
# could not be un-done for the reply.
# table before routing: at ingress (forwarded packets) and output (our own).
_ACTION_HOOKS = {A_MASQ: (EGRESS,), A_SNAT: (EGRESS,), A_DNAT: (INGRESS, OUTPUT),
                 A_REDIRECT: (INGRESS,), A_TABLE: (INGRESS, OUTPUT)}
LOG_LINES = 1024


class Meta:
    """One packet as the rules see it, built once per packet and carried across its hooks."""
    __slots__ = ("iif", "oif", "src", "dst", "proto", "sport", "dport", "itype", "length",
                 "entry", "dir", "ct", "marks", "raw", "table")

    def __init__(self, iif, src, dst, proto, sport, dport, itype, length, raw) -> None:
        self.iif = iif
        self.oif = None
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.itype = itype
        self.length = length
        self.entry = None
        self.dir = ORIGINAL
        self.ct = -1            # no ct state: untracked (matches no `ct state`)
        self.marks = None
        self.raw = raw          # the IP packet (for reject and log), not to be kept
        self.table = None       # the routing table a `table N` rule picked (None: main)


def l4_fields(proto: int, l4) -> tuple[int, int, int]:
    """(sport, dport, ICMP type) of a transport header; -1 where there is none."""
    if proto in (6, 17):
        if len(l4) >= 4:
            return l4[0] << 8 | l4[1], l4[2] << 8 | l4[3], -1
    elif proto == 1 and len(l4) >= 1:
        return -1, -1, l4[0]
    return -1, -1, -1


class PrefixSet:
    """IPv4 prefixes, probed by int: one frozenset of networks per prefix length present,
    longest first (a set of 10,000 host addresses costs one probe)."""
    __slots__ = ("lens", "size")

    def __init__(self, prefixes) -> None:
        by_len: dict[int, set[int]] = {}
        for text in prefixes:
            net, plen = parse_prefix(text)
            by_len.setdefault(plen, set()).add(net)
        self.lens = tuple(((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, frozenset(nets))
                          for plen, nets in sorted(by_len.items(), reverse=True))
        self.size = sum(len(n) for _m, n in self.lens)

    def __contains__(self, a: int) -> bool:
        for mask, nets in self.lens:
            if a & mask in nets:
                return True
        return False


def parse_prefix(text: str) -> tuple[int, int]:
    """"a.b.c.d[/n]" -> (network int, n); host bits must be clear. Raises ValueError."""
    addr, _, plen_text = str(text).partition("/")
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise ValueError(f"{text!r} is not an IPv4 address or prefix")
    a = int(parts[0]) << 24 | int(parts[1]) << 16 | int(parts[2]) << 8 | int(parts[3])
    plen = 32
    if plen_text:
        if not plen_text.isdigit() or int(plen_text) > 32:
            raise ValueError(f"{text!r}: bad prefix length")
        plen = int(plen_text)
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    if a & ~mask & 0xFFFFFFFF:
        raise ValueError(f"{text!r} has host bits set")
    return a, plen


def _ip_text(a: int) -> str:
    return f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"


class _Limit:
    """A token bucket: `rate` packets per `per` seconds, bursts of `burst`."""
    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: int, per: int, burst: int) -> None:
        self.rate = rate / per
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = None

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Rule:
    __slots__ = ("index", "hook", "checks", "limit", "action", "mark_domain", "mark_value",
                 "table", "to_address", "to_port", "text", "packets", "bytes", "key")


class _Hook:
    """A hook's compiled rules: the list in order, and for packets of a (protocol, port)
    that some rules name exactly, the list of just the rules that can match them (still in
    order): a rule set of thousands of `dport N` rules costs a dict probe, not a walk."""
    __slots__ = ("rules", "generic", "by_port", "policy")

    def __init__(self, rules: list[Rule], policy: int) -> None:
        self.rules = rules
        self.policy = policy
        self.generic = [r for r in rules if r.key is None]
        keyed: dict[tuple[int, int], list[Rule]] = {}
        for r in rules:
            if r.key is not None:
                keyed.setdefault(r.key, []).append(r)
        self.by_port = {k: sorted(self.generic + v, key=lambda r: r.index)
                        for k, v in keyed.items()}


def _compile_rule(i: int, d: dict, sets: dict[str, PrefixSet]) -> Rule:
    def bad(field, msg):
        raise StackError("bad_argument", f"rule {i + 1}: {field}: {msg}")

    r = Rule()
    r.index = i
    r.text = str(d.get("text") or "")
    r.packets = r.bytes = 0
    r.key = None
    hook = _HOOK.get(d.get("hook"))
    if hook is None:
        bad("hook", f"{d.get('hook')!r} is not a hook")
    r.hook = hook
    action = _ACTION.get(d.get("action"))
    if action is None:
        bad("action", f"{d.get('action')!r} is not an action")
    if action in _ACTION_HOOKS and hook not in _ACTION_HOOKS[action]:
        bad("action", f"{d['action']} is not allowed at {HOOK_NAMES[hook]}")
    r.action = action
    checks: list[Callable[[Meta], bool]] = []
    proto = d.get("proto")
    if proto is not None:
        p = _PROTO.get(proto)
        if p is None:
            bad("proto", f"{proto!r} is not tcp, udp or icmp")
        checks.append(lambda m, p=p: m.proto == p)
    for field in ("sport", "dport"):
        rng = d.get(field)
        if rng is None:
            continue
        if proto not in ("tcp", "udp"):
            bad(field, "needs proto tcp or udp")
        lo, hi = int(rng["lo"]), int(rng["hi"])
        if not 0 <= lo <= hi <= 0xFFFF:
            bad(field, f"bad range {lo}-{hi}")
        if field == "dport" and lo == hi:
            r.key = (_PROTO[proto], lo)
        if lo == hi:
            checks.append(lambda m, lo=lo, f=field: getattr(m, f) == lo)
        else:
            checks.append(lambda m, lo=lo, hi=hi, f=field: lo <= getattr(m, f) <= hi)
    for field in ("saddr", "daddr"):
        members = []
        try:
            if d.get(field):
                members.append(PrefixSet(d[field]))
        except ValueError as e:
            bad(field, str(e))
        name = d.get(field + "_set")
        if name is not None:
            if name not in sets:
                raise StackError("unknown_set", f"rule {i + 1}: {field}: no set named {name!r}")
            members.append(sets[name])
        if not members:
            continue
        attr = "src" if field == "saddr" else "dst"
        if len(members) == 1:
            ps = members[0]
            checks.append(lambda m, ps=ps, a=attr: getattr(m, a) in ps)
        else:
            checks.append(lambda m, ms=tuple(members), a=attr: any(getattr(m, a) in ps for ps in ms))
    if d.get("iif") is not None:
        if hook == OUTPUT:
            bad("iif", "there is no input port at output")
        checks.append(lambda m, n=d["iif"]: m.iif == n)
    if d.get("oif") is not None:
        if hook in (INGRESS, INPUT):
            bad("oif", f"there is no output port at {HOOK_NAMES[hook]}")
        checks.append(lambda m, n=d["oif"]: m.oif == n)
    if d.get("icmp_type") is not None:
        if proto != "icmp":
            bad("icmp_type", "needs proto icmp")
        checks.append(lambda m, t=int(d["icmp_type"]): m.itype == t)
    states = d.get("ct_state") or []
    if states:
        mask = 0
        for s in states:
            if s not in _CT:
                bad("ct_state", f"{s!r} is not a ct state")
            mask |= 1 << _CT[s]
        checks.append(lambda m, mask=mask: m.ct >= 0 and (mask >> m.ct) & 1 == 1)
    mark = d.get("mark")
    if mark is not None:
        dom, val = int(mark.get("domain", 1)), int(mark["value"])
        if not 1 <= dom <= MARK_DOMAINS:
            bad("mark", f"domain {dom} is not 1-{MARK_DOMAINS}")
        checks.append(lambda m, k=dom - 1, v=val: (m.marks[k] if m.marks else 0) == v)
    r.limit = None
    if d.get("limit_rate") is not None:
        r.limit = _Limit(int(d["limit_rate"]), int(d.get("limit_per") or 1),
                         int(d.get("limit_burst") or 5))
    r.checks = tuple(checks)
    r.mark_domain = r.mark_value = 0
    r.table = r.to_address = r.to_port = None
    if action == A_MARK:
        sm = d.get("set_mark")
        if sm is None:
            bad("set_mark", "the mark action needs a mark")
        r.mark_domain, r.mark_value = int(sm.get("domain", 1)), int(sm["value"])
        if not 1 <= r.mark_domain <= MARK_DOMAINS:
            bad("set_mark", f"domain {r.mark_domain} is not 1-{MARK_DOMAINS}")
    if action == A_TABLE:
        t = d.get("table")
        if not isinstance(t, int) or not 1 <= t <= MAX_TABLE:
            bad("table", f"{t!r} is not a routing table (1-{MAX_TABLE})")
        r.table = t
    if action in (A_SNAT, A_DNAT):
        if d.get("to_address") is None:
            bad("to_address", f"{d['action']} needs an address")
        try:
            r.to_address, _ = parse_prefix(str(d["to_address"]))
        except ValueError as e:
            bad("to_address", str(e))
    if action in (A_SNAT, A_DNAT, A_REDIRECT):
        if d.get("to_port") is not None:
            if proto not in ("tcp", "udp"):
                bad("to_port", "a port translation needs proto tcp or udp")
            r.to_port = int(d["to_port"])
        elif action == A_REDIRECT:
            bad("to_port", "redirect needs a port")
    return r


@dataclass(frozen=True)
class FilterContext:
    """What the filter may ask of the rest of the stack."""
    # The address a port's packets leave from toward a next hop (masquerade), as an int.
    source_of: Callable[[str, int], int | None]
    # Our first address on a port (redirect at ingress), as an int.
    address_of: Callable[[str], int | None]
    # Answer a rejected packet (its Meta): a TCP RST or ICMP port unreachable.
    reject: Callable[[Meta, float], None]
    # The marks of our socket that sends a flow (proto, src, sport, dst, dport), or None.
    socket_marks: Callable[[int, int, int, int, int], tuple | None] = lambda *a: None


class Filter:
    def __init__(self, counters, ct_counters, ctx: FilterContext, max_connections: int) -> None:
        self.c = counters
        self.ctx = ctx
        self.conntrack = Conntrack(max_connections, None, ct_counters)
        self.active = False         # any rule or a drop policy: the hooks run
        self.nat = False            # NAT rules, or connections with a translation: the
        #                             fast path leaves every packet to the general path
        self.tables = False         # `table N` rules: so does it (only the general path
        #                             routes by them)
        self.generation = 0
        self.ruleset: dict = {"policies": {}, "sets": {}, "rules": [], "source": ""}
        self._hooks: tuple[_Hook, ...] = tuple(_Hook([], ACCEPT) for _ in HOOK_NAMES)
        self._rules: list[Rule] = []
        self.policy_drops = [0] * 5
        self.log_lines: deque = deque(maxlen=LOG_LINES)
        self.log_seq = 0
        self.bypass = False         # while the filter itself sends (a reject's answer)
        self.carry = None           # a packet's Meta from the fast path's ingress and input
        #                             hooks, when it then leaves the packet to the general path
        self._nat_entries = False

    # -- installing --------------------------------------------------------------------------
    def install(self, ruleset: dict) -> tuple[int, int, int]:
        """Compile and swap in a rule set (plain data: ipc/protocols/filter.py RULESET).
        Raises StackError (and keeps the old one) if anything in it is bad."""
        if not isinstance(ruleset, dict):
            raise StackError("bad_argument", "a rule set is a map")
        try:
            sets = {str(name): PrefixSet(elems) for name, elems in
                    (ruleset.get("sets") or {}).items()}
        except ValueError as e:
            raise StackError("bad_argument", f"set: {e}") from None
        rules = [_compile_rule(i, d, sets) for i, d in enumerate(ruleset.get("rules") or [])]
        policies = ruleset.get("policies") or {}
        pol = []
        for name in HOOK_NAMES:
            p = policies.get(name, "accept")
            if p not in ("accept", "drop"):
                raise StackError("bad_argument", f"policy {name}: {p!r} is not accept or drop")
            pol.append(DROP if p == "drop" else ACCEPT)
        for name in policies:
            if name not in _HOOK:
                raise StackError("bad_argument", f"policy: {name!r} is not a hook")
        hooks = tuple(_Hook([r for r in rules if r.hook == h], pol[h]) for h in range(5))
        # The swap: everything above could fail; nothing below can.
        self._hooks = hooks
        self._rules = rules
        self.ruleset = {"policies": dict(policies), "sets": {k: list(v) for k, v in
                                                             (ruleset.get("sets") or {}).items()},
                        "rules": list(ruleset.get("rules") or []),
                        "source": str(ruleset.get("source") or "")}
        self.generation += 1
        self.policy_drops = [0] * 5
        self.active = bool(rules) or DROP in pol
        self._nat_entries = self._nat_entries or any(r.action in _NAT_ACTIONS for r in rules)
        self.nat = self._nat_entries
        self.tables = any(r.action == A_TABLE for r in rules)
        return self.generation, len(rules), sum(s.size for s in sets.values())

    def rule_counters(self) -> list[tuple[int, int, int]]:
        return [(r.index, r.packets, r.bytes) for r in self._rules]

    # -- the hooks ---------------------------------------------------------------------------
    def meta(self, iif, src: int, dst: int, proto: int, l4, length: int, raw,
             first: bool = True) -> Meta:
        if first:
            sport, dport, itype = l4_fields(proto, l4)
        else:
            sport = dport = itype = -1
        return Meta(iif, src, dst, proto, sport, dport, itype, length, raw)

    def track(self, m: Meta, l4, now: float, local: bool = False) -> None:
        """Connection tracking of a packet entering the stack (ingress) or leaving our own
        sockets (output, `local`). The first packet of a flow our socket opens takes the
        socket's marks (as netstack3's socket marks); its entry keeps them once confirmed."""
        entry, direction, state = self.conntrack.track(m.src, m.dst, m.proto, l4, m.length, now)
        m.entry, m.dir, m.ct = entry, direction, state
        if entry is not None:
            m.marks = entry.marks
            if local and state == NEW and not entry.confirmed and m.sport >= 0:
                marks = self.ctx.socket_marks(m.proto, m.src, m.sport, m.dst, m.dport)
                if marks:
                    m.marks = [marks[i] if i < len(marks) else 0 for i in range(MARK_DOMAINS)]

    def run(self, hook: int, m: Meta, now: float) -> int:
        """Evaluate a hook's rules on a packet: ACCEPT, DROP or REJECT (answered here)."""
        if self.bypass:
            return ACCEPT
        h = self._hooks[hook]
        rules = h.by_port.get((m.proto, m.dport), h.generic) if h.by_port else h.rules
        for r in rules:
            for chk in r.checks:
                if not chk(m):
                    break
            else:
                if r.limit is not None and not r.limit.take(now):
                    continue
                a = r.action
                if a >= A_MASQ:
                    if not self._nat(r, hook, m):
                        continue        # not a connection's first packet: NAT rules pass it
                    r.packets += 1
                    r.bytes += m.length
                    return ACCEPT
                r.packets += 1
                r.bytes += m.length
                if a == A_ACCEPT:
                    return ACCEPT
                if a == A_DROP:
                    self.c["dropped_rule"] += 1
                    return DROP
                if a == A_REJECT:
                    self.c["rejected"] += 1
                    self._reject(m, now)
                    return REJECT
                if a == A_LOG:
                    self._log(hook, r, m, now)
                elif a == A_TABLE:
                    m.table = r.table
                else:   # A_MARK
                    if m.marks is None:
                        m.marks = [0] * MARK_DOMAINS
                    m.marks[r.mark_domain - 1] = r.mark_value
        if h.policy == DROP:
            self.policy_drops[hook] += 1
            self.c["dropped_policy"] += 1
            return DROP
        return ACCEPT

    def confirm(self, m: Meta, now: float) -> bool:
        """After the last hook accepted a packet: a new connection enters the table. False
        (the packet must be dropped, counted) when the table refuses it."""
        e = m.entry
        if e is None or m.ct != NEW or m.dir != ORIGINAL:
            return True
        if m.marks is not None and m.marks is not e.marks:
            e.marks[:] = m.marks
            m.marks = e.marks
        if e.rewrite[0] is not None or e.rewrite[1] is not None:
            self._nat_entries = self.nat = True
        if self.conntrack.confirm(e, now):
            return True
        self.c["dropped_conntrack"] += 1     # table full of assured flows, or a clash
        return False

    def _nat(self, r: Rule, hook: int, m: Meta) -> bool:
        e = m.entry
        if e is None or m.ct != NEW or m.dir != ORIGINAL:
            return False
        a = r.action
        ct = self.conntrack
        if a == A_MASQ or a == A_SNAT:
            if a == A_MASQ:
                addr = self.ctx.source_of(m.oif, m.dst)
                if addr is None:
                    return False
            else:
                addr = r.to_address
            return ct.snat(e, addr, r.to_port) or self._nat_failed()
        if a == A_DNAT:
            return ct.dnat(e, r.to_address, r.to_port) or self._nat_failed()
        # A_REDIRECT (ingress only): to ourselves, at the receiving port's address.
        addr = self.ctx.address_of(m.iif)
        if addr is None:
            return False
        return ct.dnat(e, addr, r.to_port) or self._nat_failed()

    def _nat_failed(self) -> bool:
        self.c["nat_failed"] += 1
        return False

    def _reject(self, m: Meta, now: float) -> None:
        self.bypass = True
        try:
            self.ctx.reject(m, now)
        finally:
            self.bypass = False

    def _log(self, hook: int, r: Rule, m: Meta, now: float) -> None:
        proto = _PROTO_NAME.get(m.proto, str(m.proto))
        ports = f" sport={m.sport} dport={m.dport}" if m.sport >= 0 else (
            f" type={m.itype}" if m.itype >= 0 else "")
        self.log_seq += 1
        self.log_lines.append((self.log_seq, now, (
            f"{HOOK_NAMES[hook]} rule {r.index + 1}: iif={m.iif or '-'} oif={m.oif or '-'} "
            f"src={_ip_text(m.src)} dst={_ip_text(m.dst)} proto={proto}{ports} len={m.length} "
            f"ct={_CT_NAME.get(m.ct, 'untracked')}")))
        self.c["logged"] += 1

    # -- translation -------------------------------------------------------------------------
    def translate(self, buf: bytearray, off: int, m: Meta, dst_side: bool) -> bool:
        """Apply the connection's translation to the packet at buf[off:]: its destination
        part (dst_side: at ingress and output, before routing) or its source part (at
        egress). Updates m. False if nothing changed."""
        e = m.entry
        if e is None:
            return False
        rw = e.rewrite[m.dir]
        if rw is None:
            return False
        if m.ct == RELATED:
            # An ICMP error about the flow: its outer header and its quote (RFC 792), as
            # Linux's nf_nat_icmp_reply_translation does it.
            args = error_translation(e.tuple_of(m.dir), rw, dst_side)
            if args is None or not rewrite_icmp_error(buf, off, *args):
                return False
            if args[0] is not None:
                m.src = args[0]
            if args[1] is not None:
                m.dst = args[1]
            return True
        nsrc, nsport, ndst, ndport = rw
        if dst_side:
            if ndst == m.dst and (ndport == m.dport or m.dport < 0):
                return False
            if m.proto != 1:
                nsrc, nsport = m.src, m.sport
            else:
                nsrc = m.src
        else:
            if nsrc == m.src and (nsport == m.sport or m.sport < 0):
                return False
            if m.proto != 1:
                ndst, ndport = m.dst, m.dport
            else:
                ndst = m.dst
        # ICMP queries: the identifier is the "port", the tuple's rw[1] in a request and
        # rw[3] in a reply (see nat.rewrite_ipv4); both are passed as they are.
        if not rewrite_ipv4(buf, off, nsrc, nsport if nsport >= 0 else 0, ndst,
                            ndport if ndport >= 0 else 0):
            return False
        m.src, m.dst = nsrc, ndst
        if m.sport >= 0:
            m.sport, m.dport = nsport, ndport
        return True

    # -- state -------------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        self.conntrack.expire(now)

    def take_log(self, after: int, limit: int) -> list[tuple[int, float, str]]:
        return [x for x in self.log_lines if x[0] > after][:limit]

    def snapshot(self, now: float) -> dict:
        return {"ruleset": self.ruleset, "generation": self.generation,
                "counters": [[r.packets, r.bytes] for r in self._rules],
                "conntrack": self.conntrack.to_snapshot(now),
                "nat": self._nat_entries, "log_seq": self.log_seq}

    def restore(self, snap: dict, now: float) -> None:
        if not snap:
            return
        generation = int(snap.get("generation", 0))
        self.install(snap["ruleset"])
        self.generation = generation
        for r, pc in zip(self._rules, snap.get("counters") or []):
            r.packets, r.bytes = int(pc[0]), int(pc[1])
        self.conntrack.restore(snap.get("conntrack") or [], now)
        self._nat_entries = self.nat = bool(snap.get("nat")) or self.nat
        self.log_seq = int(snap.get("log_seq", 0))


__all__ = ["Filter", "FilterContext", "Meta", "PrefixSet", "parse_prefix", "l4_fields",
           "ACCEPT", "DROP", "REJECT", "INGRESS", "INPUT", "FORWARD", "OUTPUT", "EGRESS",
           "HOOK_NAMES"]
