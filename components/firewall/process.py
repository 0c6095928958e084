"""The firewall component: owns the rule set and its file; netstack enforces it.

The rules live in the text format of rules.py (docs/firewall.md), in one file (manifest arg
`rules`, default RUN/firewall.rules). Every change — a rule added or deleted, a policy, a
set's elements, a whole file loaded — is compiled here, installed in netstack whole
(qnet.filter `install`: each packet sees the old rule set or the new one), and only once
netstack has taken it written to the file and answered. A change netstack refuses, or one
made while netstack cannot be reached, changes nothing and says why.

Restarts: netstack keeps the installed rule set in its own hand-over and checkpoint, so it
enforces the last rule set across its restarts and while this component is down or
restarting. When netstack starts (its `started` event) and when we start, we compare what it
enforces with our file and install ours if they differ. The `log` action's lines are read
from netstack once a second, written to this component's log and kept for `qnet fw log`.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import deque

import msgspec

from components.firewall.rules import (RuleError, RuleFileError, Ruleset, format_ruleset,
                                       parse_rule, parse_text)
from components.runtime import Component, run_component
from ipc import errors
from ipc.decl import to_plain
from ipc.events import Subscriber
from ipc.protocols.filter import FILTER, HOOKS, RULESET
from ipc.protocols.firewall import FIREWALL
from ipc.protocols.netstack import NETSTACK
from ipc.rpc import RpcClient
from ipc.types import dec_hook

log = logging.getLogger("firewall")
LOG_KEEP = 1000
POLL_INTERVAL = 1.0


def _normal(wire: dict) -> dict:
    """A rule set as netstack answers it (every field present, defaults filled), so ours
    and netstack's compare equal when they are the same rules."""
    obj = msgspec.convert(wire, RULESET.annotation(), dec_hook=dec_hook)
    d = to_plain(obj)
    d.pop("source", None)
    return d


class _Handlers:
    """qnet.firewall."""

    def __init__(self, fw: "Firewall"):
        self.fw = fw

    def add(self, tokens, position):
        fw = self.fw
        try:
            rule = parse_rule(list(tokens))
        except RuleError as e:
            raise errors.RemoteError(str(e), code="bad_argument") from None
        new = fw.ruleset.copy()
        missing = [s for s in (rule.get("saddr_set"), rule.get("daddr_set"))
                   if s is not None and s not in new.sets]
        if missing:
            raise errors.RemoteError(f"no set named {missing[0]!r} ('qnet fw set add "
                                     f"{missing[0]} ELEMENT...' makes one)", code="bad_argument")
        n = len(new.rules)
        if position is not None:
            if not 1 <= position <= n + 1:
                raise errors.RemoteError(f"there is no rule {position} to insert before "
                                         f"({n} rules)", code="not_found")
            at = position - 1
        else:
            at = n
        new.rules.insert(at, rule)
        fw.apply(new, "add")
        return {"number": at + 1, "hook": rule["hook"], "text": rule.get("text", ""),
                "packets": 0, "bytes": 0}

    def delete(self, number):
        fw = self.fw
        new = fw.ruleset.copy()
        if not 1 <= number <= len(new.rules):
            raise errors.RemoteError(f"there is no rule {number} ({len(new.rules)} rules; "
                                     f"'qnet fw list' numbers them)", code="not_found")
        gone = new.rules.pop(number - 1)
        fw.apply(new, "delete")
        return gone.get("text", "")

    def policy(self, hook, verdict):
        new = self.fw.ruleset.copy()
        new.policies[hook] = verdict
        self.fw.apply(new, "policy")
        return len(new.rules)

    def set_add(self, name, elements):
        new = self.fw.ruleset.copy()
        text = f"set {name} " + " ".join(elements)
        try:
            one = parse_text(text, "<set add>")
        except RuleFileError as e:
            raise errors.RemoteError(str(e).replace("<set add>:1: ", ""), code="bad_argument") from None
        merged = new.sets.setdefault(name, [])
        seen = set(merged)
        for el in one.sets.get(name, []):
            if el not in seen:
                seen.add(el)
                merged.append(el)
        self.fw.apply(new, "set add")
        return len(merged)

    def load(self, text, source):
        try:
            new = parse_text(text, source or "<rules>")
        except RuleFileError as e:
            raise errors.RemoteError(str(e), code="bad_argument") from None
        self.fw.apply(new, f"load {source}" if source else "load")
        return len(new.rules)

    def save(self):
        return format_ruleset(self.fw.ruleset)

    def list(self):
        fw = self.fw
        st = fw.ns_call("get")
        ours = fw.ruleset
        counters = {c["index"]: c for c in st["counters"]}
        installed = int(fw.same_as_installed(st))
        rows = []
        for i, r in enumerate(ours.rules):
            c = counters.get(i, {}) if installed else {}
            rows.append({"number": i + 1, "hook": r["hook"], "text": r.get("text", ""),
                         "packets": c.get("packets", 0), "bytes": c.get("bytes", 0)})
        return {"policies": {h: ours.policies.get(h, "accept") for h in HOOKS},
                "sets": {k: len(v) for k, v in ours.sets.items()}, "rules": rows,
                "policy_drops": st["policy_drops"], "generation": st["generation"],
                "file": fw.path, "installed": installed}

    def conntrack(self, limit):
        return self.fw.ns_call("conntrack", limit=limit)

    def log(self, after, limit):
        self.fw.poll_log()
        return [x for x in self.fw.log_lines if x["seq"] > after][:limit]


