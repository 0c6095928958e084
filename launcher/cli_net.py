"""`qnet port|addr|route|neigh|ping|capture|ss|stats`: the network commands.

Configuration (ports, addresses, routes) goes through the launcher, which owns
it and re-asserts it to a restarted netstack; read-only views, ping and
capture talk to netstack's declared control interface directly.
"""
from __future__ import annotations

import argparse
import ipaddress
import math
import os
import signal
import sys
import time

from ipc.protocols.netstack import NETSTACK, ROUTE_TABLE, TCP
from ipc.rpc import RpcClient

from .cli import COMMAND_MODULES, CliError, EXIT_USAGE, answer, call, out_json, table


def provider_endpoint(args, protocol: str, what: str) -> str:
    """The rpc endpoint of the component that provides a protocol (asked of the launcher)."""
    graph = call(args, "graph")
    name = next((c["name"] for c in graph["components"]
                 if any(p.startswith(protocol + "@") for p in c["provides"])), None)
    if name is None:
        raise CliError(f"this graph has no {what} component")
    _require_answering(args, name)
    ep = call(args, "endpoints").get(name, {}).get("rpc")
    if ep is None:
        raise CliError(f"the launcher knows no endpoint of {name}")
    if ep.startswith("tcp://"):
        # A tcp graph: talk with the graph's CURVE key, readable by root only.
        secret = os.path.join(args.runtime_dir, "keys", "graph.key_secret")
        if os.path.exists(secret):
            os.environ["QNET_CURVE_SECRET_FILE"] = secret
    return ep


def _require_answering(args, name: str) -> None:
    """Say at once, with the way back, that a component cannot answer, instead of waiting out a timeout."""
    row = next((r for r in call(args, "status") if r["name"] == name), None)
    if row is None:
        return
    state, d = row["state"], row.get("details") or {}
    if state in ("failed", "stopped"):
        why = "; ".join((d.get("problems") or [])[-1:]) or row.get("last_exit") or state
        raise CliError(f"{name} is {state}: {why}" + ("" if "qnet restart" in why else
                                                       f"; 'qnet restart {name}' brings it back"))
    if state == "unresponsive":
        raise CliError(f"{name} is unresponsive (no heartbeat for {d.get('silent_s', '?')} s); the launcher "
                       f"replaces it if it stays silent, or 'qnet restart {name}' now")


def provider_call(args, protocol, what: str, method: str, call_timeout: float = 10.0, retries: int = 2, **kw):
    """Call a method of the component that provides ``protocol``; errors become one CLI line."""
    ep = provider_endpoint(args, protocol.name, what)
    with RpcClient(ep, protocol, timeout=call_timeout, retries=retries) as c:
        return answer(c, what, call_timeout, method, **kw)


def netstack_call(args, method: str, timeout: float = 10.0, **kw):
    return provider_call(args, NETSTACK, "netstack", method, timeout, **kw)


_SS_STATE = {"ESTABLISHED": "ESTAB", "SYN-SENT": "SYN-SENT", "SYN-RECEIVED": "SYN-RECV",
             "FIN-WAIT-1": "FIN-WAIT-1", "FIN-WAIT-2": "FIN-WAIT-2", "TIME-WAIT": "TIME-WAIT",
             "CLOSE-WAIT": "CLOSE-WAIT", "LAST-ACK": "LAST-ACK", "CLOSING": "CLOSING",
             "CLOSED": "UNCONN", "LISTEN": "LISTEN"}


