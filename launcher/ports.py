"""Ports: the launcher owns their configuration and re-asserts it to netstack.

A port is a backend handle (held here), an ``ethdriver.PORT`` instance that
drives it, and a netstack device with addresses and routes. The configuration
comes from the manifest's ``[ports.NAME]`` tables and from `qnet port/addr/route`
commands; it is kept in RUN/config.json and reconciled into every new netstack
incarnation (idempotent calls: reconcile, don't replay logs).

    [ports.up0]
    backend = "tap"            # tap | stream | dgram
    tap = "qtap0"              # the TAP interface (backend tap)
    create = true              # create the TAP if missing
    mac = "02:00:00:00:00:01"  # our MAC on this port (default: derived from the name)
    mtu = 1500
    forwarding = true
    addresses = ["10.0.0.1/24", "2001:db8:1::1/64"]   # IPv4 and IPv6 (a link-local one is made)
    offloads = true            # TAP only: checksum and TSO/GSO offloads (docs/manifest.md)
    fault = "loss=0.01,delay=0.3"  # the driver's fault injector (docs/fault-injection.md)
    ra = { rdnss = ["2001:db8:1::53"] }  # router mode: Router Advertisements of the
                               # port's /64s (or prefixes = [...]); ra = true: all defaults

    [[routes]]
    prefix = "0.0.0.0/0"
    via = "10.0.0.254"
    dev = "up0"                # optional; needed with a link-local (fe80::) via
    metric = 0

    [[routes]]
    prefix = "::/0"            # IPv6: the same fields; no table
    via = "2001:db8:1::fffe"
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from typing import Any

from ipc import errors
from ipc.protocols.netstack import NETSTACK, ROUTE_TABLE

from .manifest import ComponentSpec, HandleSpec, ManifestError
from .supervisor import Call, Instance, Sleep, StartFailed, Steps, run_blocking

log = logging.getLogger("qnet.launcher")

BACKENDS = ("tap", "stream", "dgram")
_PORT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,14}$")
# A configuration change waits for netstack (or dhcpd) across one crash or hang and the
# respawn that follows (heartbeat_timeout + a start), never longer than the CLI's call.
CALL_TIMEOUT = 2.0
CONFIG_DEADLINE = 8.0
_PORT_KEYS = {"backend", "tap", "create", "mac", "mtu", "forwarding", "addresses", "path", "peer_path", "dhcp",
              "vnet_hdr", "pool", "link", "offloads", "fault", "ra"}
_RA_KEYS = {"prefixes", "mtu", "rdnss", "dnssl", "managed", "other", "router_lifetime"}


def validate_port(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """A checked, normalised port config; raises ValueError with a clear sentence."""
    if not _PORT_RE.match(name):
        raise ValueError(f"port name {name!r}: letters, digits, '-', '_', at most 15, starting with a letter")
    unknown = set(cfg) - _PORT_KEYS
    if unknown:
        raise ValueError(f"port {name}: unknown field(s) {', '.join(sorted(unknown))}")
    backend = cfg.get("backend", "tap")
    if backend not in BACKENDS:
        raise ValueError(f"port {name}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    out: dict[str, Any] = {"backend": backend, "mtu": int(cfg.get("mtu", 1500)),
                           "forwarding": bool(cfg.get("forwarding", True)), "mac": cfg.get("mac"),
                           "addresses": [], "dhcp": cfg.get("dhcp")}
    if not 576 <= out["mtu"] <= 65535:
        raise ValueError(f"port {name}: mtu must be 576..65535")
    if out["mac"] is not None and not re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", str(out["mac"]).lower()):
        raise ValueError(f"port {name}: bad mac {out['mac']!r}")
    if backend == "tap":
        out["tap"] = str(cfg.get("tap") or name)
        out["create"] = bool(cfg.get("create", True))
        out["vnet_hdr"] = bool(cfg.get("vnet_hdr", False))
        if cfg.get("offloads"):
            # Only set when asked, so a port saved before offloads existed compares equal.
            out["offloads"] = True
            out["vnet_hdr"] = True  # IFF_VNET_HDR can only be chosen when the fd is attached
    elif cfg.get("offloads"):
        raise ValueError(f"port {name}: offloads need backend tap")
    elif backend == "stream":
        if not cfg.get("path"):
            raise ValueError(f"port {name}: backend stream needs path (the unix socket QEMU connects to)")
        out["path"] = str(cfg["path"])
    else:
        if not cfg.get("path") or not cfg.get("peer_path"):
            raise ValueError(f"port {name}: backend dgram needs path (ours) and peer_path (QEMU's local.path)")
        out["path"], out["peer_path"] = str(cfg["path"]), str(cfg["peer_path"])
    if cfg.get("fault"):
        from components.ethdriver.backends.fault import parse_fault_spec
        # Kept in its canonical text, so the same faults written two ways compare equal.
        try:
            out["fault"] = str(parse_fault_spec(cfg["fault"]))
        except ValueError as exc:
            raise ValueError(f"port {name}: {exc}") from None
    addresses = cfg.get("addresses", [])
    if not isinstance(addresses, list):
        raise ValueError(f"port {name}: addresses must be a list of addresses with their length")
    for a in addresses:
        out["addresses"].append(_interface(name, a))
    if out["dhcp"] not in (None, "client", "server"):
        raise ValueError(f"port {name}: dhcp must be 'client' or 'server'")
    pool = cfg.get("pool")
    if pool is not None:
        try:
            out["pool"] = {"start": str(ipaddress.IPv4Address(pool["start"])),
                           "end": str(ipaddress.IPv4Address(pool["end"]))}
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"port {name}: pool must be {{start = A.B.C.D, end = A.B.C.D}}") from None
    ra = cfg.get("ra")
    if ra is not None and ra is not False:
        # Only set when asked, so a port saved before router mode existed compares equal.
        out["ra"] = validate_ra(name, ra, out)
    return out


def validate_ra(port: str, ra: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Router mode's settings, checked and normalised (every key present); ``true`` is all the
    defaults. No prefixes means the /64s of the port's IPv6 addresses, which netstack finds
    again each time the settings are asserted; the checks are RaConfig's own (core/radv.py)."""
    from components.netstack.core.radv import RaConfig
    if ra is True:
        ra = {}
    if not isinstance(ra, dict):
        raise ValueError(f"port {port}: ra must be true or a table (prefixes, rdnss, dnssl, mtu, managed, "
                         f"other, router_lifetime)")
    unknown = set(ra) - _RA_KEYS
    if unknown:
        raise ValueError(f"port {port}: ra: unknown field(s) {', '.join(sorted(unknown))} "
                         f"({', '.join(sorted(_RA_KEYS))})")
    out: dict[str, Any] = {"prefixes": [], "mtu": ra.get("mtu"), "rdnss": [], "dnssl": [],
                           "managed": ra.get("managed", False), "other": ra.get("other", False),
                           "router_lifetime": ra.get("router_lifetime", 1800)}
    for key in ("prefixes", "rdnss", "dnssl"):
        if not isinstance(ra.get(key, []), list):
            raise ValueError(f"port {port}: ra: {key} must be a list")
    for p in ra.get("prefixes", []):
        try:
            net = ipaddress.IPv6Network(p, strict=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"port {port}: ra: bad prefix {p!r} ({exc})") from None
        if net.prefixlen != 64:
            raise ValueError(f"port {port}: ra: prefix {net} is not a /64 (hosts form addresses only in /64s)")
        out["prefixes"].append(str(net))
    for a in ra.get("rdnss", []):
        try:
            out["rdnss"].append(str(ipaddress.IPv6Address(a)))
        except (ValueError, TypeError):
            raise ValueError(f"port {port}: ra: bad DNS server {a!r} (an IPv6 address)") from None
    for d in ra.get("dnssl", []):
        if not isinstance(d, str) or not d or len(d) > 253:
            raise ValueError(f"port {port}: ra: bad search domain {d!r}")
        out["dnssl"].append(d)
    for key in ("managed", "other"):
        if type(out[key]) is not bool:
            raise ValueError(f"port {port}: ra: {key} must be true or false")
    mtu, lifetime = out["mtu"], out["router_lifetime"]
    if mtu is not None and (type(mtu) is not int or not 1280 <= mtu <= cfg.get("mtu", 65535)):
        raise ValueError(f"port {port}: ra: mtu {mtu!r} must be 1280..{cfg.get('mtu', 65535)} (the port's MTU)")
    if type(lifetime) is not int or not 0 <= lifetime <= 0xFFFF:
        raise ValueError(f"port {port}: ra: router_lifetime {lifetime!r} must be 0..65535 s")
    prefixes = out["prefixes"] or _own_64s(cfg)
    if not prefixes:
        raise ValueError(f"port {port}: ra: no prefix to advertise: give ra.prefixes or an IPv6 address/64 "
                         f"on the port")
    try:
        RaConfig(prefixes=[ipaddress.IPv6Network(p) for p in prefixes], mtu=mtu,
                 rdnss=[ipaddress.IPv6Address(a) for a in out["rdnss"]], dnssl=out["dnssl"],
                 managed=out["managed"], other=out["other"], router_lifetime=lifetime).validate()
    except ValueError as exc:
        raise ValueError(f"port {port}: ra: {str(exc).removeprefix('radv: ')}") from None
    return out


