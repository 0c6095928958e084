"""The firewall's rule language: the text people write, and its translation into the compiled
form netstack enforces (ipc/protocols/filter.py RULE and RULESET). Text in, dicts out; no I/O.

A rules file holds one statement per line. `#` starts a comment anywhere on a line, blank lines
are ignored, and words are separated by whitespace:

    policy HOOK accept|drop        what HOOK does with a packet no rule ended (absent: accept)
    set NAME [ELEMENT ...]         a named set of addresses and prefixes; repeated, it extends
                                   the set (an empty one may be filled later by `qnet fw set`)
    HOOK [MATCH ...] ACTION        a rule; within a hook, rules apply in file order

HOOK is ingress, input, forward, output or egress. MATCHes, each at most once, in any order:

    proto tcp|udp|icmp
    sport N[-M], dport N[-M]       ports 0-65535, N <= M; needs proto tcp or udp
    saddr E[,E...], daddr E[,E...] E is a.b.c.d (= /32) or a.b.c.d/n with no host bits set, or
                                   @SET (one set at most, defined somewhere in the same file);
                                   at most 256 prefixes (more belong in a set)
    iif PORT, oif PORT             a port name; no oif at ingress or input, no iif at output
    icmp type N|NAME               0-255 or echo-reply, destination-unreachable, redirect,
                                   echo-request, time-exceeded, parameter-problem,
                                   timestamp-request, timestamp-reply; needs proto icmp
    ct state S[,S...]              new, established, related, invalid
    mark [D:]N                     the connection's mark in domain D (1-4, default 1) is N
                                   (0-4294967295, decimal or 0x hex)
    limit N/UNIT [burst B]         UNIT second|minute|hour|day; beyond N per UNIT (bursts of B,
                                   default 5) the rule does not match

ACTION, exactly one, ends the rule:

    accept, drop, reject           end the hook for the packet
    log, mark [D:]N, table N       do not: evaluation goes on with the next rule
    table N                        ingress or output only (before routing): route the packet by
                                   routing table N (1-252, `qnet route add ... table N`) where
                                   it has a route, by main where not; a later one overrides it
    masquerade, snat ADDR[:PORT]   egress only (source NAT, after routing)
    dnat ADDR[:PORT]               ingress or output only (destination NAT, before routing)
    redirect PORT                  ingress only (to this host); needs proto tcp or udp
    (a NAT action ends the hook, the packet going on translated; a NAT port needs proto tcp
    or udp; ADDR is a unicast address: not in 0/8, not multicast or above; PORT is 1-65535)

`mark` is both a match and an action, told apart by position: a `mark X` that ends the rule is
the action, any other `mark X` is a match. So `input mark 7` sets mark 7, and
`input mark 2:5 mark 3:1` matches mark 2:5 and sets 3:1; to act on a mark without setting one,
give an action after it (`input mark 7 accept`). Words are read left to right, so a value is
never mistaken for a keyword (`iif mark accept` matches the port named "mark").

The canonical text (format_rule, format_ruleset) writes the matches in one order (iif oif
saddr daddr proto sport dport icmp ct mark limit), a /32 as a bare address, a single port as
N, a mark of domain 1 without its domain, marks in decimal, ICMP types by name where they have
one, and no `burst 5`; lists keep the order written, without repeats. Reading the canonical
text of a rule set gives the same rule set.

Errors: parse_rule raises RuleError naming the word at fault (`dport: "70000" is not a port
(0-65535)`); parse_text raises RuleFileError for the first bad line (`rules.conf:12: dport:
...`) and nothing else, whatever the text.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import msgspec

from ipc.decl import readable_validation_error
from ipc.protocols.filter import HOOKS, MARK_DOMAINS, MAX_RULES, MAX_SET_ELEMENTS, RULE, RULESET
from ipc.types import dec_hook


def _bound(struct, name: str) -> int:
    """A field's bound, as the declaration gives it: the parser refuses what netstack would."""
    t = next(f.type for f in struct.fields if f.name == name)
    t = getattr(t, "inner", t)
    return t.max_len if hasattr(t, "max_len") else t.hi