def _endpoint(addr, port, version=None) -> str:
    """ss's "address:port": IPv6 in brackets, a wildcard as "*" ("[::]" for an IPv6 one)."""
    if addr in (None, "", "0.0.0.0"):
        return f"{'[::]' if version == 6 else '*'}:{port}"
    if addr == "::":
        return f"[::]:{port}"
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def cmd_ss(args) -> int:
    """TCP and UDP sockets in the idiom of iproute2's `ss`: -t TCP, -u UDP, both without either.
    An IPv6 listener's IPv4 twin (dual stack, channel "twin:LID") is folded into it."""
    tcp = args.tcp or not args.udp
    udp = args.udp or not args.tcp
    rows = []
    if tcp:
        got = provider_call(args, TCP, "netstack", "list")
        conns, listeners = got.get("connections", []), got.get("listeners", [])
        if args.listening or args.all:
            for lst in listeners:
                if str(lst.get("channel") or "").startswith("twin:"):
                    continue
                rows.append({"netid": "tcp", "state": "LISTEN", "recv_q": lst.get("accept_queue", 0),
                             "send_q": lst.get("backlog", 0),
                             "local": _endpoint(lst.get("addr"), lst.get("port"), lst.get("version")),
                             "peer": "*:*",
                             "owner": lst.get("owner") or "", "kind": "listener", **lst})
        if not args.listening or args.all:
            for c in conns:
                rows.append({**c, "netid": "tcp", "kind": "connection",
                             "state": _SS_STATE.get(c.get("state"), c.get("state")),
                             "recv_q": c.get("recv_queue", 0), "send_q": c.get("send_queue", 0),
                             "local": _endpoint(c.get("local"), c.get("local_port")),
                             "peer": _endpoint(c.get("remote"), c.get("remote_port")),
                             "owner": c.get("owner") or ""})
    if udp:
        from ipc.protocols.udp import UDP
        got = provider_call(args, UDP, "netstack", "list")
        for u in (got if isinstance(got, list) else got.get("sockets", [])):
            connected = bool(u.get("remote")) and u.get("remote") not in ("0.0.0.0", "::")
            if args.listening and connected:
                continue
            addr = u.get("address")
            rows.append({**u, "netid": "udp", "kind": "udp", "state": "ESTAB" if connected else "UNCONN",
                         "recv_q": u.get("channel_bytes", u.get("queued", 0)), "send_q": 0,
                         "local": _endpoint(addr, u.get("port"), u.get("version")),
                         "peer": _endpoint(u.get("remote"), u.get("remote_port")) if connected else "*:*",
                         "owner": u.get("owner") or ""})
    if args.json:
        out_json(rows)
        return 0
    cols = [("netid", "Netid"), ("state", "State"), ("recv_q", "Recv-Q"), ("send_q", "Send-Q"), ("local", "Local Address:Port"),
            ("peer", "Peer Address:Port"), ("owner", "Process")]
    if args.info:
        for r in rows:
            if r["kind"] != "connection":
                continue
            rtt, var = r.get("rtt"), r.get("rttvar")
            r["rtt_txt"] = "-" if rtt is None else f"{rtt * 1000:.3g}/{(var or 0) * 1000:.3g}"
            r["cwnd_txt"] = r.get("cwnd")
            r["retrans_txt"] = f"{r.get('retransmits', 0)}/{r.get('total_retrans', 0)}"
        cols += [("rtt_txt", "rtt(ms)"), ("cwnd_txt", "cwnd"), ("retrans_txt", "retrans"),
                 ("congestion", "cc")]
    print(table(rows, cols))
    return 0


