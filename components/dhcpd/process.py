"""The dhcpd component: DHCPv4 servers for guest-facing ports, clients for uplinks.

It talks to netstack only through its declared interfaces: UDP sockets via
``qnet.datagram`` (bound to one port each, broadcast allowed), address and
route changes via ``qnet.netstack``. The protocol work is done by the sans-I/O
cores in server.py and client.py; this module is their binding.

State and where it lives across a restart: server leases and client leases
are saved atomically in RUN/dhcpd.leases (LeaseStore) after every change, and
handed to a successor in the snapshot; server and client settings are
re-asserted by their owner (the launcher) when this component becomes active.
The sockets live in netstack under the owner name "dhcpd", so a new
incarnation keeps receiving on them.
"""
from __future__ import annotations

import os
import time
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from components.dhcpd import client as dclient
from components.dhcpd import server as dserver
from components.dhcpd.leases import LeaseStore, LeaseStoreError
from components.dhcpd.wire import BROADCAST, CLIENT_PORT, SERVER_PORT, DhcpMessage, DhcpParseError
from components.netstack.dgram_client import DatagramClient
from components.runtime import Component, run_component
from ipc import errors
from ipc.accounting import drops_of
from ipc.events import Subscriber
from ipc.protocols.dhcpd import DHCPD
from ipc.protocols.netstack import DATAGRAM, NETSTACK
from ipc.rpc import AsyncRpcClient, RpcClient

OWNER = "dhcpd"
PROBE_WAIT = 0.3   # seconds an offered address's echo probe waits for an answer


class _Server:
    def __init__(self, port: str, cfg: dict, core: dserver.DhcpServer):
        self.port, self.cfg, self.core = port, cfg, core
        self.sid: int | None = None


class _Client:
    def __init__(self, port: str, cfg: dict, core: dclient.DhcpClient):
        self.port, self.cfg, self.core = port, cfg, core
        self.sid: int | None = None
        self.applied: dict | None = None   # what we configured in netstack


def _server_config(cfg: dict) -> dserver.ServerConfig:
    iface = IPv4Interface(cfg["interface"])
    net = iface.network
    hosts_first = net.network_address + 1
    hosts_last = net.broadcast_address - 1
    start = IPv4Address(cfg["pool_start"]) if cfg.get("pool_start") else \
        max(hosts_first, min(hosts_last, net.network_address + 10))
    end = IPv4Address(cfg["pool_end"]) if cfg.get("pool_end") else \
        min(hosts_last, max(start, net.network_address + 250))
    return dserver.ServerConfig(
        server_ip=iface.ip, subnet=net, pool_start=start, pool_end=end,
        router=IPv4Address(cfg["router"]) if cfg.get("router") else iface.ip,
        dns=tuple(IPv4Address(d) for d in cfg.get("dns", [])), domain=cfg.get("domain"),
        mtu=cfg.get("mtu"), lease_time=int(cfg.get("lease_time", 3600)),
        reservations={k: IPv4Address(v) for k, v in (cfg.get("reservations") or {}).items()},
        probe=True, probe_timeout=PROBE_WAIT + 0.5)


def _saved_applied(saved: dict, port: str) -> dict | None:
    """A predecessor's record of what it installed on `port`, if it has the shape _apply writes."""
    table = saved.get("client_applied")
    v = table.get(port) if isinstance(table, dict) else None
    if not isinstance(v, dict) or not isinstance(v.get("address"), str) or \
            not isinstance(v.get("routes"), list):
        return None
    if not all(isinstance(r, (list, tuple)) and len(r) == 2 for r in v["routes"]):
        return None
    return {"address": v["address"], "routes": [[str(n), str(g)] for n, g in v["routes"]]}