MAX_LINE = 4096                              # characters in one line of a rules file
MAX_SETS = _bound(RULESET, "sets")           # named sets in one rule set
MAX_PREFIXES = _bound(RULE, "saddr")         # prefixes listed in one saddr or daddr
MAX_TEXT = _bound(RULE, "text")              # the listing text of one rule
MAX_SOURCE = _bound(RULESET, "source")
MAX_RATE = _bound(RULE, "limit_rate")        # limit N and burst B
MAX_TABLE = _bound(RULE, "table")            # routing tables 1-MAX_TABLE
# Elements per `set` line that format_ruleset writes: 128 x 19 characters stays under MAX_LINE.
SET_LINE = 128
HEADER = "# qnet firewall rules (the format of components/firewall/rules.py)"

PROTOS = ("tcp", "udp", "icmp")
CT_STATES = ("new", "established", "related", "invalid")
ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "redirect": 5, "echo-request": 8,
              "time-exceeded": 11, "parameter-problem": 12, "timestamp-request": 13,
              "timestamp-reply": 14}
_ICMP_NAMES = {v: k for k, v in ICMP_TYPES.items()}
LIMIT_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_UNIT_NAMES = {v: k for k, v in LIMIT_UNITS.items()}
ACTIONS = ("accept", "drop", "reject", "log", "mark", "table", "masquerade", "snat", "dnat",
           "redirect")
# Source NAT happens after routing, destination NAT and the choice of a routing table before it
# (as a packet arrives, or as our own sockets send it).
ACTION_HOOKS = {"masquerade": ("egress",), "snat": ("egress",),
                "dnat": ("ingress", "output"), "redirect": ("ingress",),
                "table": ("ingress", "output")}

_DEC = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"0[xX][0-9a-fA-F]{1,16}")
_OCTET = r"(0|[1-9][0-9]{0,2})"
# No leading zeros: "010.0.0.1" is octal to some tools and decimal to others.
_PREFIX = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/(0|[1-9][0-9]?))?")
_PORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_SET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,31}")


class RuleError(ValueError):
    """A statement that is not right: `field` is the word at fault, `reason` what was wanted."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class RuleFileError(ValueError):
    """The first bad line of a rules file: `filename:line: field: reason`."""

    def __init__(self, filename: str, line: int, field: str, reason: str):
        super().__init__(f"{filename}:{line}: {field}: {reason}")
        self.filename = filename
        self.line = line
        self.field = field
        self.reason = reason


def _q(text: str) -> str:
    """A word as an error message quotes it: shortened, and escaped where not printable."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    return '"' + "".join('\\"' if c == '"' else c if c.isprintable() and c != "\\"
                         else ascii(c)[1:-1] for c in shown) + '"'


def _uint(text: str, lo: int, hi: int) -> int | None:
    if _DEC.fullmatch(text) is None:
        return None
    n = int(text)
    return n if lo <= n <= hi else None


# -- values ---------------------------------------------------------------------------------

def _parse_prefix(field: str, text: str) -> str:
    """"a.b.c.d[/n]" as "a.b.c.d/n"; host bits must be clear. (Sets of a million elements
    come through here: it stays a regex and integer arithmetic.)"""
    m = _PREFIX.fullmatch(text)
    if m is not None:
        a, b, c, d = int(m[1]), int(m[2]), int(m[3]), int(m[4])
        plen = 32 if m[5] is None else int(m[5])
        if a <= 255 and b <= 255 and c <= 255 and d <= 255 and plen <= 32:
            host = (1 << (32 - plen)) - 1
            addr = a << 24 | b << 16 | c << 8 | d
            if not addr & host:
                # Without leading zeros the text is already canonical.
                return text if m[5] is not None else text + "/32"
            net = addr & ~host
            raise RuleError(field, f"{_q(text)} has host bits set (the prefix is {net >> 24}."
                                   f"{net >> 16 & 255}.{net >> 8 & 255}.{net & 255}/{plen})")
    raise RuleError(field, f"{_q(text)} is not an IPv4 address or prefix (a.b.c.d or a.b.c.d/n)")