def _iface(text: str) -> str:
    """An IPv4 or IPv6 address with its prefix length, its version told by its text."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise CliError(f"not an address with prefix length: {text!r} (want A.B.C.D/LEN or an IPv6 "
                       f"address/LEN, e.g. 2001:db8::1/64)", EXIT_USAGE) from None
    if iface.version == 6 and (iface.ip.scope_id is not None or iface.ip.is_multicast or iface.ip.is_unspecified
                               or iface.ip.is_loopback):
        raise CliError(f"{text!r} cannot be an interface address (multicast, ::, ::1 or with a %zone)", EXIT_USAGE)
    return str(iface)


def _prefix(text: str, version: int | None = None) -> str:
    """A prefix of either version; 'default' is 0.0.0.0/0, or ::/0 for version 6."""
    if text == "default":
        return "::/0" if version == 6 else "0.0.0.0/0"
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise CliError(f"not a prefix: {text!r} ({exc})", EXIT_USAGE) from None
    if version is not None and net.version != version:
        raise CliError(f"{text} is not an IPv{version} prefix", EXIT_USAGE)
    return str(net)


def _addr6(text: str) -> tuple[str, str | None]:
    """An IPv6 address and the zone it names (fe80::1%p0: the port p0), or a usage error."""
    addr, _, zone = text.partition("%")
    try:
        a = ipaddress.IPv6Address(addr)
    except ValueError:
        raise CliError(f"not an IPv6 address: {text!r}", EXIT_USAGE) from None
    if zone == "" and "%" in text:
        raise CliError(f"{text!r}: an empty zone after '%' (say fe80::1%PORT)", EXIT_USAGE)
    return str(a), (zone or None)


def _version_of(text: str) -> int:
    return 6 if ":" in text else 4


def _family(args) -> int | None:
    """-4 or -6 as given (None: neither); both is a usage error."""
    v4, v6 = getattr(args, "v4", False), getattr(args, "v6", False)
    if v4 and v6:
        raise CliError(f"qnet {args.cmd}: say -4 or -6, not both", EXIT_USAGE)
    return 4 if v4 else (6 if v6 else None)


def _addr(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise CliError(f"not an IPv4 address: {text!r}", EXIT_USAGE) from None


# -- port ----------------------------------------------------------------------------------------
def cmd_port(args) -> int:
    sub = args.port_cmd
    if sub == "add":
        backend = "tap" if args.tap else ("stream" if args.stream else ("dgram" if args.dgram else None))
        if backend is None:
            raise CliError("qnet port add: say --tap IFNAME, --stream PATH or --dgram PATH --peer PATH", EXIT_USAGE)
        if args.offloads and backend != "tap":
            raise CliError("qnet port add: --offloads needs --tap IFNAME", EXIT_USAGE)
        if backend == "dgram" and not args.peer:
            raise CliError("qnet port add: --dgram needs --peer PATH (QEMU's local.path)", EXIT_USAGE)
        fault = None
        if args.fault is not None:
            from components.ethdriver.backends.fault import parse_fault_spec
            try:
                fault = str(parse_fault_spec(args.fault))
            except ValueError as exc:
                raise CliError(f"qnet port add: --{exc}", EXIT_USAGE) from None
        addrs = [_iface(a) for a in args.addr or []]
        res = call(args, "port_add", timeout=30.0, name=args.name, backend=backend, tap=args.tap,
                   create=not args.no_create, mac=args.mac.lower() if args.mac else None, mtu=args.mtu, forwarding=not args.no_forwarding,
                   path=args.stream or args.dgram, peer_path=args.peer,
                   dhcp="client" if args.dhcp else ("server" if args.dhcp_server else None),
                   addresses=[a for a in addrs if ":" not in a],
                   **({"addresses6": [a for a in addrs if ":" in a]} if any(":" in a for a in addrs) else {}),
                   **({"offloads": True} if args.offloads else {}), **({"fault": fault} if fault else {}))
        if args.json:
            out_json(res)
        else:
            print(f"port {res['name']}: {res['backend']}" + (f" {res['tap']}" if res.get("tap") else "")
                  + f", mtu {res['mtu']}" + (f", {', '.join(res['addresses'])}" if res["addresses"] else "")
                  + (f", fault {fault}" if fault else ""))
        return 0
    if sub == "del":
        call(args, "port_del", name=args.name)
        print(f"port {args.name}: removed")
        return 0
    if sub == "set":
        if args.what != "forwarding" or args.value not in ("on", "off"):
            raise CliError("qnet port set: usage: qnet port set NAME forwarding on|off", EXIT_USAGE)
        res = call(args, "port_set", name=args.name, forwarding=args.value == "on")
        print(f"port {args.name}: forwarding {'on' if res['forwarding'] else 'off'}")
        return 0
    rows = _port_rows(args)
    if args.json:
        out_json(rows)
        return 0
    for r in rows:
        r["link"] = "up" if r["up"] else "down"
        r["driver"] = "attached" if r["attached"] else "none"
        r["offloads"] = ",".join(r.get("offloads") or []) or "-"
        r["addresses"] = list(r["addresses"]) + [_addr6_text(a) for a in r.get("addresses6") or []]
    print(table(rows, [("name", "PORT"), ("kind", "KIND"), ("mac", "MAC"), ("mtu", "MTU"), ("link", "LINK"),
                       ("driver", "DRIVER"), ("forwarding", "FORWARDING"), ("offloads", "OFFLOADS"),
                       ("addresses", "ADDRESSES")]))
    return 0


def _port_rows(args) -> list[dict]:
    """netstack's ports; a port whose driver runs but is not attached yet (a netstack that just
    restarted asks its drivers to announce themselves again) is asked about again for a moment,
    so the list shows the ports as they are rather than as a new incarnation first sees them."""
    rows = netstack_call(args, "port_list")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        running = {r["name"] for r in call(args, "status") if r["state"] == "running"}
        waiting = [r for r in rows if not r["attached"] and any(n.endswith("." + r["name"]) for n in running)]
        if not waiting:
            break
        time.sleep(0.1)
        rows = netstack_call(args, "port_list")
    return rows


# The states of IPv6 addresses, as `ip -6 addr` words them beside the address.
_STATE6_WORDS = {"PREFERRED": "", "TENTATIVE": "tentative", "DEPRECATED": "deprecated",
                 "DUPLICATE": "dadfailed"}


def _addr6_text(a: dict) -> str:
    word = _STATE6_WORDS.get(a["state"], a["state"].lower())
    return a["address"] + (f" ({word})" if word else "")


def cmd_addr(args) -> int:
    family = _family(args)
    if args.addr_cmd in ("add", "del"):
        addr = _iface(args.address)
        v6 = ":" in addr
        if family is not None and family != (6 if v6 else 4):
            raise CliError(f"qnet addr {args.addr_cmd}: {addr} is not an IPv{family} address", EXIT_USAGE)
        method = ("addr6_" if v6 else "addr_") + args.addr_cmd
        ok = call(args, method, port=args.port, address=addr)
        if args.addr_cmd == "del" and not ok:
            raise CliError(f"{args.port}: {addr} is not on the port")
        print(f"{args.port}: {addr} {'added' if args.addr_cmd == 'add' else 'removed'}"
              + (" (tentative until duplicate address detection passes)" if v6 and args.addr_cmd == "add" else ""))
        return 0
    rows = []
    for p in netstack_call(args, "port_list"):
        # --json rows: IPv4's as they always were, IPv6's with their DAD state
        if family in (None, 4):
            rows += [{"port": p["name"], "address": a} for a in p["addresses"]]
        if family in (None, 6):
            rows += [{"port": p["name"], "address": a["address"], "state": a["state"]}
                     for a in p.get("addresses6") or []]
    if args.json:
        out_json(rows)
    else:
        print(table(rows, [("port", "PORT"), ("address", "ADDRESS"), ("state", "STATE")]))
    return 0


def cmd_route(args) -> int:
    family = _family(args)
    if args.route_cmd in ("add", "del"):
        verb = args.route_cmd
        if family is None:  # told by the prefix, or by the gateway for 'default'
            family = _version_of(args.via) if args.prefix == "default" and args.via else _version_of(args.prefix)
        prefix = _prefix(args.prefix, family)
        if family == 6:
            return _route6(args, verb, prefix)
        via = _addr(args.via) if args.via else None
        if verb == "add" and via is None and args.dev is None:
            raise CliError("qnet route add: say 'via GATEWAY' or 'dev PORT'", EXIT_USAGE)
        if verb == "add":
            call(args, "route_add", prefix=prefix, via=via, dev=args.dev, metric=args.metric, table=args.table)
        else:
            call(args, "route_del", prefix=prefix, via=via, dev=args.dev, table=args.table)
        print(f"route {prefix}{' via ' + via if via else ''}{' dev ' + args.dev if args.dev else ''}"
              f"{f' table {args.table}' if args.table else ''}: "
              f"{'added' if verb == 'add' else 'removed'}")
        return 0
    if family == 6:
        if args.table is not None:
            raise CliError("qnet route list -6: IPv6 routes have no numbered tables (main only)", EXIT_USAGE)
        rows = netstack_call(args, "route6_list")
        if args.json:
            out_json(rows)
        else:
            print(table(rows, [("prefix", "PREFIX"), ("gateway", "VIA"), ("device", "DEV"), ("metric", "METRIC"),
                               ("origin", "ORIGIN")]))
        return 0
    rows = netstack_call(args, "route_list", table=args.table)
    if args.json:
        out_json(rows)
    else:
        columns = [("prefix", "PREFIX"), ("gateway", "VIA"), ("device", "DEV"), ("metric", "METRIC"),
                   ("origin", "ORIGIN")]
        if args.table is not None:
            for r in rows:
                r["table"] = r["table"] or "main"
            columns.insert(0, ("table", "TABLE"))
        print(table(rows, columns))
    return 0


def _route6(args, verb: str, prefix: str) -> int:
    if args.table is not None:
        raise CliError(f"qnet route {verb}: IPv6 routes have no numbered tables (main only)", EXIT_USAGE)
    via, dev = None, args.dev
    if args.via:
        if _version_of(args.via) != 6:
            raise CliError(f"qnet route {verb}: {args.via} is not an IPv6 gateway (the prefix {prefix} is IPv6)",
                           EXIT_USAGE)
        via, zone = _addr6(args.via)
        if zone is not None:
            if dev is not None and dev != zone:
                raise CliError(f"qnet route {verb}: {args.via} names port {zone}, but dev is {dev}", EXIT_USAGE)
            dev = zone
        if ipaddress.IPv6Address(via).is_link_local and dev is None:
            raise CliError(f"qnet route {verb}: the link-local gateway {via} needs 'dev PORT' (or {via}%PORT)",
                           EXIT_USAGE)
    if verb == "add" and via is None and dev is None:
        raise CliError("qnet route add: say 'via GATEWAY' or 'dev PORT'", EXIT_USAGE)
    if verb == "add":
        call(args, "route6_add", prefix=prefix, via=via, dev=dev, metric=args.metric)
    else:
        call(args, "route6_del", prefix=prefix, via=via, dev=dev)
    print(f"route {prefix}{' via ' + via if via else ''}{' dev ' + dev if dev else ''}: "
          f"{'added' if verb == 'add' else 'removed'}")
    return 0


def _table_word(verb: str, text: str, every: bool) -> int | None:
    """`table N|main` (and, listing, `all`) as route_list and route_add take it: None is main,
    0 every table."""
    if text == "main":
        return None
    if every and text == "all":
        return 0
    if not text.isdigit() or not 1 <= int(text) <= ROUTE_TABLE.hi:
        raise CliError(f"qnet route {verb}: table must be 1-{ROUTE_TABLE.hi} or main"
                       + (" or all" if every else "") + f", not {text!r}", EXIT_USAGE)
    return int(text)


def cmd_neigh(args) -> int:
    """Both tables by default, as `ip neigh`: ARP's, then Neighbor Discovery's."""
    family = _family(args)
    rows = netstack_call(args, "neigh_list") if family in (None, 4) else []
    if family in (None, 6):
        rows += netstack_call(args, "neigh6_list")
    if args.json:
        out_json(rows)
    else:
        print(table(rows, [("device", "PORT"), ("address", "ADDRESS"), ("mac", "MAC"), ("state", "STATE"),
                           ("queued", "QUEUED")]))
    return 0


def _number_in(lo: float, hi: float, *, integer: bool = False):
    """An argparse type: a finite number within [lo, hi]. NaN and infinities never pass
    (a NaN compares false with every bound, and -W inf once became an internal error)."""
    def parse(text: str):
        try:
            v = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if integer else 'a number'}") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is not within {lo:g}..{hi:g}")
        return v
    return parse


def cmd_ping(args) -> int:
    family = _family(args) or _version_of(args.dst)
    budget = args.count * args.interval + args.timeout + 5
    if family == 6:
        if _version_of(args.dst) != 6:
            raise CliError(f"qnet ping -6: {args.dst} is not an IPv6 address", EXIT_USAGE)
        dst, zone = _addr6(args.dst)
        port = args.interface
        if zone is not None:
            if port is not None and port != zone:
                raise CliError(f"qnet ping: {args.dst} names port {zone}, but -I says {port}", EXIT_USAGE)
            port = zone
        a = ipaddress.IPv6Address(dst)
        if (a.is_link_local or a.is_multicast) and port is None:
            raise CliError(f"qnet ping: {dst} is link-local: say which port, {dst}%PORT or -I PORT", EXIT_USAGE)
        res = provider_call(args, NETSTACK, "netstack", "ping6", budget, retries=0, dst=dst, count=args.count,
                            interval=args.interval, timeout=args.timeout, size=args.size, hop_limit=args.ttl,
                            port=port)
        shown = dst + (f"%{port}" if port and (a.is_link_local or a.is_multicast) else "")
    else:
        if _version_of(args.dst) == 6:
            raise CliError(f"qnet ping -4: {args.dst} is not an IPv4 address", EXIT_USAGE)
        if args.interface is not None:
            raise CliError("qnet ping: -I PORT is for IPv6 (link-local destinations); IPv4 follows its routes",
                           EXIT_USAGE)
        shown = dst = _addr(args.dst)
        res = _ping(args, dst, budget)
    if args.json:
        out_json(res)
    else:
        dst = shown
        print(f"PING {dst}: {args.size} data bytes, sent by qnet's stack")
        for r in res["replies"]:
            if r["ok"]:
                print(f"{r['size']} bytes from {r['src']}: icmp_seq={r['seq']} ttl={r['ttl']} time={r['rtt_ms']:.3f} ms")
            else:
                print(f"icmp_seq={r['seq']}: {r['error']}" + (f" (from {r['src']})" if r.get("src") else ""))
        loss = 100.0 * (res["sent"] - res["received"]) / max(1, res["sent"])
        print(f"--- {dst}: {res['sent']} sent, {res['received']} received, {loss:.0f}% loss")
    return 0 if res["received"] > 0 else 1


def _ping(args, dst: str, budget: float):
    return provider_call(args, NETSTACK, "netstack", "ping", budget, retries=0, dst=dst, count=args.count,
                         interval=args.interval, timeout=args.timeout, size=args.size, ttl=args.ttl)


def cmd_capture(args) -> int:
    path = os.path.abspath(args.write)
    netstack_call(args, "capture_start", port=args.port, path=path, max_frames=args.count or 0)
    print(f"capturing on {args.port} to {path}" + (f" for {args.duration:g} s" if args.duration else
                                                    " (Ctrl-C stops)"), file=sys.stderr, flush=True)
    stop = {"flag": False}
    old = signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("flag", True))
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    t_end = time.monotonic() + args.duration if args.duration else None
    try:
        while not stop["flag"] and (t_end is None or time.monotonic() < t_end):
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, old)
        n = netstack_call(args, "capture_stop", port=args.port)
    print(f"{n} frames written to {path}")
    return 0


def cmd_stats(args) -> int:
    st = netstack_call(args, "stats")
    if args.json:
        out_json(st)
        return 0
    for group, counters in sorted(st["stack"].items()):
        items = ", ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v)
        print(f"{group}: {items or '-'}")
    # the binding's work on offload ports: super-frames cut, partial checksums completed
    for port, counters in sorted((st.get("binding") or {}).get("offloads", {}).items()):
        items = ", ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v and k != "offloads")
        print(f"offload:{port}: {items or '-'}")
    return 0


def add_commands(sub) -> None:
    from .cli import _Parser
    p = sub.add_parser("port", help="ports: add, del, set, list")
    ps = p.add_subparsers(dest="port_cmd", metavar="add|del|set|list", parser_class=_Parser)
    a = ps.add_parser("add", help="add a port: starts ethdriver.NAME on a backend")
    a.add_argument("name")
    a.add_argument("--tap", metavar="IFNAME", help="a TAP interface (created if missing)")
    a.add_argument("--stream", metavar="PATH", help="listen at PATH for QEMU's -netdev stream")
    a.add_argument("--dgram", metavar="PATH", help="our unix datagram socket for QEMU's -netdev dgram")
    a.add_argument("--peer", metavar="PATH", help="QEMU's local.path (with --dgram)")
    a.add_argument("--no-create", action="store_true", help="the TAP must exist already")
    a.add_argument("--mac", help="our MAC on this port (default: derived from the name)")
    a.add_argument("--mtu", type=int, default=1500)
    a.add_argument("--no-forwarding", action="store_true")
    a.add_argument("--addr", action="append", metavar="CIDR", help="an address for the port (repeatable)")
    a.add_argument("--dhcp", action="store_true", help="configure the port with our DHCP client (an uplink)")
    a.add_argument("--offloads", action="store_true",
                   help="open the TAP with IFF_VNET_HDR and take checksum and TSO/GSO offloads")
    a.add_argument("--dhcp-server", action="store_true",
                   help="serve DHCP on the port from its first address's subnet (a guest-facing port)")
    a.add_argument("--fault", metavar="KEY=VALUE,...",
                   help="make the port's link bad in qnet's driver, e.g. loss=0.01,reorder=0.05,dup=0.01,"
                        "delay=0.3,seed=1 (delay is one-way, each direction); keys: loss, corrupt, dup, "
                        "reorder, reorder_gap, reorder_hold, delay, jitter, rate, limit, limit_bytes, max_len, "
                        "seed, dir (docs/fault-injection.md)")
    a.add_argument("--json", action="store_true")
    d = ps.add_parser("del", help="remove a port and its driver")
    d.add_argument("name")
    s = ps.add_parser("set", help="qnet port set NAME forwarding on|off")
    s.add_argument("name")
    s.add_argument("what")
    s.add_argument("value")
    ls = ps.add_parser("list", help="every port")
    ls.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_port, port_cmd="list", json=False)

    p = sub.add_parser("addr", help="addresses, IPv4 and IPv6: add, del, list [-4|-6]",
                       description="IPv4 and IPv6 addresses (the version is told by the address). IPv6 "
                                   "addresses are tentative until duplicate address detection passes; "
                                   "one another node holds is shown as DUPLICATE and never used.")
    _family_flags(p, top=True)
    ps = p.add_subparsers(dest="addr_cmd", metavar="add|del|list", parser_class=_Parser)
    for verb in ("add", "del"):
        x = ps.add_parser(verb, help=f"{verb} PORT ADDRESS/LEN (10.0.0.1/24 or 2001:db8::1/64)")
        x.add_argument("port")
        x.add_argument("address", help="A.B.C.D/LEN or an IPv6 address/LEN")
        _family_flags(x)
    ls = ps.add_parser("list", help="list [-4|-6] [--json]: every address, IPv6 ones with their state")
    _family_flags(ls)
    p.set_defaults(func=cmd_addr, addr_cmd="list", json=False)

    p = sub.add_parser("route", help="routes, IPv4 and IPv6: add, del, list [-4|-6]",
                       description="Routes of either version (told by the prefix; 'default' is IPv4's unless "
                                   "-6 or an IPv6 gateway says otherwise). A link-local IPv6 gateway needs "
                                   "its port: 'via fe80::1 dev PORT' or 'via fe80::1%PORT'.")
    _family_flags(p, top=True)
    ps = p.add_subparsers(dest="route_cmd", metavar="add|del|list", parser_class=_Parser)
    for verb in ("add", "del"):
        x = ps.add_parser(verb, help=f"{verb} PREFIX [via GW] [dev PORT] [metric N] [table N]")
        x.add_argument("prefix", help="A.B.C.D/LEN, an IPv6 prefix (2001:db8::/64) or 'default'")
        x.add_argument("rest", nargs="*", help="via GW | dev PORT | metric N | table N (1-252, IPv4 only; "
                                               "default main)")
        _family_flags(x, json=False)
    ls = ps.add_parser("list", help="list [-4|-6] [table N|main|all]")
    ls.add_argument("rest", nargs="*", help="table N|main|all (default main; IPv4 only)")
    _family_flags(ls)
    p.set_defaults(func=_route_entry, route_cmd="list", json=False, rest=[])

    p = sub.add_parser("neigh", help="the neighbor tables: ARP (IPv4) and NDP (IPv6); -4 or -6 for one")
    _family_flags(p, top=True)
    ps = p.add_subparsers(dest="neigh_cmd", metavar="list", parser_class=_Parser)
    ls = ps.add_parser("list", help="list [-4|-6] [--json]")
    _family_flags(ls)
    p.set_defaults(func=cmd_neigh, json=False)

    p = sub.add_parser("ping", help="ICMP or ICMPv6 echo sent by qnet's stack",
                       description="ping DST: an IPv4 or IPv6 address. A link-local IPv6 destination "
                                   "needs its port: fe80::1%PORT or -I PORT.")
    p.add_argument("-4", dest="v4", action="store_true", help="IPv4 only")
    p.add_argument("-6", dest="v6", action="store_true", help="IPv6 only")
    p.add_argument("-I", "--interface", metavar="PORT", help="IPv6: the port to leave by (link-local destinations)")
    p.add_argument("dst", help="A.B.C.D, an IPv6 address, or fe80::1%%PORT")
    # the bounds netstack's ping accepts (components/netstack/process.py, ipc/protocols/netstack.py)
    p.add_argument("-c", "--count", type=_number_in(1, 10000, integer=True), default=3)
    p.add_argument("-i", "--interval", type=_number_in(0.001, 60), default=1.0, help="seconds, 0.001..60")
    p.add_argument("-W", "--timeout", type=_number_in(0.01, 60), default=2.0,
                   help="seconds to wait for each reply, 0.01..60")
    p.add_argument("-s", "--size", type=_number_in(0, 65000, integer=True), default=56)
    p.add_argument("-t", "--ttl", type=_number_in(1, 255, integer=True), default=64,
                   help="TTL, or IPv6's hop limit (1..255)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser("capture", help="write what crosses a port to a pcap file")
    p.add_argument("port")
    p.add_argument("-w", "--write", required=True, metavar="FILE.pcap")
    p.add_argument("-c", "--count", type=_number_in(0, 2**31 - 1, integer=True), default=0,
                   help="stop writing after N frames")
    p.add_argument("-d", "--duration", type=_number_in(0, 10**9), default=0.0,
                   help="seconds (default: until Ctrl-C)")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("ss", help="TCP and UDP sockets, with their owners (like iproute2's ss)")
    p.add_argument("-t", "--tcp", action="store_true", help="TCP only")
    p.add_argument("-u", "--udp", action="store_true", help="UDP only")
    p.add_argument("-l", "--listening", action="store_true", help="listeners (and unconnected UDP sockets) only")
    p.add_argument("-a", "--all", action="store_true", help="listeners and connections")
    p.add_argument("-i", "--info", action="store_true", help="rtt, cwnd, retransmits, congestion control")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ss)

    p = sub.add_parser("stats", help="per-interface and per-protocol counters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)


def _family_flags(p, top: bool = False, json: bool = True) -> None:
    """-4/-6 (and --json) on a command and on its subcommands alike, so that both
    `qnet addr -6` and `qnet addr list -6` work: a subcommand's own flags leave the
    command's untouched when not given (argparse.SUPPRESS)."""
    extra = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("-4", dest="v4", action="store_true", help="IPv4 only", **extra)
    p.add_argument("-6", dest="v6", action="store_true", help="IPv6 only", **extra)
    if json:
        p.add_argument("--json", action="store_true", **extra)