def _own_64s(cfg: dict) -> list[str]:
    """The /64s of a port's configured global IPv6 addresses (router mode's default prefixes)."""
    nets = []
    for a in cfg.get("addresses", []):
        iface = ipaddress.ip_interface(a)
        if iface.version == 6 and iface.network.prefixlen == 64 and not iface.ip.is_link_local \
                and str(iface.network) not in nets:
            nets.append(str(iface.network))
    return nets


def _interface(port: str, a: Any) -> str:
    """An IPv4 or IPv6 interface address in its canonical text; ValueError with a clear sentence."""
    if not isinstance(a, str) or "/" not in a:
        raise ValueError(f"port {port}: bad address {a!r} (want A.B.C.D/LEN or an IPv6 address/LEN)")
    try:
        iface = ipaddress.ip_interface(a)
    except ValueError:
        raise ValueError(f"port {port}: bad address {a!r} (want A.B.C.D/LEN or an IPv6 address/LEN)") from None
    if iface.version == 6:
        ip = iface.ip
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.ipv4_mapped is not None \
                or ip.scope_id is not None:
            raise ValueError(f"port {port}: {a!r} cannot be an interface address "
                             f"(multicast, ::, ::1, IPv4-mapped or with a %zone)")
    return str(iface)


def is_ipv6(text: str) -> bool:
    """Whether an address, interface or prefix as kept in the configuration is IPv6's."""
    return ":" in text