def _show_prefix(prefix: str) -> str:
    return prefix[:-3] if prefix.endswith("/32") else prefix


def _parse_ports(field: str, text: str) -> dict:
    lo_text, dash, hi_text = text.partition("-")
    lo = _uint(lo_text, 0, 0xFFFF)
    hi = _uint(hi_text, 0, 0xFFFF) if dash else lo
    if lo is None or hi is None:
        what = "a port range (N-M, each 0-65535)" if dash else "a port (0-65535)"
        raise RuleError(field, f"{_q(text)} is not {what}")
    if lo > hi:
        raise RuleError(field, f"{_q(text)} is not a port range: {lo} is above {hi}")
    return {"lo": lo, "hi": hi}


def _show_ports(rng: dict) -> str:
    return str(rng["lo"]) if rng["lo"] == rng["hi"] else f"{rng['lo']}-{rng['hi']}"


def _parse_mark(field: str, text: str) -> dict:
    domain_text, colon, value_text = text.rpartition(":")
    domain = _uint(domain_text, 1, MARK_DOMAINS) if colon else 1
    if domain is None:
        raise RuleError(field, f"{_q(text)} is not a mark: the domain is 1-{MARK_DOMAINS}")
    value = None
    if _HEX.fullmatch(value_text):
        value = int(value_text, 16)
    elif _DEC.fullmatch(value_text):
        value = int(value_text)
    if value is None or value > 0xFFFFFFFF:
        raise RuleError(field, f"{_q(text)} is not a mark ([DOMAIN:]VALUE, VALUE 0-4294967295 "
                               f"in decimal or 0x hex)")
    return {"domain": domain, "value": value}


def _show_mark(mark: dict) -> str:
    domain = mark.get("domain", 1)
    return str(mark["value"]) if domain == 1 else f"{domain}:{mark['value']}"


def _parse_nat_target(field: str, text: str) -> tuple[str, int | None]:
    addr_text, colon, port_text = text.partition(":")
    m = _PREFIX.fullmatch(addr_text)
    if m is None or m[5] is not None or any(int(o) > 255 for o in m.group(1, 2, 3, 4)):
        raise RuleError(field, f"{_q(text)} is not an address with an optional port (a.b.c.d[:PORT])")
    first = int(m[1])
    if first == 0 or first >= 224:
        raise RuleError(field, f"{_q(addr_text)} is not a unicast address")
    port = None
    if colon:
        port = _uint(port_text, 1, 0xFFFF)
        if port is None:
            raise RuleError(field, f"{_q(port_text)} is not a port (1-65535)")
    return addr_text, port


# -- the matches: each reads its words after the keyword into the rule ------------------------

class _Words:
    """The words of one statement, read left to right."""

    def __init__(self, words: list[str], start: int):
        self.words = words
        self.i = start

    def left(self) -> int:
        return len(self.words) - self.i

    def peek(self) -> str | None:
        return self.words[self.i] if self.i < len(self.words) else None

    def take(self, field: str, expected: str) -> str:
        if self.i >= len(self.words):
            raise RuleError(field, f"expected {expected} after it")
        self.i += 1
        return self.words[self.i - 1]


def _m_proto(w: _Words, rule: dict) -> None:
    text = w.take("proto", "tcp, udp or icmp")
    if text not in PROTOS:
        raise RuleError("proto", f"{_q(text)} is not a protocol (tcp, udp or icmp)")
    rule["proto"] = text


def _m_ports(field: str):
    def parse(w: _Words, rule: dict) -> None:
        rule[field] = _parse_ports(field, w.take(field, "a port N or a range N-M"))
    return parse