def _route_entry(args) -> int:
    args.table = None
    if args.route_cmd == "list":
        rest = list(args.rest)
        if rest and (len(rest) != 2 or rest[0] != "table"):
            raise CliError("qnet route list: say nothing, or 'table N|main|all'", EXIT_USAGE)
        if rest:
            args.table = _table_word("list", rest[1], True)
    if args.route_cmd in ("add", "del"):
        rest = list(args.rest)
        args.via = args.dev = None
        args.metric = 0
        while rest:
            key = rest.pop(0)
            if not rest:
                raise CliError(f"qnet route {args.route_cmd}: '{key}' needs a value", EXIT_USAGE)
            val = rest.pop(0)
            if key == "via":
                args.via = val
            elif key == "dev":
                args.dev = val
            elif key == "metric":
                try:
                    args.metric = int(val)
                except ValueError:
                    raise CliError(f"metric must be a number, not {val!r}", EXIT_USAGE) from None
            elif key == "table":
                args.table = _table_word(args.route_cmd, val, False)
            else:
                raise CliError(f"qnet route {args.route_cmd}: unknown word {key!r} (via, dev, metric, table)",
                               EXIT_USAGE)
    return cmd_route(args)


COMMAND_MODULES.append(add_commands)


# -- dhcp ----------------------------------------------------------------------------------------
def dhcpd_call(args, method: str, timeout: float = 10.0, **kw):
    from ipc.protocols.dhcpd import DHCPD
    return provider_call(args, DHCPD, "dhcpd", method, timeout, **kw)


