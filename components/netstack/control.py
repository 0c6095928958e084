"""netstack's control plane: the handlers of qnet.netstack and qnet.datagram.

Every call arrives typed and checked by ipc/ (the declarations in ipc/protocols/netstack.py);
a handler turns it into calls on the sans-I/O core and the core's errors into typed answers.
The binding that owns the core and its I/O is components/netstack/process.py.
"""
from __future__ import annotations

import hashlib
import ipaddress
import time
from typing import TYPE_CHECKING

import msgspec

from components.netstack.core import Stack, StackError
from components.netstack.core.radv import RaConfig, RaPrefix
from components.netstack.wire.addr import MacAddr
from components.netstack.wire.pcap import PcapWriter
from ipc import errors

if TYPE_CHECKING:
    from components.netstack.process import Netstack


def _err(exc: StackError) -> errors.RemoteError:
    code = exc.code if exc.code in ("not_found", "exists", "no_route", "bad_argument", "no_device",
                                    "address_in_use", "message_too_long") else "failed"
    return errors.RemoteError(str(exc), code=code)


def _port_mac(name: str) -> str:
    """A stable locally administered unicast MAC for a port without one."""
    h = msgspec.msgpack.encode(name)
    n = int.from_bytes(hashlib.sha256(h).digest()[:4], "big")
    return "02:71:6e:%02x:%02x:%02x" % ((n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF)


def _port_row(ns: "Netstack", info, addresses6: dict[str, list[dict]] | None = None) -> dict:
    p = ns.ports.get(info.name, {})
    if addresses6 is None:
        addresses6 = _addresses6_by_port(ns.stack)
    return {"name": info.name, "kind": info.kind, "mac": info.mac, "mtu": info.mtu, "up": info.up,
            "attached": bool(p.get("attached")), "forwarding": info.forwarding,
            "addresses": list(info.addresses),
            "offloads": list(ns.offloads[info.name][0].names()) if info.name in ns.offloads else [],
            "addresses6": addresses6.get(info.name, [])}


def _addresses6_by_port(stack: Stack) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    if stack.cfg.ipv6:
        for a in stack.addresses6():
            out.setdefault(a.device, []).append({"address": a.address, "state": a.state})
    return out


def _unzoned(addr: ipaddress.IPv6Address | None) -> ipaddress.IPv6Address | None:
    """The address without a "%zone" (ipaddress keeps one in the value and compares it): the
    core's tables hold bare addresses, and a zone travels as a port name."""
    if addr is None or addr.scope_id is None:
        return addr
    return ipaddress.IPv6Address(int(addr))


def _need_port(stack: Stack, port: str | None) -> None:
    if port is not None and (port not in stack.devs or port == "lo"):
        raise errors.RemoteError(f"no port {port!r}", code="not_found")


class Control:
    """Handlers of qnet.netstack."""

    def __init__(self, ns: Netstack):
        self.ns = ns

    @property
    def stack(self) -> Stack:
        return self.ns.stack

    def _row(self, name: str) -> dict:
        for info in self.stack.devices():
            if info.name == name:
                return _port_row(self.ns, info)
        raise errors.RemoteError(f"no port {name!r}", code="not_found")

    def port_add(self, name, kind, mac, mtu, forwarding):
        if name == "lo":
            raise errors.RemoteError("'lo' is the loopback interface", code="exists")
        if name in self.stack.devs:
            row = self._row(name)
            if row["kind"] != kind or (mac is not None and row["mac"] != mac):
                raise errors.RemoteError(f"port {name} exists with other settings", code="exists")
            return row
        mac_b = MacAddr.parse(mac or _port_mac(name)) if kind == "ethernet" else None
        try:
            # Link stays down until the driver attaches and reports carrier.
            self.stack.add_device(name, kind=kind, mac=mac_b, mtu=mtu, now=time.monotonic(), up=False)
            self.ns._apply_tso(name)
        except StackError as exc:
            raise _err(exc) from None
        try:
            self.stack.set_forwarding(name, forwarding)
        except StackError as exc:
            self.stack.remove_device(name, time.monotonic())  # a failed add leaves no half-made port
            raise _err(exc) from None
        self.ns.ports[name] = {"attached": False, "incarnation": 0}
        self.ns.dev_chan.send_event(name.encode(), "resync")
        self.ns.checkpoint()
        return self._row(name)

    def port_del(self, name):
        if name not in self.stack.devs or name == "lo":
            return False
        self.stack.remove_device(name, time.monotonic())
        self.ns.ports.pop(name, None)
        self.ns.offloads.pop(name, None)
        self.ns.offload_counters.pop(name, None)
        cap = self.ns.captures.pop(name, None)
        if cap:
            cap[1].close()
        self.ns.checkpoint()
        return True

    def port_set(self, name, forwarding, mtu, link):
        if name not in self.stack.devs:
            raise errors.RemoteError(f"no port {name!r}", code="not_found")
        try:
            if forwarding is not None:
                self.stack.set_forwarding(name, forwarding)
            if mtu is not None:
                self.stack.set_mtu(name, mtu)
            if link is not None:
                info = self.ns.ports.setdefault(name, {"attached": False, "incarnation": 0})
                info["admin_up"] = link
                up = link and info.get("carrier", False)
                if self.stack.devs[name].up != up:
                    self.stack.set_link(name, up, time.monotonic())
                    self.ns.pub.emit("port", port=name, up=up, attached=bool(info.get("attached")))
        except StackError as exc:
            raise _err(exc) from None
        self.ns.checkpoint()
        return self._row(name)

    def port_list(self):
        a6 = _addresses6_by_port(self.stack)
        return [_port_row(self.ns, i, a6) for i in self.stack.devices() if i.name != "lo"]

    def addr_add(self, port, address):
        if port not in self.stack.devs:
            raise errors.RemoteError(f"no port {port!r}", code="not_found")
        if address in self.stack.devs[port].addresses:
            return True
        try:
            self.stack.add_address(port, address, time.monotonic())
        except StackError as exc:
            raise _err(exc) from None
        self.ns.pub.emit("address", port=port, address=address, present=True)
        self.ns.checkpoint()
        return True

    def addr_del(self, port, address):
        if port not in self.stack.devs or address not in self.stack.devs[port].addresses:
            return False
        try:
            self.stack.del_address(port, address)
        except StackError as exc:
            raise _err(exc) from None
        self.ns.pub.emit("address", port=port, address=address, present=False)
        self.ns.checkpoint()
        return True

    def route_add(self, prefix, gateway, device, metric, table=None):
        for r in self.stack.routes(table):
            rd = r.to_dict() if hasattr(r, "to_dict") else dict(r.__dict__)
            if (str(rd.get("prefix")) == str(prefix) and str(rd.get("gateway")) == str(gateway)
                    and rd.get("device") == device and rd.get("metric") == metric):
                return True
        try:
            self.stack.add_route(prefix, gateway, device, metric, table)
        except StackError as exc:
            raise _err(exc) from None
        self.ns.checkpoint()
        return True

    def route_del(self, prefix, gateway, device, table=None):
        try:
            self.stack.del_route(prefix, gateway, device, table)
        except StackError as exc:
            if exc.code == "not_found":
                return False
            raise _err(exc) from None
        self.ns.checkpoint()
        return True

    def route_list(self, table=None):
        """table: absent for main, N for table N, 0 for every table."""
        out = []
        for r in self.stack.routes(table or None, every=table == 0):
            rd = r.to_dict() if hasattr(r, "to_dict") else dict(r.__dict__)
            out.append({"prefix": str(rd["prefix"]), "gateway": None if rd.get("gateway") in (None, "None") else str(rd["gateway"]),
                        "device": rd.get("device"), "metric": int(rd.get("metric", 0)),
                        "origin": str(rd.get("kind", "static")) + ("" if rd.get("active", True) else " (inactive)"),
                        "table": rd.get("table")})
        return out

    def neigh_list(self):
        out = []
        for n in self.stack.neighbors():
            nd = n.to_dict() if hasattr(n, "to_dict") else dict(n.__dict__)
            out.append({"device": nd["device"], "address": str(nd["address"]), "mac": nd.get("mac"),
                        "state": str(nd["state"]), "queued": int(nd.get("queued", 0))})
        return out

    def stats(self):
        return {"stack": self.stack.counters(), "binding": self.ns.status()}

    def ping(self, dst, count, interval, timeout, size, ttl):
        if not (0.001 <= interval <= 60 and 0.01 <= timeout <= 60):
            raise errors.RemoteError("interval must be 0.001..60 s and timeout 0.01..60 s", code="bad_argument")
        if len(self.ns.pings) >= 64:
            raise errors.RemoteError("too many pings in progress", code="busy")
        token = self.ns.rt.rpc.defer()
        self.ns.start_ping(token, dst, count, interval, timeout, size, ttl)

    # -- IPv6 (1.3) -------------------------------------------------------------------------
    def _need_ipv6(self) -> None:
        if not self.stack.cfg.ipv6:
            raise errors.RemoteError("IPv6 is off in this netstack ([components.netstack.args] ipv6 = false)",
                                     code="bad_argument")

    def addr6_add(self, port, address):
        self._need_ipv6()
        _need_port(self.stack, port)
        for a in self.stack.addresses6():
            if ipaddress.IPv6Interface(a.address).ip != address.ip:
                continue
            if a.device == port and a.address == str(address):
                return True     # idempotent: present, whatever its DAD state
            where = "" if a.device == port else f" on {a.device}"
            raise errors.RemoteError(f"{address.ip} is already assigned{where} as {a.address}", code="exists")
        try:
            self.stack.add_address6(port, address, time.monotonic())
        except StackError as exc:
            raise _err(exc) from None
        self.ns.addresses6_changed()
        self.ns.checkpoint()
        return True

    def addr6_del(self, port, address):
        self._need_ipv6()
        if port not in self.stack.devs or not any(a.device == port and a.address == str(address)
                                                  for a in self.stack.addresses6()):
            return False
        try:
            self.stack.del_address6(port, address)
        except StackError as exc:
            raise _err(exc) from None
        self.ns.addresses6_changed()
        self.ns.checkpoint()
        return True

    def route6_add(self, prefix, gateway, device, metric):
        self._need_ipv6()
        gateway = _unzoned(gateway)
        _need_port(self.stack, device)
        if gateway is not None and gateway.is_link_local and device is None:
            raise errors.RemoteError(f"a link-local gateway ({gateway}) needs the port it is on (device)",
                                     code="bad_argument")
        same = [r for r in self.stack.routes6() if r.kind != "connected" and r.prefix == str(prefix)
                and r.gateway == (None if gateway is None else str(gateway)) and r.device == device]
        if any(r.metric == metric for r in same):
            return True
        try:
            # The same route with another metric is replaced (the launcher keys routes so).
            for r in same:
                self.stack.del_route6(prefix, gateway, device)
            self.stack.add_route6(prefix, gateway, device, metric)
        except StackError as exc:
            raise _err(exc) from None
        self.ns.checkpoint()
        return True

    def route6_del(self, prefix, gateway, device):
        self._need_ipv6()
        try:
            self.stack.del_route6(prefix, _unzoned(gateway), device)
        except StackError as exc:
            if exc.code == "not_found":
                return False
            raise _err(exc) from None
        self.ns.checkpoint()
        return True

    def route6_list(self):
        if not self.stack.cfg.ipv6:
            return []
        return [{"prefix": r.prefix, "gateway": r.gateway, "device": r.device, "metric": int(r.metric),
                 "origin": str(r.kind) + ("" if r.active else " (inactive)")} for r in self.stack.routes6()]

    def neigh6_list(self):
        if not self.stack.cfg.ipv6:
            return []
        return [{"device": n.device, "address": n.address, "mac": n.mac, "state": str(n.state),
                 "queued": int(n.queued)} for n in self.stack.neighbors6()]

    def ping6(self, dst, count, interval, timeout, size, hop_limit, port):
        self._need_ipv6()
        if dst.scope_id is not None:
            if port is not None and port != dst.scope_id:
                raise errors.RemoteError(f"{dst} names zone {dst.scope_id}, not port {port}", code="bad_argument")
            port = dst.scope_id
        dst = _unzoned(dst)
        _need_port(self.stack, port)
        if (dst.is_link_local or dst.is_multicast) and port is None:
            raise errors.RemoteError(f"{dst} is link-local: say which port to leave by", code="bad_argument")
        if not (0.001 <= interval <= 60 and 0.01 <= timeout <= 60):
            raise errors.RemoteError("interval must be 0.001..60 s and timeout 0.01..60 s", code="bad_argument")
        if len(self.ns.pings) >= 64:
            raise errors.RemoteError("too many pings in progress", code="busy")
        token = self.ns.rt.rpc.defer()
        self.ns.start_ping(token, dst, count, interval, timeout, size, hop_limit, device=port)

    # -- router mode (1.4) -------------------------------------------------------------------
    def _ra_port(self, port) -> None:
        self._need_ipv6()
        _need_port(self.stack, port)
        if self.stack.devs[port].kind != "ethernet":
            raise errors.RemoteError(f"{port} is not an Ethernet port: router advertisements need "
                                     f"a link with neighbors (Neighbor Discovery)", code="bad_argument")

    def _global_64s(self, port) -> list[ipaddress.IPv6Network]:
        """The /64s of the port's global (and unique-local) IPv6 addresses, in their order."""
        nets: list[ipaddress.IPv6Network] = []
        for a in self.stack.addresses6():
            iface = ipaddress.IPv6Interface(a.address)
            if a.device == port and not iface.ip.is_link_local and iface.network.prefixlen == 64 \
                    and iface.network not in nets:
                nets.append(iface.network)
        return nets

    def _ra_row(self, port, cfg: RaConfig) -> dict:
        advertising = any(a.device == port and a.address.startswith("fe80:") and a.state == "PREFERRED"
                          for a in self.stack.addresses6())
        return {"port": port, "prefixes": [str(p.network) for p in cfg.prefixes], "mtu": cfg.mtu,
                "rdnss": [str(s) for s in cfg.rdnss], "dnssl": list(cfg.dnssl), "managed": cfg.managed,
                "other": cfg.other, "router_lifetime": cfg.router_lifetime, "advertising": advertising}

    def ra_set(self, port, prefixes, mtu, rdnss, dnssl, managed, other, router_lifetime):
        self._ra_port(port)
        for p in prefixes:
            if p.prefixlen != 64:
                # RFC 4862 §5.5.3 (d): hosts form addresses only from /64 prefixes.
                raise errors.RemoteError(f"prefix {p} is not a /64 (hosts form addresses only in /64s)",
                                         code="bad_argument")
        if not prefixes:
            prefixes = self._global_64s(port)
            if not prefixes:
                raise errors.RemoteError(f"no prefix to advertise: {port} has no global IPv6 address in a "
                                         f"/64; name the prefixes or add an address first", code="bad_argument")
        dev_mtu = self.stack.devs[port].mtu
        if mtu is not None and mtu > dev_mtu:
            raise errors.RemoteError(f"mtu {mtu} is more than {port}'s own MTU ({dev_mtu})", code="bad_argument")
        cfg = RaConfig(prefixes=[RaPrefix(p) for p in prefixes], mtu=mtu, rdnss=[_unzoned(s) for s in rdnss],
                       dnssl=list(dnssl), managed=managed, other=other, router_lifetime=router_lifetime)
        try:
            self.stack.set_router_advertisements(port, cfg, time.monotonic())
        except StackError as exc:
            # RaConfig.validate's sentence ("radv: router_lifetime 30 must be 0 or ...") is the answer.
            raise errors.RemoteError(exc.message.removeprefix("radv: "), code=_err(exc).code) from None
        self.ns.checkpoint()
        return self._ra_row(port, cfg)

    def ra_del(self, port):
        self._need_ipv6()
        if port not in self.stack.devs or self.stack.router_advertisements(port) is None:
            return False
        try:
            self.stack.set_router_advertisements(port, None, time.monotonic())
        except StackError as exc:
            raise _err(exc) from None
        self.ns.checkpoint()
        return True

    def ra_list(self):
        if not self.stack.cfg.ipv6:
            return []
        return [self._ra_row(name, cfg) for name in sorted(self.stack.devs)
                if (cfg := self.stack.router_advertisements(name)) is not None]

    def capture_start(self, port, path, max_frames):
        if port not in self.stack.devs:
            raise errors.RemoteError(f"no port {port!r}", code="not_found")
        if port in self.ns.captures:
            raise errors.RemoteError(f"a capture on {port} is already running", code="busy")
        try:
            f = open(path, "wb")
        except OSError as exc:
            raise errors.RemoteError(f"cannot write {path}: {exc.strerror}", code="bad_argument") from None
        w = PcapWriter(f, linktype=1 if self.stack.devs[port].kind == "ethernet" else 101)
        f.flush()
        self.ns.captures[port] = (w, f, max_frames)
        return True

    def capture_stop(self, port):
        cap = self.ns.captures.pop(port, None)
        if cap is None:
            raise errors.RemoteError(f"no capture running on {port}", code="not_found")
        w, f, _ = cap
        f.close()
        return w.frames_written


class Datagrams:
    """Handlers of qnet.datagram."""

    def __init__(self, ns: Netstack):
        self.ns = ns

    def open(self, owner, port, address, device, broadcast):
        st = self.ns.stack
        sid = st.udp_open()
        try:
            st.udp_bind(sid, address, port, device)
            st.udp_set_broadcast(sid, broadcast)
        except StackError as exc:
            st.udp_close(sid)
            raise _err(exc) from None
        self.ns.owners[sid] = owner
        self.ns.checkpoint()
        return sid

    def close(self, sid):
        if sid not in self.ns.owners:
            return False
        self.ns.owners.pop(sid, None)
        try:
            self.ns.stack.udp_close(sid)
        except StackError:
            pass
        self.ns.checkpoint()
        return True

    def sendto(self, sid, payload, address, port, device):
        if sid not in self.ns.owners:
            raise errors.RemoteError(f"no socket {sid}", code="not_found")
        try:
            self.ns.stack.udp_sendto(sid, payload, address, port, time.monotonic(), device=device)
        except StackError as exc:
            raise _err(exc) from None
        self.ns._flush()
        return True

    def sockets(self):
        return self.ns.stack.sockets() if hasattr(self.ns.stack, "sockets") else []