def _m_addresses(field: str):
    def parse(w: _Words, rule: dict) -> None:
        text = w.take(field, "a.b.c.d[/n][,...] or @SET")
        prefixes: list[str] = []
        seen: set[str] = set()
        set_name = None
        for element in text.split(","):
            if element.startswith("@"):
                name = element[1:]
                if _SET_NAME.fullmatch(name) is None:
                    raise RuleError(field, f"{_q(element)} is not @SET (a set name: a letter or "
                                           f"'_', then letters, digits, '_', '.', '-'; up to 32)")
                if set_name is not None and name != set_name:
                    raise RuleError(field, "names two sets (one at most: put both in one set)")
                set_name = name
                continue
            prefix = _parse_prefix(field, element)
            if prefix not in seen:
                seen.add(prefix)
                prefixes.append(prefix)
                if len(prefixes) > MAX_PREFIXES:
                    raise RuleError(field, f"more than {MAX_PREFIXES} prefixes (put them in a "
                                           f"set: set NAME ELEMENT...)")
        rule[field] = prefixes
        rule[field + "_set"] = set_name
    return parse


def _m_port_name(field: str):
    def parse(w: _Words, rule: dict) -> None:
        text = w.take(field, "a port name")
        if _PORT_NAME.fullmatch(text) is None:
            raise RuleError(field, f"{_q(text)} is not a port name (a letter or digit, then "
                                   f"letters, digits, '_', '.', '-'; up to 64)")
        rule[field] = text
    return parse


def _m_icmp(w: _Words, rule: dict) -> None:
    if w.take("icmp type", '"type" and a type') != "type":
        raise RuleError("icmp type", 'expected "icmp type N|NAME"')
    text = w.take("icmp type", "a type N or NAME")
    number = ICMP_TYPES.get(text, _uint(text, 0, 255))
    if number is None:
        raise RuleError("icmp type", f"{_q(text)} is not an ICMP type (0-255 or "
                                     f"{', '.join(ICMP_TYPES)})")
    rule["icmp_type"] = number


def _m_ct(w: _Words, rule: dict) -> None:
    if w.take("ct state", '"state" and states') != "state":
        raise RuleError("ct state", 'expected "ct state S[,S...]"')
    text = w.take("ct state", "S[,S...]")
    states: list[str] = []
    for s in text.split(","):
        if s not in CT_STATES:
            raise RuleError("ct state", f"{_q(s)} is not a ct state ({', '.join(CT_STATES)})")
        if s not in states:
            states.append(s)
    rule["ct_state"] = states


def _m_mark(w: _Words, rule: dict) -> None:
    rule["mark"] = _parse_mark("mark", w.take("mark", "[DOMAIN:]VALUE"))


def _m_limit(w: _Words, rule: dict) -> None:
    text = w.take("limit", "N/second, N/minute, N/hour or N/day")
    rate_text, slash, unit = text.partition("/")
    rate = _uint(rate_text, 1, MAX_RATE)
    if not slash or rate is None or unit not in LIMIT_UNITS:
        raise RuleError("limit", f"{_q(text)} is not a rate (N/second, N/minute, N/hour or "
                                 f"N/day, N 1-{MAX_RATE})")
    rule["limit_rate"], rule["limit_per"] = rate, LIMIT_UNITS[unit]
    if w.peek() == "burst":
        w.take("burst", "")
        burst_text = w.take("burst", "a number of packets")
        burst = _uint(burst_text, 1, MAX_RATE)
        if burst is None:
            raise RuleError("burst", f"{_q(burst_text)} is not a burst (1-{MAX_RATE} packets)")
        rule["limit_burst"] = burst


# keyword -> (the field errors name, its reader)
MATCHES = {
    "proto": ("proto", _m_proto),
    "sport": ("sport", _m_ports("sport")),
    "dport": ("dport", _m_ports("dport")),
    "saddr": ("saddr", _m_addresses("saddr")),
    "daddr": ("daddr", _m_addresses("daddr")),
    "iif": ("iif", _m_port_name("iif")),
    "oif": ("oif", _m_port_name("oif")),
    "icmp": ("icmp type", _m_icmp),
    "ct": ("ct state", _m_ct),
    "mark": ("mark", _m_mark),
    "limit": ("limit", _m_limit),
}


# -- the action ---------------------------------------------------------------------------