def ipv4_addresses(cfg: dict) -> list[str]:
    return [a for a in cfg.get("addresses", []) if not is_ipv6(a)]


def validate_route(r: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    """A checked, normalised route; deleting, neither via nor dev is needed (they narrow what
    is removed, as `ip route del`)."""
    if not isinstance(r, dict):
        raise ValueError("route: must be a table with prefix and via or dev")
    unknown = set(r) - {"prefix", "via", "dev", "metric", "table"}
    if unknown:
        raise ValueError(f"route: unknown field(s) {', '.join(sorted(unknown))} (prefix, via, dev, metric, table)")
    try:
        net = ipaddress.ip_network(r["prefix"], strict=True)
    except KeyError:
        raise ValueError("route: prefix is missing") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"route: bad prefix {r.get('prefix')!r}: {exc}") from None
    prefix = str(net)
    dev = r.get("dev")
    if dev is not None and (not isinstance(dev, str) or not _PORT_RE.match(dev)):
        raise ValueError(f"route {prefix}: bad dev {dev!r} (a port name)")
    via = r.get("via")
    if via is not None:
        try:
            gw = ipaddress.ip_address(via)
        except (ValueError, TypeError):
            raise ValueError(f"route {prefix}: bad gateway {via!r}") from None
        if gw.version != net.version:
            raise ValueError(f"route {prefix}: gateway {via} is not an IPv{net.version} address")
        if gw.version == 6:
            if gw.scope_id is not None:     # fe80::1%p0: the zone is the port
                if dev is not None and dev != gw.scope_id:
                    raise ValueError(f"route {prefix}: gateway {via} names zone {gw.scope_id}, but dev is {dev}")
                dev = gw.scope_id
                gw = ipaddress.IPv6Address(int(gw))
            if gw.is_multicast or gw.is_unspecified or gw.is_loopback:
                raise ValueError(f"route {prefix}: {gw} cannot be a gateway")
            if gw.is_link_local and dev is None:
                raise ValueError(f"route {prefix}: the link-local gateway {gw} needs 'dev PORT' (its link)")
        via = str(gw)
    if via is None and dev is None and not deleting:
        raise ValueError(f"route {prefix}: needs 'via' or 'dev'")
    metric = r.get("metric", 0)
    if type(metric) is not int or not 0 <= metric <= 0xFFFFFFFF:
        raise ValueError(f"route {prefix}: bad metric {metric!r} (0..4294967295)")
    table = r.get("table")
    if table is not None and net.version == 6:
        raise ValueError(f"route {prefix}: IPv6 routes have no numbered tables (main only)")
    if table is not None and (type(table) is not int or not 1 <= table <= ROUTE_TABLE.hi):
        raise ValueError(f"route {prefix}: table must be 1-{ROUTE_TABLE.hi} (absent: main)")
    return {"prefix": prefix, "via": via, "dev": dev, "metric": metric, "table": table}


