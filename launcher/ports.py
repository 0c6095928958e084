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
    addresses = ["10.0.0.1/24"]
    offloads = true            # TAP only: checksum and TSO/GSO offloads (docs/manifest.md)
    fault = "loss=0.01,delay=0.3"  # the driver's fault injector (docs/fault-injection.md)

    [[routes]]
    prefix = "0.0.0.0/0"
    via = "10.0.0.254"
    dev = "up0"                # optional
    metric = 0
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
              "vnet_hdr", "pool", "link", "offloads", "fault"}


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
    for a in cfg.get("addresses", []):
        try:
            out["addresses"].append(str(ipaddress.IPv4Interface(a)))
        except ValueError:
            raise ValueError(f"port {name}: bad address {a!r} (want A.B.C.D/LEN)") from None
    if out["dhcp"] not in (None, "client", "server"):
        raise ValueError(f"port {name}: dhcp must be 'client' or 'server'")
    pool = cfg.get("pool")
    if pool is not None:
        try:
            out["pool"] = {"start": str(ipaddress.IPv4Address(pool["start"])),
                           "end": str(ipaddress.IPv4Address(pool["end"]))}
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"port {name}: pool must be {{start = A.B.C.D, end = A.B.C.D}}") from None
    return out


def validate_route(r: dict[str, Any]) -> dict[str, Any]:
    try:
        prefix = str(ipaddress.IPv4Network(r["prefix"], strict=True))
    except KeyError:
        raise ValueError("route: prefix is missing") from None
    except ValueError as exc:
        raise ValueError(f"route: bad prefix {r.get('prefix')!r}: {exc}") from None
    via = r.get("via")
    if via is not None:
        try:
            via = str(ipaddress.IPv4Address(via))
        except ValueError:
            raise ValueError(f"route {prefix}: bad gateway {via!r}") from None
    dev = r.get("dev")
    if via is None and dev is None:
        raise ValueError(f"route {prefix}: needs 'via' or 'dev'")
    metric = int(r.get("metric", 0))
    if not 0 <= metric <= 0xFFFFFFFF:
        raise ValueError(f"route {prefix}: bad metric")
    table = r.get("table")
    if table is not None and (type(table) is not int or not 1 <= table <= ROUTE_TABLE.hi):
        raise ValueError(f"route {prefix}: table must be 1-{ROUTE_TABLE.hi} (absent: main)")
    return {"prefix": prefix, "via": via, "dev": dev, "metric": metric, "table": table}


def _route_key(r: dict) -> tuple:
    """What tells two routes apart (the metric does not: a second add replaces it)."""
    return r.get("prefix"), r.get("via"), r.get("dev"), r.get("table")


def _line_of(graph, header: str) -> str:
    """FILE:LINE of a table header in the manifest, or FILE when it cannot be found."""
    try:
        with open(graph.source, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip().replace(" ", "").startswith(header.replace(" ", "")):
                    return f"{graph.source}:{i}"
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
    for r in graph.raw.get("routes") or []:
        try:
            routes.append(validate_route(r))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{_line_of(graph, '[[routes]]')}: [[routes]]: {exc}") from None
    return ports, routes


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
        volatile = ("addresses", "mac", "pool", "link")
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
        self.ports[name] = cfg if existing is None else {**cfg, "addresses": existing["addresses"]}
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
            yield from self._ns("addr_add", port=name, address=a)
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
            if not cfg["addresses"]:
                raise errors.RemoteError(f"port {name}: a DHCP server needs an address on the port "
                                         f"(--addr A.B.C.1/24)", code="bad_argument")
            pool = cfg.get("pool") or {}
            yield from self._dhcpd("server_add", port=name, interface=cfg["addresses"][0],
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
        cfg = self.ports.get(port)
        if cfg is None:
            raise errors.RemoteError(f"no port {port!r}", code="not_found")
        ok = yield from self._ns("addr_add" if present else "addr_del", port=port, address=address)
        if present and address not in cfg["addresses"]:
            cfg["addresses"].append(address)
        if not present and address in cfg["addresses"]:
            cfg["addresses"].remove(address)
        self.save()
        return bool(ok)

    def route(self, r: dict, present: bool) -> Steps:
        r = validate_route(r)
        if present:
            yield from self._ns("route_add", prefix=r["prefix"], gateway=r["via"], device=r["dev"],
                                metric=r["metric"], table=r["table"])
        else:
            ok = yield from self._ns("route_del", prefix=r["prefix"], gateway=r["via"], device=r["dev"],
                                     table=r["table"])
            if not ok:
                raise errors.RemoteError(f"no route {r['prefix']}"
                                         + (f" in table {r['table']}" if r["table"] else ""), code="not_found")
        key = _route_key(r)
        self.routes = [x for x in self.routes if _route_key(x) != key]
        if present:
            self.routes.append(r)
        self.save()
        return True

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
                    yield from self._ns("addr_add", port=name, address=a)
            for r in list(self.routes):
                yield from self._ns("route_add", prefix=r["prefix"], gateway=r["via"], device=r["dev"],
                                    metric=r["metric"], table=r.get("table"))
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
