"""`qnet ra`: router mode, a port that sends Router Advertisements (RFC 4861 §6.2).

Setting and removing go through the launcher, which keeps the settings with the port and
re-asserts them to a restarted netstack (after the port's addresses); the list is netstack's.
A separate module from cli_net.py, which is long enough.
"""
from __future__ import annotations

import argparse
import ipaddress

from .cli import COMMAND_MODULES, CliError, EXIT_USAGE, call, out_json, table
from .cli_net import _addr6, _number_in, _prefix, netstack_call


def _prefix64(text: str) -> str:
    try:
        prefix = _prefix(text, 6)
    except CliError as exc:
        raise CliError(f"qnet ra set: {exc}", EXIT_USAGE) from None
    if ipaddress.IPv6Network(prefix).prefixlen != 64:
        # RFC 4862 §5.5.3 (d): hosts form addresses only from /64 prefixes.
        raise CliError(f"qnet ra set: {text} is not a /64 (hosts form addresses only in /64s)", EXIT_USAGE)
    return prefix


def _dns_server(text: str) -> str:
    try:
        addr, zone = _addr6(text)
    except CliError as exc:
        raise CliError(f"qnet ra set: --rdnss: {exc}", EXIT_USAGE) from None
    if zone is not None:
        raise CliError(f"qnet ra set: --rdnss {text}: a DNS server is sent as a bare address, no %zone",
                       EXIT_USAGE)
    return addr


def _summary(r: dict) -> str:
    parts = [", ".join(r["prefixes"])]
    if r["rdnss"]:
        parts.append("rdnss " + ",".join(r["rdnss"]))
    if r["dnssl"]:
        parts.append("dnssl " + ",".join(r["dnssl"]))
    if r["mtu"] is not None:
        parts.append(f"mtu {r['mtu']}")
    flags = "".join(f for f, on in (("M", r["managed"]), ("O", r["other"])) if on)
    if flags:
        parts.append(f"flags {flags}")
    parts.append(f"router lifetime {r['router_lifetime']} s")
    return "; ".join(parts)


def cmd_ra(args) -> int:
    if args.ra_cmd == "set":
        if 0 < args.lifetime < 600:
            # RFC 4861 §6.2.1: at least MaxRtrAdvInterval (netstack advertises every 200-600 s).
            raise CliError(f"qnet ra set: --lifetime {args.lifetime}: 0 (not a default router) or 600..65535 s",
                           EXIT_USAGE)
        res = call(args, "ra_set", port=args.port, prefixes=[_prefix64(p) for p in args.prefixes],
                   mtu=args.mtu, rdnss=[_dns_server(a) for a in args.rdnss or []],
                   dnssl=list(args.dnssl or []), managed=args.managed, other=args.other,
                   router_lifetime=args.lifetime)
        if args.json:
            out_json(res)
        else:
            state = "advertising" if res["advertising"] else \
                "router mode (advertising once its link-local address is preferred)"
            print(f"{args.port}: {state}: {_summary(res)}")
        return 0
    if args.ra_cmd == "del":
        if not call(args, "ra_del", port=args.port):
            raise CliError(f"{args.port}: not in router mode")
        print(f"{args.port}: router mode off (a final advertisement with router lifetime 0 was sent)")
        return 0
    rows = netstack_call(args, "ra_list")
    if args.json:
        out_json(rows)
        return 0
    for r in rows:
        r["flags"] = "".join(f for f, on in (("M", r["managed"]), ("O", r["other"])) if on) or "-"
        r["state"] = "advertising" if r["advertising"] else "waiting"
    print(table(rows, [("port", "PORT"), ("prefixes", "PREFIXES"), ("rdnss", "RDNSS"), ("dnssl", "DNSSL"),
                       ("mtu", "MTU"), ("flags", "FLAGS"), ("router_lifetime", "LIFETIME"), ("state", "STATE")]))
    return 0


def add_commands(sub) -> None:
    from .cli import _Parser
    p = sub.add_parser("ra", help="router mode: Router Advertisements on a port (set, del, list)",
                       description="Router mode: the port advertises prefixes for SLAAC, DNS servers and "
                                   "itself as the default router (RFC 4861), answers Router Solicitations "
                                   "and no longer takes advertisements. The launcher keeps the settings "
                                   "with the port, as it keeps its addresses.")
    p.add_argument("--json", action="store_true")
    ps = p.add_subparsers(dest="ra_cmd", metavar="set|del|list", parser_class=_Parser)
    s = ps.add_parser("set", help="set PORT [PREFIX ...] [--rdnss ADDR]... [--dnssl DOMAIN]... [--mtu N] "
                                  "[--managed] [--other] [--lifetime S]",
                      description="Advertise on PORT. Without prefixes: the /64s of the port's IPv6 "
                                  "addresses, looked up again whenever the settings are re-asserted. "
                                  "Setting a port again replaces what it advertises.")
    s.add_argument("port")
    s.add_argument("prefixes", nargs="*", metavar="PREFIX", help="an IPv6 /64, e.g. 2001:db8:1::/64")
    s.add_argument("--rdnss", action="append", metavar="ADDR", help="a DNS server (repeatable; RFC 8106)")
    s.add_argument("--dnssl", action="append", metavar="DOMAIN", help="a DNS search domain (repeatable)")
    s.add_argument("--mtu", type=_number_in(1280, 65535, integer=True), metavar="N",
                   help="the MTU option (1280..the port's MTU); none sent without it")
    s.add_argument("--managed", action="store_true", help="the M flag: addresses from DHCPv6")
    s.add_argument("--other", action="store_true", help="the O flag: other configuration from DHCPv6")
    s.add_argument("--lifetime", type=_number_in(0, 65535, integer=True), default=1800, metavar="S",
                   help="router lifetime in seconds: 0 (not a default router) or 600..65535 (default 1800)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    d = ps.add_parser("del", help="del PORT: stop advertising (a final RA with router lifetime 0)")
    d.add_argument("port")
    ls = ps.add_parser("list", help="list [--json]: every port in router mode")
    ls.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=cmd_ra, ra_cmd="list", json=False)


COMMAND_MODULES.append(add_commands)