class Dhcpd(Component):
    STATE_SCHEMA = 1

    def __init__(self, rt):
        super().__init__(rt)
        dg_peer = rt.spec.peers.get("qnet.datagram")
        ns_peer = rt.spec.peers.get("qnet.netstack")
        if dg_peer is None or ns_peer is None:
            raise SystemExit("dhcpd: the graph must give it qnet.datagram and qnet.netstack")
        self.dg = DatagramClient(dg_peer, OWNER, chan=rt.data_user(DATAGRAM, dg_peer["dgram"], OWNER.encode()))
        self.ns = RpcClient(ns_peer["rpc"], NETSTACK, timeout=3.0, retries=2)
        self.prober = AsyncRpcClient(ns_peer["rpc"], NETSTACK)
        self.probes: dict[int, tuple[str, int]] = {}   # outstanding echo probes: req -> (port, token)
        self.ns_events = Subscriber([NETSTACK], [ns_peer["pub"]])
        self.servers: dict[str, _Server] = {}
        self.clients: dict[str, _Client] = {}
        self.store = LeaseStore(os.path.join(rt.spec.runtime_dir, "dhcpd.leases"))
        self.saved: dict[str, Any] = {}
        self.timer = None
        self.counters = {"malformed": 0, "send_errors": 0, "apply_errors": 0, "store_errors": 0}
        self.last_error = ""

    def implementations(self):
        return {DHCPD: _Control(self)}

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self, state):
        try:
            self.saved = self.store.load()
        except LeaseStoreError as exc:
            self.rt.problem(str(exc))
            self.saved = {}
        if state:
            self.saved.update(state)
        self.rt.loop.add_reader(self.dg.socket, self._on_datagrams)
        self.rt.loop.add_reader(self.ns_events.socket, self._on_ns_events)
        self.rt.loop.add_reader(self.prober.socket, self._on_probe_replies)
        self.rt.loop.idle_hooks.append(self._rearm)
        self.dg.hello()

    def freeze(self):
        self.rt.loop.remove_reader(self.dg.socket)
        self.rt.loop.remove_reader(self.ns_events.socket)
        return self._state()

    def thaw(self):
        self.rt.loop.add_reader(self.dg.socket, self._on_datagrams)
        self.rt.loop.add_reader(self.ns_events.socket, self._on_ns_events)

    def _state(self) -> dict:
        now = time.monotonic()
        st = {"servers": {p: s.core.snapshot(now) for p, s in self.servers.items()},
              "clients": {p: c.core.lease.to_dict() for p, c in self.clients.items() if c.core.lease},
              "sockets": {p: s.sid for p, s in self.servers.items() if s.sid is not None}}
        st["client_sockets"] = {p: c.sid for p, c in self.clients.items() if c.sid is not None}
        # What each client installed in netstack: a successor must be able to take it back out.
        st["client_applied"] = {p: c.applied for p, c in self.clients.items() if c.applied}
        return st

    def persist(self) -> None:
        state = self._state()
        try:
            self.store.save(state)
        except (LeaseStoreError, OSError) as exc:
            self.counters["store_errors"] += 1
            self.last_error = str(exc)
        self.rt.checkpoint(state, min_interval=0.0)

    def status(self):
        servers = {p: s.core.counters() for p, s in self.servers.items()}
        clients = {p: {"state": c.core.state.value, **c.core.counters()} for p, c in self.clients.items()}
        # ipc/accounting.py: every loss counter, of the binding and of each role, is a drop
        drops = drops_of(self.counters) + drops_of(servers) + drops_of(
            {p: {k: v for k, v in c.items() if k != "state"} for p, c in clients.items()})
        tables = {f"{name}:{p}": t for p, s in self.servers.items() for name, t in s.core.tables().items()}
        return {"servers": servers, "clients": clients, "drops": drops, "tables": tables,
                "internal_errors": self.rt.loop.errors + self.rt.rpc.counters.get("internal_errors", 0),
                **self.counters, "last_error": self.last_error}

    def close(self):
        self.dg.close()
        self.ns.close()
        self.prober.close()
        self.ns_events.close()

    # -- sockets -----------------------------------------------------------------------------
    def _open(self, port: str, udp_port: int, old_sid: int | None) -> int:
        if old_sid is not None:
            try:
                self.dg.close_socket(old_sid)
            except errors.IpcError:
                pass
        return self.dg.open(udp_port, device=port, broadcast=True)

    def _send(self, sid: int, msg: DhcpMessage, dst: IPv4Address, dport: int, port: str) -> None:
        try:
            self.dg.sendto(sid, msg.build(), str(dst), dport, device=port)
        except errors.IpcError as exc:
            self.counters["send_errors"] += 1
            self.last_error = f"{port}: send to {dst}: {exc}"

    # -- servers -------------------------------------------------------------------------------
    def server_add(self, port: str, cfg: dict) -> None:
        core_cfg = _server_config(cfg)
        old = self.servers.get(port)
        core = dserver.DhcpServer(core_cfg)
        now = time.monotonic()
        snap = old.core.snapshot(now) if old else self.saved.get("servers", {}).get(port)
        if snap:
            try:
                core.restore(snap, now)
            except (ValueError, KeyError, TypeError) as exc:
                self.rt.problem(f"dhcp server {port}: saved leases not restored: {exc}")
        srv = _Server(port, cfg, core)
        old_sid = old.sid if old else self.saved.get("sockets", {}).get(port)
        srv.sid = self._open(port, SERVER_PORT, old_sid)
        self.servers[port] = srv
        self.persist()

    def server_del(self, port: str) -> bool:
        srv = self.servers.pop(port, None)
        if srv is None:
            return False
        if srv.sid is not None:
            try:
                self.dg.close_socket(srv.sid)
            except errors.IpcError:
                pass
        self.persist()
        return True

    def _server_actions(self, srv: _Server, actions: list) -> None:
        for a in actions:
            if isinstance(a, dserver.Reply):
                # Before the client owns its address we cannot ARP for it; a broadcast
                # reply is what RFC 2131 §4.1 allows when unicast is not possible.
                dst = a.dst_ip
                if a.broadcast or dst == IPv4Address(0) or a.msg.ciaddr == IPv4Address(0):
                    dst = BROADCAST
                self._send(srv.sid, a.msg, dst, a.dst_port, srv.port)
            elif isinstance(a, dserver.ProbeAddress):
                # Asked without blocking: other clients are served while the echo is out.
                # No answer at all is the core's to time out (probe_timeout: "nobody uses it").
                try:
                    req = self.prober.start("ping", dst=str(a.address), count=1, interval=0.1,
                                            timeout=PROBE_WAIT, size=0)
                    self.probes[req] = (srv.port, a.token)
                except errors.IpcError:
                    self._server_actions(srv, srv.core.probe_result(a.token, False, time.monotonic()))
        self.persist()

    def _on_probe_replies(self):
        now = time.monotonic()
        for req, result in self.prober.replies():
            port, token = self.probes.pop(req, (None, None))
            srv = self.servers.get(port)
            if srv is None:
                continue
            in_use = not isinstance(result, errors.IpcError) and bool(result.received)
            self._server_actions(srv, srv.core.probe_result(token, in_use, now))

    def _probe(self, address: IPv4Address) -> bool:
        """Conflict check before offering: an ICMP echo sent by netstack."""
        try:
            res = self.ns.call("ping", PROBE_WAIT + 2.0, dst=str(address), count=1, interval=0.1,
                               timeout=PROBE_WAIT, size=0)
        except errors.IpcError:
            return False
        return bool(res.received)

    # -- clients --------------------------------------------------------------------------------
    def client_add(self, port: str, cfg: dict) -> None:
        if port in self.clients:
            self.clients[port].cfg = cfg
            return
        mac = bytes.fromhex(cfg["mac"].replace(":", ""))
        core = dclient.DhcpClient(mac, hostname=cfg.get("hostname"))
        cl = _Client(port, cfg, core)
        cl.sid = self._open(port, CLIENT_PORT, self.saved.get("client_sockets", {}).get(port))
        cl.applied = _saved_applied(self.saved, port)
        self.clients[port] = cl
        prev = self.saved.get("clients", {}).get(port)
        lease = None
        if prev:
            try:
                lease = dclient.Lease.from_dict(prev)
            except (KeyError, ValueError, TypeError):
                lease = None
        self._client_actions(cl, core.start(time.monotonic(), previous_lease=lease))

    def client_del(self, port: str) -> bool:
        cl = self.clients.pop(port, None)
        if cl is None:
            return False
        self._client_actions(cl, cl.core.release(time.monotonic()))
        if cl.sid is not None:
            try:
                self.dg.close_socket(cl.sid)
            except errors.IpcError:
                pass
        self.persist()
        return True

    def _client_actions(self, cl: _Client, actions: list) -> None:
        for a in actions:
            if isinstance(a, dclient.Send):
                self._send(cl.sid, a.msg, a.dst_ip, a.dst_port, cl.port)
            elif isinstance(a, dclient.Configure):
                self._apply(cl, a.lease)
            elif isinstance(a, dclient.Deconfigure):
                self._unapply(cl)
            elif isinstance(a, dclient.CheckAddress):
                ok = not self._probe(a.address)
                self._client_actions(cl, cl.core.address_checked(ok, time.monotonic()))
        if cl.applied and cl.core.lease is None:
            # A lease configured by a predecessor is not "configured" in this incarnation's core,
            # so a NAK of its INIT-REBOOT (or its expiry while we restarted) brings no Deconfigure:
            # reconcile instead. Without a lease nothing of it may stay (RFC 2131 §4.4.5).
            self._unapply(cl)
        self.persist()

    def _apply(self, cl: _Client, lease: dclient.Lease) -> None:
        """Install the lease's address and routes in netstack (idempotent; re-asserted after a restart)."""
        if cl.applied and cl.applied["address"] != str(lease.interface):
            self._unapply(cl)
        try:
            self.ns.call("addr_add", port=cl.port, address=str(lease.interface))
            for net, gw in lease.routes:
                self.ns.call("route_add", prefix=str(net), gateway=str(gw), device=cl.port, metric=0)
        except errors.IpcError as exc:
            self.counters["apply_errors"] += 1
            self.last_error = f"{cl.port}: applying lease: {exc}"
            return
        cl.applied = {"address": str(lease.interface), "routes": [[str(n), str(g)] for n, g in lease.routes]}
        self.log.info("%s: bound %s (lease %s s)", cl.port, lease.interface, lease.lease_time)

    def _unapply(self, cl: _Client) -> None:
        if not cl.applied:
            return
        try:
            for n, g in cl.applied["routes"]:
                self.ns.call("route_del", prefix=n, gateway=g, device=cl.port)
            self.ns.call("addr_del", port=cl.port, address=cl.applied["address"])
        except errors.IpcError as exc:
            self.counters["apply_errors"] += 1
            self.last_error = f"{cl.port}: removing lease: {exc}"
        self.log.info("%s: released %s", cl.port, cl.applied["address"])
        cl.applied = None

    # -- events ----------------------------------------------------------------------------------
    def _on_datagrams(self):
        now = time.monotonic()
        for d in self.dg.drain():
            srv = next((s for s in self.servers.values() if s.sid == d.sid), None)
            if srv is not None:
                self._server_actions(srv, srv.core.handle_datagram(d.payload, now, src_ip=d.src, src_port=d.src_port))
                continue
            cl = next((c for c in self.clients.values() if c.sid == d.sid), None)
            if cl is not None:
                try:
                    msg = DhcpMessage.parse(d.payload)
                except DhcpParseError:
                    self.counters["malformed"] += 1
                    continue
                self._client_actions(cl, cl.core.receive(msg, now))

    def _on_ns_events(self):
        self.ns_events.receive(self._on_ns_event)

    def _on_ns_event(self, proto, name, ev):
        if name == "started":
            # A new netstack incarnation: say hello so it routes to us, and re-assert leases.
            self.dg.hello()
            for cl in self.clients.values():
                if cl.applied and cl.core.lease is not None:
                    applied, cl.applied = cl.applied, None
                    self._apply(cl, cl.core.lease)
                    if cl.applied is None:
                        cl.applied = applied
        elif name == "port":
            cl = self.clients.get(ev.port)
            if cl is not None:
                self._client_actions(cl, cl.core.link_changed(ev.up, time.monotonic()))

    def _rearm(self):
        now = time.monotonic()
        deadlines = []
        for s in self.servers.values():
            d = s.core.next_deadline()
            if d is not None and d <= now:
                self._server_actions(s, s.core.expire(now))
                d = s.core.next_deadline()
            if d is not None:
                deadlines.append(d)
        for c in self.clients.values():
            d = c.core.next_deadline()
            if d is not None and d <= now:
                self._client_actions(c, c.core.poll(now))
                d = c.core.next_deadline()
            if d is not None:
                deadlines.append(d)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if deadlines:
            self.timer = self.rt.loop.call_at(max(min(deadlines), now + 0.005), lambda: None)

    def leases(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for p, s in self.servers.items():
            for lease in s.core.leases():
                out.append({"port": p, "role": "server", "mac": ":".join(f"{b:02x}" for b in lease.mac) if lease.mac else "",
                            "address": str(lease.address), "state": lease.state.value,
                            "expires_in": int(lease.expires - now), "hostname": lease.hostname})
        for p, c in self.clients.items():
            lease = c.core.lease
            if lease is not None:
                exp = lease.expires_at
                out.append({"port": p, "role": "client", "mac": ":".join(f"{b:02x}" for b in c.core.mac),
                            "address": str(lease.address), "state": c.core.state.value,
                            "expires_in": None if exp is None else int(exp - now), "hostname": None,
                            "dns": [str(d) for d in lease.dns], "domain": lease.domain})
        return out


class _Control:
    def __init__(self, d: Dhcpd):
        self.d = d

    def server_add(self, port, interface, pool_start, pool_end, router, dns, domain, mtu, lease_time, reservations):
        cfg = {"interface": str(interface), "pool_start": str(pool_start) if pool_start else None,
               "pool_end": str(pool_end) if pool_end else None, "router": str(router) if router else None,
               "dns": [str(x) for x in dns], "domain": domain, "mtu": mtu, "lease_time": lease_time,
               "reservations": dict(reservations) if isinstance(reservations, dict) else {}}
        existing = self.d.servers.get(port)
        if existing is not None and existing.cfg == cfg:
            return True
        try:
            self.d.server_add(port, cfg)
        except ValueError as exc:
            raise errors.RemoteError(f"dhcp server {port}: {exc}", code="bad_argument") from None
        except errors.IpcError as exc:
            raise errors.RemoteError(f"dhcp server {port}: {exc}", code="failed") from None
        return True

    def server_del(self, port):
        return self.d.server_del(port)

    def pool(self, port, pool_start, pool_end):
        srv = self.d.servers.get(port)
        if srv is None:
            raise errors.RemoteError(f"no DHCP server on port {port!r}", code="not_found")
        cfg = dict(srv.cfg, pool_start=str(pool_start), pool_end=str(pool_end))
        try:
            self.d.server_add(port, cfg)
        except ValueError as exc:
            raise errors.RemoteError(f"dhcp pool {port}: {exc}", code="bad_argument") from None
        return True

    def client_add(self, port, mac, hostname):
        try:
            self.d.client_add(port, {"mac": mac, "hostname": hostname})
        except ValueError as exc:
            raise errors.RemoteError(f"dhcp client {port}: {exc}", code="bad_argument") from None
        except errors.IpcError as exc:
            raise errors.RemoteError(f"dhcp client {port}: {exc}", code="failed") from None
        return True

    def client_del(self, port):
        return self.d.client_del(port)

    def leases(self):
        return self.d.leases()

    def status(self):
        out = self.d.status()
        out["pools"] = {p: {"interface": s.cfg["interface"], "pool_start": str(s.core.config.pool_start),
                            "pool_end": str(s.core.config.pool_end), "exhausted": s.core.exhausted}
                        for p, s in self.d.servers.items()}
        return out

    def link(self, port, up):
        cl = self.d.clients.get(port)
        if cl is not None:
            self.d._client_actions(cl, cl.core.link_changed(up, time.monotonic()))
        return True


def main():
    run_component(Dhcpd)


if __name__ == "__main__":
    main()