def _route_key(r: dict) -> tuple:
    """What tells two routes apart (the metric does not: a second add replaces it)."""
    return r.get("prefix"), r.get("via"), r.get("dev"), r.get("table")


def _deleted_by(x: dict, r: dict) -> bool:
    """Whether a kept route x goes with the deletion r (its via and dev, when absent, match any)."""
    return x.get("prefix") == r["prefix"] and x.get("table") == r.get("table") \
        and r["via"] in (None, x.get("via")) and r["dev"] in (None, x.get("dev"))


def _line_of(graph, header: str, nth: int = 0) -> str:
    """FILE:LINE of a table header in the manifest (its nth occurrence, for [[arrays]]), or
    FILE when it cannot be found."""
    try:
        with open(graph.source, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip().replace(" ", "").startswith(header.replace(" ", "")):
                    if nth == 0:
                        return f"{graph.source}:{i}"
                    nth -= 1
    except OSError:
        pass
    return graph.source


def manifest_ports(graph) -> tuple[dict[str, dict], list[dict]]:
    ports, routes = {}, []
    for name, cfg in (graph.raw.get("ports") or {}).items():
        where = _line_of(graph, f"[ports.{name}]")
        if not isinstance(cfg, dict):
            raise ManifestError(f"{where}: [ports.{name}] must be a table")
        try:
            ports[name] = validate_port(name, cfg)
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"{where}: [ports.{name}]: {exc}") from None
    if not isinstance(graph.raw.get("routes") or [], list):
        raise ManifestError(f"{graph.source}: routes must be [[routes]] tables")
    for n, r in enumerate(graph.raw.get("routes") or []):
        try:
            routes.append(validate_route(r))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{_line_of(graph, '[[routes]]', n)}: [[routes]]: {exc}") from None
    return ports, routes


def _addr_call(port: str, address: str, present: bool) -> tuple:
    """netstack's method and arguments for an address of either version."""
    method = ("addr6_" if is_ipv6(address) else "addr_") + ("add" if present else "del")
    return method, {"port": port, "address": address}


def _route_call(r: dict, present: bool) -> tuple:
    kw = {"prefix": r["prefix"], "gateway": r["via"], "device": r["dev"]}
    if present:
        kw["metric"] = r["metric"]
    if is_ipv6(r["prefix"]):
        return ("route6_add" if present else "route6_del"), kw
    return ("route_add" if present else "route_del"), {**kw, "table": r.get("table")}