class Firewall(Component):
    def __init__(self, rt):
        super().__init__(rt)
        peer = rt.spec.peers.get("qnet.filter")
        ns_peer = rt.spec.peers.get("qnet.netstack")
        if peer is None or ns_peer is None:
            raise SystemExit("firewall: the graph must give it qnet.filter and qnet.netstack")
        self.ns = RpcClient(peer["rpc"], FILTER, timeout=5.0, retries=1)
        self.ns_events = Subscriber([NETSTACK], [ns_peer["pub"]])
        self.path = str(rt.args.get("rules") or os.path.join(rt.spec.runtime_dir, "firewall.rules"))
        self.ruleset = Ruleset({}, {}, [])
        self.in_sync = False
        self.log_lines: deque = deque(maxlen=LOG_KEEP)
        self.log_after = 0
        self.counters = {"installs": 0, "install_failures": 0, "file_errors": 0, "log_lines": 0}
        self.last_error = ""

    def implementations(self):
        return {FIREWALL: _Handlers(self)}

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self, state):
        if state and isinstance(state.get("log_after"), int):
            self.log_after = state["log_after"]
        self.ruleset = self._read_file()
        self.rt.loop.add_reader(self.ns_events.socket, self._on_ns_events)
        self.rt.loop.call_every(POLL_INTERVAL, self._tick)
        self.sync()

    def freeze(self):
        self.rt.loop.remove_reader(self.ns_events.socket)
        return {"log_after": self.log_after}

    def thaw(self):
        self.rt.loop.add_reader(self.ns_events.socket, self._on_ns_events)

    def status(self):
        return {"file": self.path, "rules": len(self.ruleset.rules), "in_sync": self.in_sync,
                "drops": 0, "internal_errors": self.rt.loop.errors +
                self.rt.rpc.counters.get("internal_errors", 0),
                **self.counters, "last_error": self.last_error}

    def close(self):
        self.ns.close()

    # -- the file --------------------------------------------------------------------------
    def _read_file(self) -> Ruleset:
        """Our rule set from the file; if it is missing, empty; if it is bad, the rule set
        netstack enforces (kept, and the problem reported) — never nothing."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return Ruleset({}, {}, [])
        except OSError as e:
            self._file_problem(f"cannot read {self.path}: {e.strerror}")
            return self._from_netstack()
        try:
            return parse_text(text, self.path)
        except RuleFileError as e:
            self._file_problem(f"{e}; netstack keeps enforcing the rules it has")
            return self._from_netstack()

    def _file_problem(self, msg: str) -> None:
        self.counters["file_errors"] += 1
        self.last_error = msg
        self.rt.problem(msg)

    def _from_netstack(self) -> Ruleset:
        try:
            rs = self.ns_call("get")["ruleset"]
        except errors.RemoteError:
            return Ruleset({}, {}, [])
        return Ruleset(dict(rs["policies"]), {k: list(v) for k, v in rs["sets"].items()},
                       [dict(r) for r in rs["rules"]])

    def _write_file(self, rs: Ruleset) -> None:
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".firewall.", dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(format_ruleset(rs))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    # -- netstack --------------------------------------------------------------------------
    def ns_call(self, method: str, **kw):
        try:
            return to_plain(self.ns.call(method, **kw))
        except errors.RemoteError:
            raise
        except errors.IpcError as e:
            raise errors.RemoteError(f"netstack does not answer ({e}); nothing changed",
                                     code="netstack_down") from None

    def same_as_installed(self, st: dict) -> bool:
        try:
            return _normal(st["ruleset"]) == _normal(self.ruleset.to_wire())
        except (msgspec.ValidationError, TypeError, ValueError):
            return False

    def apply(self, new: Ruleset, what: str) -> None:
        """Install `new` in netstack, then keep it and write the file; on any failure the
        old rule set stays everywhere and the caller hears why."""
        try:
            self.ns_call("install", ruleset=new.to_wire(self.path))
        except errors.RemoteError as e:
            self.counters["install_failures"] += 1
            raise errors.RemoteError(f"{what}: {e}" if e.code != "netstack_down" else str(e),
                                     code="bad_argument" if e.code != "netstack_down" else e.code) from None
        self.counters["installs"] += 1
        self.ruleset = new
        self.in_sync = True
        try:
            self._write_file(new)
        except OSError as e:
            self._file_problem(f"netstack enforces the new rules, but {self.path} could not be "
                               f"written: {e.strerror}")

    def sync(self) -> None:
        """Make netstack enforce our rule set, if it does not already."""
        try:
            st = self.ns_call("get")
            if not self.same_as_installed(st):
                self.ns_call("install", ruleset=self.ruleset.to_wire(self.path))
                self.counters["installs"] += 1
                log.info("installed %d rules from %s in netstack", len(self.ruleset.rules), self.path)
            self.in_sync = True
        except errors.RemoteError as e:
            self.in_sync = False
            self.last_error = str(e)
            log.warning("cannot install the rule set in netstack: %s", e)

    def _on_ns_events(self):
        self.ns_events.receive(self._on_ns_event)

    def _on_ns_event(self, proto, name, ev):
        if name == "started":
            self.sync()

    def _tick(self):
        if not self.in_sync:
            self.sync()
        self.poll_log()

    def poll_log(self):
        try:
            lines = self.ns_call("log", after=self.log_after, limit=1000)
        except errors.RemoteError:
            return
        for x in lines:
            self.log_lines.append(x)
            self.counters["log_lines"] += 1
            log.info("%s", x["text"])
        if lines:
            self.log_after = lines[-1]["seq"]


def main() -> None:
    run_component(Firewall)


if __name__ == "__main__":
    main()