def cmd_dhcp(args) -> int:
    if args.dhcp_cmd == "pool":
        start, sep, end = args.range.partition("-")
        if not sep:
            raise CliError("qnet dhcp pool: RANGE is FIRST-LAST, e.g. 10.77.1.10-10.77.1.99", EXIT_USAGE)
        call(args, "dhcp_pool", port=args.port, start=_addr(start.strip()), end=_addr(end.strip()))
        print(f"{args.port}: pool {start.strip()} - {end.strip()}")
        return 0
    rows = dhcpd_call(args, "leases")
    st = dhcpd_call(args, "status")
    if args.json:
        out_json({"leases": rows, "pools": st.get("pools", {}), "clients": st.get("clients", {})})
        return 0
    for r in rows:
        r["expires"] = "never" if r["expires_in"] is None else f"{r['expires_in']} s"
    print(table(rows, [("port", "PORT"), ("role", "ROLE"), ("address", "ADDRESS"), ("mac", "MAC"),
                       ("state", "STATE"), ("expires", "EXPIRES"), ("hostname", "HOSTNAME")]))
    for port, pool in sorted(st.get("pools", {}).items()):
        note = "  EXHAUSTED: new clients get no offer" if pool["exhausted"] else ""
        print(f"pool {port}: {pool['pool_start']} - {pool['pool_end']}{note}")
    return 0


def add_dhcp_commands(sub) -> None:
    from .cli import _Parser
    p = sub.add_parser("dhcp", help="DHCP leases (both roles) and server pools")
    ps = p.add_subparsers(dest="dhcp_cmd", metavar="leases|pool", parser_class=_Parser)
    ls = ps.add_parser("leases", help="every lease we gave out or hold")
    ls.add_argument("--json", action="store_true")
    pl = ps.add_parser("pool", help="qnet dhcp pool PORT FIRST-LAST")
    pl.add_argument("port")
    pl.add_argument("range")
    p.set_defaults(func=cmd_dhcp, dhcp_cmd="leases", json=False)


COMMAND_MODULES.append(add_dhcp_commands)