def _read_action(name: str, w: _Words, rule: dict) -> None:
    rule["action"] = name
    if name == "mark":
        rule["set_mark"] = _parse_mark("mark", w.take("mark", "[DOMAIN:]VALUE"))
    elif name == "table":
        text = w.take(name, "a routing table")
        table = _uint(text, 1, MAX_TABLE)
        if table is None:
            raise RuleError(name, f"{_q(text)} is not a routing table (1-{MAX_TABLE})")
        rule["table"] = table
    elif name in ("snat", "dnat"):
        rule["to_address"], rule["to_port"] = _parse_nat_target(
            name, w.take(name, "an address a.b.c.d[:PORT]"))
    elif name == "redirect":
        text = w.take(name, "a port")
        port = _uint(text, 1, 0xFFFF)
        if port is None:
            raise RuleError(name, f"{_q(text)} is not a port (1-65535)")
        rule["to_port"] = port


def _check_placement(rule: dict) -> None:
    """What a rule's words say about each other and its hook (netstack checks it again)."""
    hook, proto, action = rule["hook"], rule["proto"], rule["action"]
    for f in ("sport", "dport"):
        if rule[f] is not None and proto not in ("tcp", "udp"):
            raise RuleError(f, "needs proto tcp or udp in the same rule")
    if rule["icmp_type"] is not None and proto != "icmp":
        raise RuleError("icmp type", "needs proto icmp in the same rule")
    if rule["oif"] is not None and hook in ("ingress", "input"):
        raise RuleError("oif", f"not at {hook}: the packet has no output port yet")
    if rule["iif"] is not None and hook == "output":
        raise RuleError("iif", "not at output: our own packets have no input port")
    allowed = ACTION_HOOKS.get(action)
    if allowed is not None and hook not in allowed:
        raise RuleError(action, f"only at {' or '.join(allowed)}, not at {hook}")
    if action in ("snat", "dnat", "redirect") and rule["to_port"] is not None \
            and proto not in ("tcp", "udp"):
        raise RuleError(action, "a port translation needs proto tcp or udp in the same rule")


# Every field of RULE at its default (None for the required hook and action), in its order.
_RULE_DEFAULTS = {f.name: None if f.required else f.default for f in RULE.fields}
_LIST_FIELDS = tuple(name for name, default in _RULE_DEFAULTS.items() if isinstance(default, list))


def _new_rule(hook: str) -> dict:
    rule = dict(_RULE_DEFAULTS, hook=hook)
    for name in _LIST_FIELDS:
        rule[name] = []
    return rule


def _listing_text(text: str) -> str:
    # RULE.text is bounded; a rule longer than that is listed shortened.
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 4] + " ..."


def parse_rule(tokens: list[str]) -> dict:
    """One rule statement (HOOK [MATCH ...] ACTION, as words) as a wire dict with every field
    of RULE; its `text` is its canonical text. Raises RuleError. Set names are not looked up
    here: the caller knows which sets exist."""
    words = list(tokens)
    if not all(isinstance(t, str) for t in words):
        raise RuleError("rule", "its words must be text")
    if not words:
        raise RuleError("hook", f"expected a hook ({', '.join(HOOKS)})")
    if words[0] not in HOOKS:
        raise RuleError("hook", f"{_q(words[0])} is not a hook ({', '.join(HOOKS)})")
    rule = _new_rule(words[0])
    w = _Words(words, 1)
    seen: set[str] = set()
    while w.left():
        word = w.take("rule", "a word")
        # The one ambiguous word: `mark X` ending the rule is the action (module docstring).
        if word in ACTIONS and not (word == "mark" and w.left() != 1):
            _read_action(word, w, rule)
            if w.left():
                extra = w.peek()
                raise RuleError(_q(extra)[1:-1], f"nothing may follow the action {word}")
            break
        if word not in MATCHES:
            raise RuleError(_q(word)[1:-1], f"not a match ({', '.join(n for n, _ in MATCHES.values())}) or an action "
                                            f"({', '.join(ACTIONS)})")
        name, read = MATCHES[word]
        if name in seen:
            raise RuleError(name, "given twice in one rule")
        seen.add(name)
        read(w, rule)
    if rule["action"] is None:
        raise RuleError("action", f"the rule ends without one ({', '.join(ACTIONS)})")
    _check_placement(rule)
    text = format_rule(rule)
    # Canonical text can be longer than the words written (ICMP type names): a rule that would
    # not fit a line when written back is refused, so that every rule set reads back.
    if len(text) > MAX_LINE:
        raise RuleError("rule", f"longer than {MAX_LINE} characters as written back (a set "
                                f"holds long address lists)")
    rule["text"] = _listing_text(text)
    return rule