class PortManager:
    """Every operation that talks to netstack or dhcpd is a generator of steps (supervisor.Tasks):
    the launcher runs it on its loop and answers the CLI when it ends, so a hung or failed
    netstack never stops the launcher (the VM manager runs them blocking: run_blocking)."""

    def __init__(self, launcher):
        self.l = launcher
        self.path = os.path.join(launcher.run_dir, "config.json")
        self.ports: dict[str, dict] = {}
        self.routes: list[dict] = []
        self.driver_template = self._find_template()
        # A config.json at start-up was left by a launcher that died (a clean shutdown moves it
        # to config.last.json): its configuration is brought back (restore_left).
        self.left = self._read(self.path)

    @staticmethod
    def _read(path: str) -> dict | None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s); its configuration is not restored", path, exc)
            return None
        return data if isinstance(data, dict) else None

    def retire_config(self) -> None:
        """A clean shutdown: the next `qnet up` starts from the manifest alone."""
        try:
            os.replace(self.path, os.path.join(os.path.dirname(self.path), "config.last.json"))
        except FileNotFoundError:
            pass

    def _find_template(self) -> ComponentSpec | None:
        for c in self.l.graph.templates.values():
            if any(p == "qnet.device" for p, _ in c.uses):
                return c
        return None

    @property
    def netstack_name(self) -> str | None:
        return self.l.graph.provider_of("qnet.netstack")

    def _available(self, name: str) -> None:
        """Refuse at once, with the way back, when the component cannot answer for a while."""
        inst = self.l.supervisor.instances.get(name)
        if inst is not None and inst.state in ("failed", "stopped"):
            why = inst.failure or inst.last_exit or inst.state
            hint = "" if "qnet restart" in why else f"; 'qnet restart {name}' brings it back"
            raise errors.RemoteError(f"{name} is {inst.state} ({why}){hint}", code="failed")

    def _call(self, component: str | None, protocol, method: str, **kw) -> Steps:
        """One idempotent call, retried while its component restarts (a crash, a hang the
        supervisor ends); refused at once while the component is failed or stopped."""
        if component is None:
            raise errors.RemoteError(f"this graph has no provider of {protocol.name}", code="failed")
        endpoint = self.l.supervisor.stable_endpoint(component, "rpc")
        deadline = time.monotonic() + CONFIG_DEADLINE
        while True:
            self._available(component)
            try:
                return (yield Call(endpoint, protocol, method, CALL_TIMEOUT, kw))
            except (errors.Timeout, errors.Unavailable) as exc:
                if time.monotonic() + CALL_TIMEOUT > deadline:
                    inst = self.l.supervisor.instances.get(component)
                    state = f" (it is {inst.state})" if inst is not None else ""
                    raise errors.RemoteError(f"{component} did not answer within {CONFIG_DEADLINE:g} s{state}: "
                                             f"{exc}", code="failed") from None
                yield Sleep(0.1)

    def _ns(self, method: str, **kw) -> Steps:
        return self._call(self.netstack_name, NETSTACK, method, **kw)

    def _ns_call(self, call: tuple[str, dict]) -> Steps:
        method, kw = call
        return self._ns(method, **kw)

    def _dhcpd(self, method: str, **kw) -> Steps:
        from ipc.protocols.dhcpd import DHCPD
        return self._call(self.dhcpd_name, DHCPD, method, **kw)

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            vms = self.l.vms.definitions() if getattr(self.l, "vms", None) is not None else []
            json.dump({"ports": self.ports, "routes": self.routes, "vms": vms}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- drivers ----------------------------------------------------------------------------
    def driver_spec(self, name: str, cfg: dict) -> ComponentSpec:
        t = self.driver_template
        if t is None:
            raise errors.RemoteError("this graph declares no driver component (one that uses qnet.device)",
                                     code="failed")
        args = dict(t.args, instance=name, backend=cfg["backend"], mtu=cfg["mtu"])
        if cfg.get("fault"):
            args["fault"] = cfg["fault"]
        if cfg["backend"] == "tap":
            handles = [HandleSpec("tap", "tap", {"name": cfg["tap"], "create": cfg["create"],
                                                  "vnet_hdr": cfg.get("vnet_hdr", False)})]
            args["ifname"] = cfg["tap"]
            if cfg.get("offloads"):
                args["offloads"] = True
        elif cfg["backend"] == "stream":
            handles = [HandleSpec("listen", "unix-listen", {"path": cfg["path"]})]
        else:
            handles = [HandleSpec("dgram", "unix-dgram", {"path": cfg["path"]})]
            args["peer_path"] = cfg["peer_path"]
        return ComponentSpec(name=f"{t.name}.{name}", template=t.name, module=t.module, provides=[],
                             uses=list(t.uses), after=[], restart=t.restart, max_restarts=t.max_restarts,
                             restart_window=t.restart_window, backoff_initial=t.backoff_initial,
                             backoff_max=t.backoff_max, args=args, handles=handles, instance=name,
                             heartbeat_timeout=t.heartbeat_timeout, cpus=t.cpus)

    def add(self, name: str, cfg: dict, *, save: bool = True) -> Steps:
        cfg = validate_port(name, cfg)
        existing = self.ports.get(name)
        volatile = ("addresses", "mac", "pool", "link", "ra")
        if existing is not None and {k: v for k, v in existing.items() if k not in volatile} != \
                {k: v for k, v in cfg.items() if k not in volatile}:
            raise errors.RemoteError(f"port {name} exists with other settings; 'qnet port del {name}' first",
                                     code="exists")
        spec = self.driver_spec(name, cfg)
        self._available(self.netstack_name)
        sup = self.l.supervisor
        new_driver = spec.name not in sup.instances
        try:
            # netstack first, so the driver's attach finds its port
            yield from self._netstack_port(name, cfg)
            inst = sup.instances.get(spec.name)
            if inst is None:
                inst = Instance(spec)
                sup.instances[spec.name] = inst
                self.l.graph.order.append(spec.name)
            if inst.incarnation is None or inst.state not in ("running", "starting", "unresponsive"):
                try:
                    yield from sup.start(inst)
                except StartFailed as exc:
                    inst.set_state("failed")
                    inst.last_exit = str(exc)[:128]
                    sup.close_handles(inst)
                    raise errors.RemoteError(str(exc), code="failed") from None
        except Exception:
            # A failed add changes nothing: no half-made port in netstack or dhcpd that
            # `port list` would show and `port del` (which knows only self.ports) could not remove.
            if existing is None:
                yield from self._undo_add(name, cfg, spec.name if new_driver else None)
            raise
        if cfg["backend"] == "tap":
            try:
                from components.ethdriver.backends.tap import set_link_up
                set_link_up(cfg["tap"], True)
            except OSError:
                pass  # moved to another namespace: its owner brings it up
        if existing is None:
            self.ports[name] = cfg
        else:
            self.ports[name] = {k: v for k, v in cfg.items() if k != "ra"}
            self.ports[name]["addresses"] = existing["addresses"]
            if "ra" in existing:
                self.ports[name]["ra"] = existing["ra"]
        if save:
            self.save()
        return self.ports[name]

    def _undo_add(self, name: str, cfg: dict, driver: str | None) -> Steps:
        if cfg.get("dhcp") and self.dhcpd_name:
            try:
                yield from self._dhcpd("server_del" if cfg["dhcp"] == "server" else "client_del", port=name)
            except errors.IpcError as exc:
                log.warning("port %s: undoing a failed add: dhcpd did not drop it: %s", name, exc)
        if driver is not None:
            self._remove_driver(driver)
        try:
            yield from self._ns("port_del", name=name)
        except errors.IpcError as exc:
            log.warning("port %s: undoing a failed add: netstack did not remove it: %s", name, exc)

    def _remove_driver(self, spec_name: str) -> None:
        sup = self.l.supervisor
        inst = sup.instances.pop(spec_name, None)
        if inst is None:
            return
        if spec_name in self.l.graph.order:
            self.l.graph.order.remove(spec_name)
        if inst.incarnation is not None:
            sup.retire(inst.incarnation)
            inst.incarnation = None
        sup.close_handles(inst)
        for kind in ("rpc", "data", "pub", "dgram"):
            try:
                os.unlink(os.path.join(self.l.run_dir, f"{spec_name}.{kind}"))
            except FileNotFoundError:
                pass

    def _netstack_port(self, name: str, cfg: dict) -> Steps:
        row = yield from self._ns("port_add", name=name, kind="ethernet", mac=cfg.get("mac"), mtu=cfg["mtu"],
                                  forwarding=cfg["forwarding"])
        for a in cfg["addresses"]:
            yield from self._ns_call(_addr_call(name, a, True))
        if cfg.get("ra"):
            yield from self._ns("ra_set", port=name, **cfg["ra"])
        if cfg.get("mac") is None and row.mac:
            cfg["mac"] = row.mac  # keep the derived MAC: the DHCP client identifies itself with it
        yield from self._dhcp_port(name, cfg)

    # -- DHCP roles (dhcpd owns the protocol; the launcher owns which port has which role) ------------
    @property
    def dhcpd_name(self) -> str | None:
        return self.l.graph.provider_of("qnet.dhcpd")

    def _dhcp_port(self, name: str, cfg: dict) -> Steps:
        role = cfg.get("dhcp")
        if role is None:
            return
        if self.dhcpd_name is None:
            raise errors.RemoteError(f"port {name}: dhcp {role} needs a dhcpd component in the graph", code="failed")
        if role == "server":
            v4 = ipv4_addresses(cfg)
            if not v4:
                raise errors.RemoteError(f"port {name}: a DHCP server needs an IPv4 address on the port "
                                         f"(--addr A.B.C.1/24)", code="bad_argument")
            pool = cfg.get("pool") or {}
            yield from self._dhcpd("server_add", port=name, interface=v4[0],
                                   pool_start=pool.get("start"), pool_end=pool.get("end"))
        else:
            yield from self._dhcpd("client_add", port=name, mac=cfg["mac"], hostname=None)

    def set_pool(self, name: str, start: str, end: str) -> Steps:
        cfg = self.ports.get(name)
        if cfg is None or cfg.get("dhcp") != "server":
            raise errors.RemoteError(f"port {name!r} has no DHCP server", code="not_found")
        yield from self._dhcpd("pool", port=name, pool_start=start, pool_end=end)
        cfg["pool"] = {"start": start, "end": end}
        self.save()
        return True

    def reconcile_dhcpd(self) -> Steps:
        for name, cfg in list(self.ports.items()):
            try:
                yield from self._dhcp_port(name, cfg)
            except errors.IpcError as exc:
                log.warning("reconciling dhcpd for %s failed: %s", name, exc)

    def delete(self, name: str) -> Steps:
        cfg = self.ports.pop(name, None)
        if cfg is None:
            raise errors.RemoteError(f"no port {name!r}", code="not_found")
        self.save()
        if cfg.get("dhcp") and self.dhcpd_name:
            try:
                yield from self._dhcpd("server_del" if cfg["dhcp"] == "server" else "client_del", port=name)
            except errors.IpcError as exc:
                log.warning("port %s: dhcpd did not drop it: %s", name, exc)
        if self.driver_template is not None:
            self._remove_driver(f"{self.driver_template.name}.{name}")
        self.routes = [r for r in self.routes if r.get("dev") != name]
        self.save()
        try:
            yield from self._ns("port_del", name=name)
        except errors.IpcError as exc:
            # Gone from the configuration: a netstack that comes back is not given it again.
            log.warning("port %s: netstack did not remove it: %s", name, exc)
        return True

    def set(self, name: str, forwarding: bool | None, mtu: int | None) -> Steps:
        cfg = self.ports.get(name)
        if cfg is None:
            raise errors.RemoteError(f"no port {name!r}", code="not_found")
        yield from self._ns("port_set", name=name, forwarding=forwarding, mtu=mtu, link=None)
        if forwarding is not None:
            cfg["forwarding"] = forwarding
        if mtu is not None:
            cfg["mtu"] = mtu
        self.save()
        return cfg

    def link(self, name: str, up: bool) -> bool:
        """The port's administrative link (a VM's `set_link`): netstack and dhcpd are told.
        Called by the VM manager, which runs blocking."""
        return run_blocking(self._link(name, up))

    def _link(self, name: str, up: bool) -> Steps:
        cfg = self.ports.get(name)
        if cfg is None:
            raise errors.RemoteError(f"no port {name!r}", code="not_found")
        yield from self._ns("port_set", name=name, link=up)
        cfg["link"] = up
        self.save()
        if cfg.get("dhcp") and self.dhcpd_name:
            try:
                yield from self._dhcpd("link", port=name, up=up)
            except errors.IpcError as exc:
                log.warning("port %s: dhcpd was not told of the link change: %s", name, exc)
        return True

    def addr(self, port: str, address: str, present: bool) -> Steps:
        """An IPv4 or IPv6 address (told apart by its text) added or removed."""
        cfg = self.ports.get(port)
        if cfg is None:
            raise errors.RemoteError(f"no port {port!r}", code="not_found")
        ok = yield from self._ns_call(_addr_call(port, address, present))
        if present and address not in cfg["addresses"]:
            cfg["addresses"].append(address)
        if not present and address in cfg["addresses"]:
            cfg["addresses"].remove(address)
        self.save()
        return bool(ok)

    def route(self, r: dict, present: bool) -> Steps:
        r = validate_route(r, deleting=not present)
        if present:
            yield from self._ns_call(_route_call(r, True))
        else:
            ok = yield from self._ns_call(_route_call(r, False))
            if not ok:
                raise errors.RemoteError(f"no route {r['prefix']}"
                                         + (f" in table {r['table']}" if r["table"] else ""), code="not_found")
        if present:
            key = _route_key(r)
            self.routes = [x for x in self.routes if _route_key(x) != key] + [r]
        else:
            self.routes = [x for x in self.routes if not _deleted_by(x, r)]
        self.save()
        return True

    def ra(self, port: str, ra: dict | None) -> Steps:
        """Router mode on a port (ra: the settings) or off (None), kept like its addresses."""
        cfg = self.ports.get(port)
        if cfg is None:
            raise errors.RemoteError(f"no port {port!r}", code="not_found")
        if ra is None:
            ok = yield from self._ns("ra_del", port=port)
            had = cfg.pop("ra", None) is not None
            self.save()
            return bool(ok) or had
        try:
            ra = validate_ra(port, ra, cfg)
        except ValueError as exc:
            raise errors.RemoteError(str(exc), code="bad_argument") from None
        applied = yield from self._ns("ra_set", port=port, **ra)
        cfg["ra"] = ra
        self.save()
        return applied

    # -- reconciliation ----------------------------------------------------------------------
    def reconcile(self) -> Steps:
        """Re-assert every port, address and route into netstack (all calls idempotent)."""
        if self.netstack_name is None:
            return
        try:
            for name, cfg in list(self.ports.items()):
                yield from self._ns("port_add", name=name, kind="ethernet", mac=cfg.get("mac"), mtu=cfg["mtu"],
                                    forwarding=cfg["forwarding"])
                if cfg.get("link") is False:
                    yield from self._ns("port_set", name=name, link=False)
                for a in list(cfg["addresses"]):
                    yield from self._ns_call(_addr_call(name, a, True))
                if cfg.get("ra"):
                    # After the addresses: no prefixes means the /64s of the port's addresses. A
                    # refusal (those addresses deleted since) leaves the other ports and routes be.
                    try:
                        yield from self._ns("ra_set", port=name, **cfg["ra"])
                    except errors.RemoteError as exc:
                        log.warning("router mode on port %s not re-asserted: %s", name, exc)
            for r in list(self.routes):
                yield from self._ns_call(_route_call(r, True))
        except errors.IpcError as exc:
            log.warning("reconciling netstack failed: %s", exc)

    def start_declared(self) -> None:
        ports, routes = manifest_ports(self.l.graph)
        for name, cfg in ports.items():
            self.l.progress(f"port {name} ({cfg['backend']}) ...")
            run_blocking(self.add(name, cfg, save=False))
        for r in routes:
            run_blocking(self.route(r, True))
        self.restore_left(ports, routes)
        self.save()

    def restore_left(self, declared: dict[str, dict], declared_routes: list[dict]) -> None:
        """Bring back what a launcher that died held: its ports (drivers re-attached), addresses,
        routes and DHCP roles. Its VMs died with it (PR_SET_PDEATHSIG): they are reported, and
        their ports are not re-created without them."""
        left, self.left = self.left, None
        if not left:
            return
        vms = [v for v in left.get("vms") or [] if isinstance(v, dict) and v.get("name")]
        vm_ports = {v["name"] for v in vms}
        saved_ports = left.get("ports") or {}
        n_ports = n_routes = 0
        for name, cfg in saved_ports.items() if isinstance(saved_ports, dict) else ():
            if name in vm_ports:
                continue
            if name in declared:
                # The manifest's port stays; addresses added at run time come back.
                for a in (cfg.get("addresses") or []) if isinstance(cfg, dict) else []:
                    if a not in self.ports[name]["addresses"]:
                        try:
                            run_blocking(self.addr(name, a, True))
                        except errors.IpcError as exc:
                            log.warning("restoring %s on port %s: %s", a, name, exc)
                # ... and so does router mode as it was set at run time.
                ra = cfg.get("ra") if isinstance(cfg, dict) else None
                if ra and ra != self.ports[name].get("ra"):
                    try:
                        run_blocking(self.ra(name, ra))
                    except errors.IpcError as exc:
                        log.warning("restoring router mode on port %s: %s", name, exc)
                continue
            self.l.progress(f"port {name} (restored) ...")
            try:
                run_blocking(self.add(name, cfg, save=False))
                n_ports += 1
            except (errors.IpcError, ValueError, TypeError, StartFailed) as exc:
                log.error("port %s left by the previous launcher could not be restored: %s", name, exc)
        for r in left.get("routes") or []:
            if not isinstance(r, dict) or r.get("dev") in vm_ports:
                continue
            key = _route_key(r)
            if any(_route_key(x) == key for x in self.routes):
                continue
            try:
                run_blocking(self.route(r, True))
                n_routes += 1
            except (errors.IpcError, ValueError, TypeError, KeyError) as exc:
                log.error("route %s left by the previous launcher could not be restored: %s", r.get("prefix"), exc)
        log.warning("restored the configuration a launcher that died left in %s: %d port(s), %d route(s)%s",
                    self.path, n_ports, n_routes,
                    f"; VMs that died with it: {', '.join(sorted(vm_ports))}" if vm_ports else "")
        if vms and getattr(self.l, "vms", None) is not None:
            self.l.vms.died_with_launcher(vms)