def format_rule(rule: dict) -> str:
    """A wire rule's canonical text (its `text` field is not read). Exact for the rules
    parse_rule makes; fields left out of `rule` are taken at their defaults."""
    r = rule.get
    words = [str(r("hook"))]
    for f in ("iif", "oif"):
        if r(f) is not None:
            words += [f, str(r(f))]
    for f in ("saddr", "daddr"):
        elements = [_show_prefix(str(p)) for p in r(f) or ()]
        if r(f + "_set") is not None:
            elements.append("@" + str(r(f + "_set")))
        if elements:
            words += [f, ",".join(elements)]
    if r("proto") is not None:
        words += ["proto", str(r("proto"))]
    for f in ("sport", "dport"):
        if r(f) is not None:
            words += [f, _show_ports(r(f))]
    if r("icmp_type") is not None:
        words += ["icmp", "type", _ICMP_NAMES.get(r("icmp_type"), str(r("icmp_type")))]
    if r("ct_state"):
        words += ["ct", "state", ",".join(r("ct_state"))]
    if r("mark") is not None:
        words += ["mark", _show_mark(r("mark"))]
    if r("limit_rate") is not None:
        per = r("limit_per") or 1
        words += ["limit", f"{r('limit_rate')}/{_UNIT_NAMES.get(per, f'{per}s')}"]
        if (r("limit_burst") or 5) != 5:
            words += ["burst", str(r("limit_burst"))]
    action = str(r("action"))
    words.append(action)
    if action == "mark" and r("set_mark") is not None:
        words.append(_show_mark(r("set_mark")))
    elif action == "table" and r("table") is not None:
        words.append(str(r("table")))
    elif action in ("snat", "dnat") and r("to_address") is not None:
        port = r("to_port")
        words.append(str(r("to_address")) + (f":{port}" if port is not None else ""))
    elif action == "redirect" and r("to_port") is not None:
        words.append(str(r("to_port")))
    return " ".join(words)


# -- rule sets ----------------------------------------------------------------------------

@dataclass
class Ruleset:
    """A whole rule set: hook -> policy, set name -> prefixes ("a.b.c.d/n"), wire rules."""

    policies: dict[str, str] = field(default_factory=dict)
    sets: dict[str, list[str]] = field(default_factory=dict)
    rules: list[dict] = field(default_factory=list)

    def to_wire(self, source: str = "") -> dict:
        """The RULESET shape (qnet.filter `install`)."""
        if len(source) > MAX_SOURCE:
            source = "..." + source[-(MAX_SOURCE - 3):]
        return {"policies": dict(self.policies),
                "sets": {name: list(elements) for name, elements in self.sets.items()},
                "rules": [dict(r) for r in self.rules], "source": source}

    def copy(self) -> "Ruleset":
        return Ruleset(dict(self.policies), {k: list(v) for k, v in self.sets.items()},
                       copy.deepcopy(self.rules))


def _policy(words: list[str], policies: dict[str, str]) -> None:
    if len(words) != 3:
        raise RuleError("policy", "expected policy HOOK accept|drop")
    hook, verdict = words[1], words[2]
    if hook not in HOOKS:
        raise RuleError("policy", f"{_q(hook)} is not a hook ({', '.join(HOOKS)})")
    if verdict not in ("accept", "drop"):
        raise RuleError("policy", f"{_q(verdict)} is not accept or drop")
    if hook in policies:
        raise RuleError("policy", f"the policy of {hook} is given twice")
    policies[hook] = verdict


def _set(words: list[str], sets: dict[str, list[str]], members: dict[str, set[str]]) -> None:
    if len(words) < 2:
        raise RuleError("set", "expected set NAME [ELEMENT ...]")
    name = words[1]
    if _SET_NAME.fullmatch(name) is None:
        raise RuleError("set", f"{_q(name)} is not a set name (a letter or '_', then letters, "
                               f"digits, '_', '.', '-'; up to 32)")
    if name not in sets:
        if len(sets) >= MAX_SETS:
            raise RuleError("set", f"more than {MAX_SETS} sets")
        sets[name], members[name] = [], set()
    elements, seen = sets[name], members[name]
    for text in words[2:]:
        prefix = _parse_prefix("set", text)
        if prefix not in seen:
            seen.add(prefix)
            elements.append(prefix)
    if len(elements) > MAX_SET_ELEMENTS:
        raise RuleError("set", f"set {name} has more than {MAX_SET_ELEMENTS} elements")


def parse_text(text: str, filename: str = "<rules>") -> Ruleset:
    """A rules file's text as a Ruleset. Raises RuleFileError for its first bad line, and
    nothing else whatever the text."""
    if not isinstance(text, str):
        raise RuleFileError(filename, 1, "text", "a rules file is read as text")
    policies: dict[str, str] = {}
    sets: dict[str, list[str]] = {}
    members: dict[str, set[str]] = {}
    rules: list[dict] = []
    uses: list[tuple[int, str, str]] = []     # (line, saddr|daddr, set name) to look up
    for number, line in enumerate(text.split("\n"), 1):
        try:
            if len(line.rstrip("\r")) > MAX_LINE:
                raise RuleError("line", f"longer than {MAX_LINE} characters")
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if words[0] == "policy":
                _policy(words, policies)
            elif words[0] == "set":
                _set(words, sets, members)
            elif words[0] in HOOKS:
                if len(rules) >= MAX_RULES:
                    raise RuleError("rule", f"more than {MAX_RULES} rules")
                rule = parse_rule(words)
                rules.append(rule)
                uses += [(number, f, rule[f + "_set"]) for f in ("saddr", "daddr")
                         if rule[f + "_set"] is not None]
            else:
                raise RuleError("statement", f"{_q(words[0])} is not a hook "
                                             f"({', '.join(HOOKS)}), policy or set")
        except RuleError as e:
            raise RuleFileError(filename, number, e.field, e.reason) from None
    for number, f, name in uses:
        if name not in sets:
            raise RuleFileError(filename, number, f, f"no set named {_q(name)} in the file "
                                                     f"(define it: set {name} ELEMENT...)")
    return Ruleset(policies, sets, rules)


def format_ruleset(rs: Ruleset) -> str:
    """The canonical text of a rule set: a header, policies, sets, rules."""
    lines = [HEADER]
    policies = [f"policy {h} {rs.policies[h]}" for h in HOOKS if h in rs.policies]
    if policies:
        lines += [""] + policies
    if rs.sets:
        lines.append("")
    for name, elements in rs.sets.items():
        if not elements:
            lines.append(f"set {name}")
        for i in range(0, len(elements), SET_LINE):
            lines.append(f"set {name} " + " ".join(_show_prefix(p) for p in elements[i:i + SET_LINE]))
    if rs.rules:
        lines += [""] + [format_rule(r) for r in rs.rules]
    return "\n".join(lines) + "\n"


_RULESET_TYPE = RULESET.annotation()


def validate_wire(d: dict) -> None:
    """Check a wire rule set against its declaration (ipc/protocols/filter.py RULESET), as
    netstack's decoder will; raises RuleError naming where it is wrong."""
    try:
        msgspec.convert(d, _RULESET_TYPE, dec_hook=dec_hook)
    except msgspec.ValidationError as e:
        raise RuleError("ruleset", readable_validation_error(str(e))) from None
