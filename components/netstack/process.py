"""The netstack component: the binding between the sans-I/O core and the world.

It drives ``core.Stack`` from the device streams of every port's ethdriver,
from its timers and from control calls; it serves ``qnet.netstack`` (control)
and ``qnet.datagram`` (UDP sockets for components inside the graph), whose
handlers live in ``components/netstack/control.py``.

State it owns, and where it goes across a restart: ports, addresses, routes,
neighbors and UDP sockets with their owners live in the core and travel in the
hand-over snapshot (and in checkpoints after every configuration change).
Configuration declared by the launcher or dhcpd is re-asserted by them when a
new incarnation announces itself (``started`` event): reconcile, not replay.
"""
from __future__ import annotations

import random
import struct
import time
from typing import Any

from components.netstack.control import Control, Datagrams
from components.netstack.core import Stack, StackConfig, StackError
from components.netstack.core.events import DuplicateAddress, EchoReply, IcmpErrorForSocket, PingError
from components.netstack.core.offload import PortOffloads, to_plain_frames, tso_frame
from components.netstack.dgram_client import decode_send, encode_received
from components.netstack.tcp_binding import TcpService
from components.netstack.udp_binding import UdpService
from components.netstack.wire.errors import ParseError
from components.netstack.wire.flat import parse_plain_ipv4
from components.netstack.wire.virtio_net import GSO_TCPV4, VNET_HDR_SIZES, split_prefixed
from components.netstack.wire.pcap import PcapWriter
from components.runtime import Component, run_component
from ipc.accounting import drops_of, table
from ipc.events import Publisher
from ipc.protocols.device import DEVICE
from ipc.protocols.netstack import DATAGRAM, NETSTACK, TCP
from ipc.protocols.udp import UDP
from ipc.protocols.filter import FILTER
from components.netstack.filter_service import FilterService

DRIVER_SILENT = 5.0          # seconds without a batch or event from an attached port's driver
PROCESS_BUDGET = 64          # messages per wake-up per channel before yielding
TX_BATCH = 256               # frames per tx batch (the device protocol allows 1024)


class _Ping:
    """One `ping` or `ping6` call in progress (ttl is IPv6's hop limit; device: ping6's port)."""

    def __init__(self, token, dst, count, interval, timeout, size, ttl, ident, device=None):
        self.token, self.dst, self.count, self.interval = token, dst, count, interval
        self.timeout, self.size, self.ttl, self.ident = timeout, size, ttl, ident
        self.device = device
        self.sent: dict[int, float] = {}
        self.replies: dict[int, dict] = {}
        self.next_seq = 0


CONNTRACK_MAX_LIMIT = 1 << 22


def _config(args: dict) -> StackConfig:
    """The core's configuration from the manifest's [components.netstack.args]: conntrack_max
    (the connection-tracking table's bound, default 65,536) and ipv6 (default true)."""
    unknown = sorted(k for k in args if k not in ("conntrack_max", "ipv6") and not k.startswith("_"))
    if unknown:
        raise SystemExit(f"netstack: [components.netstack.args]: unknown field {unknown[0]!r} "
                         f"(known: conntrack_max, ipv6)")
    ipv6 = args.get("ipv6", True)
    if not isinstance(ipv6, bool):
        raise SystemExit(f"netstack: [components.netstack.args] ipv6: {ipv6!r} is not true or false")
    n = args.get("conntrack_max", StackConfig.conntrack_max)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= CONNTRACK_MAX_LIMIT:
        raise SystemExit(f"netstack: [components.netstack.args] conntrack_max: {n!r} is not "
                         f"a number of connections 1..{CONNTRACK_MAX_LIMIT}")
    return StackConfig(conntrack_max=n, ipv6=ipv6)


class Netstack(Component):
    STATE_SCHEMA = 1

    def __init__(self, rt):
        super().__init__(rt)
        self.cfg = _config(rt.args)
        self.stack = Stack(self.cfg)
        self.ports: dict[str, dict] = {}        # name -> {"attached": bool, "incarnation": int}
        self.owners: dict[int, str] = {}        # UDP socket id -> owner channel identity
        self.captures: dict[str, tuple[PcapWriter, Any, int]] = {}
        self.pings: dict[int, _Ping] = {}
        # IPv6 addresses' DAD states as last published (address6 events): (port, address) -> state
        self.addr6_states: dict[tuple[str, str], str] = {}
        self.rng = random.Random()
        self.timer = None
        self._armed_for = None
        self.active = False
        # Ports' drivers and dhcpd reach us over launcher-held socketpairs (ipc.seqpacket);
        # on that transport nothing may speak for a port over ZeroMQ (zmq_users=False).
        # The datagram endpoint stays open to clients outside the graph (tests, tools).
        self.dev_chan = rt.data_provider(DEVICE, "data", zmq_users=False)
        self.dg_chan = rt.data_provider(DATAGRAM, "dgram")
        self.pub = Publisher(NETSTACK, rt.spec.endpoints["pub"])
        self.counters = {"tx_no_driver": 0, "dg_undeliverable": 0, "dg_send_errors": 0}
        self._port_names: dict[bytes, str] = {}
        # Ports whose driver has offloads (attach: offloads, frame_prefix): every frame both
        # ways carries a virtio-net header of prefix bytes. Kept in the hand-over state, so a
        # successor reads the batches its drivers queued before they attach again.
        self.offloads: dict[str, tuple[PortOffloads, int]] = {}
        self.offload_counters: dict[str, dict[str, int]] = {}
        self.tcp = TcpService(self)     # qnet.tcp and the byte channels of TCP connections
        self.udp = UdpService(self)     # qnet.udp and the datagram channels of its sockets

    def implementations(self):
        return {NETSTACK: Control(self), DATAGRAM: Datagrams(self), TCP: self.tcp, UDP: self.udp,
                FILTER: FilterService(self)}

    # -- lifecycle ----------------------------------------------------------------------
    def activate(self, state):
        restored = False
        # A hand-over is fresh only from our direct predecessor; the launcher also keeps it as
        # the fallback for a crash until our first checkpoint replaces it, and TCP state
        # restored from it then would be stale (core/tcp/layer.py): such a state is treated as
        # a checkpoint, its connections dropped.
        handover = bool(state and state.get("handover")
                        and state.get("from_incarnation") == self.rt.incarnation - 1)
        if state and not handover and isinstance(state.get("stack"), dict):
            for layer in ("tcp4", "tcp6"):
                if isinstance(state["stack"].get(layer), dict):
                    state["stack"][layer]["conns"] = []
        if state:
            self.stack = Stack.restore(state["stack"], self.cfg, now=time.monotonic())
            self.ports = {n: {"attached": False, "incarnation": 0} for n in state.get("ports", [])}
            # A port's driver stays attached across our restart (its channel is the launcher's):
            # show it so at once instead of "detached" until its next attach event.
            for n, (inc, carrier) in state.get("attached", {}).items():
                if n in self.ports:
                    self.ports[n].update(attached=True, incarnation=int(inc), carrier=bool(carrier))
            for n in state.get("admin_down", []):
                if n in self.ports:
                    self.ports[n]["admin_up"] = False
            self.owners = {int(k): v for k, v in state.get("owners", {}).items()}
            for n, (names, prefix) in state.get("offloads", {}).items():
                self._set_offloads(n, names, prefix)
            for n, c in state.get("offload_counters", {}).items():
                if n in self.offload_counters:
                    self.offload_counters[n].update({k: int(v) for k, v in c.items()
                                                     if k in self.offload_counters[n]})
            restored = True
        self.tcp.restore(state.get("tcp") if state else None, handover)
        self.udp.restore(state.get("udp") if state else None)
        self._start_io()
        if handover:
            self.checkpoint()   # replaces the hand-over state as the launcher's crash fallback
        self.pub.emit("started", incarnation=self.rt.incarnation, restored=restored)
        # Ask every driver to announce itself again: links and MTUs may have changed meanwhile.
        for name in self.ports:
            self.dev_chan.send_event(name.encode(), "resync")

    def _start_io(self):
        self.active = True
        self.dev_chan.start(self.rt.loop, self._on_frames, self._on_device_event, PROCESS_BUDGET)
        self.dg_chan.start(self.rt.loop, self._on_dgram_batch, lambda peer, name, ev: None, PROCESS_BUDGET)
        self.tcp.start()
        self.udp.start()
        if self._after_wakeup not in self.rt.loop.idle_hooks:
            self.rt.loop.idle_hooks.append(self._after_wakeup)

    def freeze(self):
        # Stop reading: on socketpairs, what is still queued waits there for the successor.
        self.active = False
        self.dev_chan.stop()
        self.dg_chan.stop()
        self.tcp.stop()
        self.udp.stop()
        self._flush()
        return self._state(handover=True)

    def thaw(self):
        self._start_io()

    def _state(self, handover: bool = False) -> dict:
        # TCP connections and their channels' bindings travel only in a hand-over: restored
        # from a checkpoint they would be stale (core/tcp/layer.py).
        extra = {"handover": True, "from_incarnation": self.rt.incarnation,
                 "tcp": self.tcp.state()} if handover else {}
        stack = self.stack.snapshot(connections=handover, now=time.monotonic())
        return {**extra, "stack": stack, "ports": list(self.ports),
                "admin_down": [n for n, p in self.ports.items() if p.get("admin_up") is False],
                "attached": {n: [p.get("incarnation", 0), bool(p.get("carrier", False))]
                             for n, p in self.ports.items() if p.get("attached")},
                "owners": {str(k): v for k, v in self.owners.items()},
                "offloads": {n: [list(o.names()), prefix] for n, (o, prefix) in self.offloads.items()},
                "offload_counters": self.offload_counters, "udp": self.udp.state()}

    def checkpoint(self):
        self.rt.checkpoint(self._state(), min_interval=0.0)

    def status(self):
        c = self.stack.counters()
        # ipc/accounting.py: every loss counter of the core, the channels and the binding
        counted = {g: v for g, v in c.items() if not g.startswith("table:")}
        drops = drops_of(counted) + drops_of(self.dev_chan.counters) + drops_of(self.dg_chan.counters) \
            + drops_of(self.counters) + drops_of(self.offload_counters) + drops_of(self.udp.stats())
        rpc = getattr(self.rt, "rpc", None)
        internal = c.get("stack", {}).get("internal_errors", 0) + self.rt.loop.errors \
            + (rpc.counters.get("internal_errors", 0) if rpc is not None else 0)
        now = time.monotonic()
        # A driver announces itself every 2 s: one not heard from for DRIVER_SILENT is shown
        # (qnet status NOTE), whatever its process looks like to the launcher.
        silent = {n: round(now - p["heard"], 1) for n, p in self.ports.items()
                  if p.get("attached") and now - p.get("heard", now) > DRIVER_SILENT}
        return {"ports": {n: {k: v for k, v in p.items() if k != "heard"} for n, p in self.ports.items()},
                "silent_ports": silent, "drops": drops,
                "internal_errors": internal, "tables": self._tables(c),
                "device_channel": dict(self.dev_chan.counters), "datagram_channel": dict(self.dg_chan.counters),
                "tcp_channels": {**self.tcp.counters, "open": len(self.tcp.chans),
                                 "bound": len(self.tcp.by_cid)},
                "udp_channels": self.udp.stats(),
                "sockets": len(self.owners), "offloads": self.offload_status(), **self.counters}

    def _tables(self, c: dict) -> dict:
        """Every bounded table of the stack: occupancy, limit, what it lost (ipc/accounting.py)."""
        def g(name):
            return c.get(name, {})
        nb, rs, us, rt_ = g("table:neighbor"), g("table:reassembly"), g("table:udp"), g("table:routes")
        cfg = self.stack.cfg
        bucket = getattr(self.stack.icmp, "bucket", None)
        out = {
            "neighbors": table(nb.get("entries", 0), nb.get("limit"), drops_of(
                {k: v for k, v in g("neighbor").items() if k.startswith(("evicted", "queue_dropped"))})),
            "neighbor_queue_bytes": table(nb.get("queued_bytes", 0), nb.get("queued_bytes_limit"),
                                          g("neighbor").get("queue_dropped_full", 0)),
            "reassembly": table(rs.get("datagrams", 0), rs.get("datagrams_limit"), drops_of(g("reassembly"))),
            "reassembly_bytes": table(rs.get("bytes", 0), rs.get("bytes_limit"),
                                      g("reassembly").get("dropped_memory_limit", 0)),
            "udp_sockets": table(us.get("sockets", 0), us.get("sockets_limit"), drops_of(g("udp"))),
            "routes": table(rt_.get("routes", 0), rt_.get("limit"), rt_.get("dropped", 0)),
            # routes of the numbered tables (policy routing), under one shared bound
            "policy_routes": table(rt_.get("table_routes", 0), rt_.get("limit"),
                                   rt_.get("table_dropped", 0)),
            "conntrack": table(g("conntrack").get("entries", 0), cfg.conntrack_max,
                               g("conntrack").get("refused_full", 0)),
            "devices": table(g("table:devices").get("devices", 0), g("table:devices").get("limit"),
                             g("stack").get("add_device_refused_limit", 0)),
            "events": table(g("table:events").get("queued", 0), g("table:events").get("limit"),
                            g("stack").get("events_dropped", 0)),
            # the ICMP error rate limit (RFC 1812 §4.3.2.8): tokens in use of the burst
            "icmp_error_rate": table(cfg.icmp_error_burst - int(bucket.tokens) if bucket is not None else 0,
                                     cfg.icmp_error_burst, g("icmp").get("error_rate_limited", 0)),
        }
        if cfg.ipv6:
            # IPv6's own tables (1.3): Neighbor Discovery's cache, our addresses, routes, reassembly
            n6, r6, a6, rt6 = g("table:neighbor6"), g("table:reassembly6"), g("table:ipv6_addresses"), \
                g("table:routes6")
            out["neighbors6"] = table(n6.get("entries", 0), n6.get("limit"), drops_of(
                {k: v for k, v in g("neighbor6").items() if k.startswith(("evicted", "queue_dropped"))}))
            out["neighbor6_queue_bytes"] = table(n6.get("queued_bytes", 0), n6.get("queued_bytes_limit"),
                                                 g("neighbor6").get("queue_dropped_full", 0))
            out["ipv6_addresses"] = table(a6.get("addresses", 0), a6.get("limit"), a6.get("dropped", 0))
            out["routes6"] = table(rt6.get("routes", 0), rt6.get("limit"), rt6.get("dropped", 0))
            out["reassembly6"] = table(r6.get("datagrams", 0), r6.get("datagrams_limit"),
                                       drops_of(g("reassembly6")))
        for name, dc in c.items():
            if name.startswith("dev:"):
                out[f"tx_queue:{name[4:]}"] = table(dc.get("tx_queued", 0), dc.get("tx_queue_limit"), drops_of(dc))
        # The data channels toward each driver and datagram user: bytes they have not read yet.
        for kind, chan in (("channel", self.dev_chan), ("dgram_channel", self.dg_chan)):
            for user, (queued, bound, dropped) in chan.tables().items():
                out[f"{kind}:{user}"] = table(queued, bound, dropped)
        return out

    def close(self):
        for w, f, _ in self.captures.values():
            f.close()
        self.dev_chan.close()
        self.dg_chan.close()
        self.pub.close()

    # -- data path ------------------------------------------------------------------------
    def _on_frames(self, peer: bytes, stream: str, frames: list[bytes]):
        port = self._port_names.get(peer)
        if port is None:
            port = self._port_names[peer] = peer.decode("utf-8", "replace")
        info = self.ports.get(port)
        if info is not None:
            info["heard"] = time.monotonic()
        trusted = None
        if port in self.offloads:
            frames, trusted = self._plain_frames(port, frames)
        elif port in self.captures:
            self._capture(port, frames)
        self.stack.receive_batch(port, frames, time.monotonic(), trusted)
        # Transmit after every received batch: what it caused leaves before the next is read.
        self._flush_transmit()

    # -- offloads (core/offload.py does the work; here only which port has what) -----------
    def _set_offloads(self, port: str, names, prefix: int) -> None:
        if prefix:
            self.offloads[port] = (PortOffloads.from_names(names), int(prefix))
            self.offload_counters.setdefault(port, dict.fromkeys(
                ("rx_gso_frames", "rx_gso_segments", "rx_gso_whole", "rx_csum_partial",
                 "rx_bad_offload", "tx_tso_frames"), 0))
        else:
            self.offloads.pop(port, None)
        self._apply_tso(port)

    def _tso_frame(self, port: str, frame: bytes, mtu: int, size: int):
        try:
            out = tso_frame(frame, mtu, size)
            self.offload_counters[port]["tx_tso_frames"] += 1
            return out
        except ParseError:
            self.counters["tx_bad_super_frames"] = self.counters.get("tx_bad_super_frames", 0) + 1
            return None

    def _apply_tso(self, port: str) -> None:
        """Tell the core whether the port's device segments TCP for us (tso4 with csum)."""
        if port not in self.stack.devs:
            return
        offl = self.offloads.get(port)
        on = offl is not None and offl[0].csum and offl[0].tso4
        self.stack.set_tso(port, 65535 - 200 if on else 0)

    def offload_status(self) -> dict:
        return {port: {"offloads": list(self.offloads[port][0].names()) if port in self.offloads else [],
                       **c} for port, c in self.offload_counters.items()}

    def _plain_frames(self, port: str, frames: list[bytes]) -> tuple[list, set[int] | None]:
        """The Ethernet frames in a batch from an offload port: the header stripped, a GSO
        super-frame cut into frames of the port's MTU and partial checksums completed
        (core/offload.to_plain_frames), so the stack's one path (TTL, fragmentation, ICMP,
        filters) sees ordinary frames. What the header says wrongly is counted and dropped.
        Except: a TCPv4 super-frame to one of our addresses goes whole to TCP, its checksum
        trusted (offload.Treatment.DELIVER_WHOLE, as Linux's GRO); the second value holds
        the indices of such frames in the first."""
        _offl, size = self.offloads[port]
        c = self.offload_counters[port]
        dev = self.stack.devs.get(port)
        mtu = dev.mtu if dev is not None else 1500
        zero = bytes(size)
        out: list = []
        whole: list = []   # as received, without the header: what a capture shows
        trusted: set[int] = set()
        local = self.stack.ip4.local_ints
        for raw in frames:
            if raw[:size] == zero:
                frame = memoryview(raw)[size:]
                out.append(frame)
                whole.append(frame)
                continue
            try:
                if size not in VNET_HDR_SIZES:
                    raise ParseError(f"frame prefix of {size} bytes is no virtio-net header")
                hdr, frame = split_prefixed(raw, size)
                if hdr.gso_protocol == GSO_TCPV4:
                    h = parse_plain_ipv4(frame)
                    if h is not None and h[7] == 6 and h[10] in local:
                        trusted.add(len(out))
                        out.append(frame)
                        whole.append(frame)
                        c["rx_gso_whole"] += 1
                        continue
                plain = to_plain_frames(frame, hdr, mtu)
            except ParseError:
                c["rx_bad_offload"] += 1
                continue
            if hdr.is_gso:
                c["rx_gso_frames"] += 1
                c["rx_gso_segments"] += len(plain)
            elif hdr.needs_csum:
                c["rx_csum_partial"] += 1
            out.extend(plain)
            whole.append(frame)
        if port in self.captures:
            self._capture(port, whole)
        return out, (trusted or None)

    def _on_device_event(self, peer: bytes, name: str, ev):
        port = peer.decode("utf-8", "replace")
        if port in self.ports:
            self.ports[port]["heard"] = time.monotonic()
        if name == "attach":
            self._set_offloads(port, ev.offloads, ev.frame_prefix)
        if name in ("attach", "link"):
            if port not in self.ports or port not in self.stack.devs:
                return  # a driver for a port we do not have (yet): ignored until port_add
            info = self.ports[port]
            info["carrier"] = ev.link_up if name == "attach" else ev.up
            up = info["carrier"] and info.get("admin_up", True)
            changed = (not info["attached"]) or self.stack.devs[port].up != up
            info["attached"] = True
            if name == "attach":
                info["incarnation"] = ev.incarnation
            now = time.monotonic()
            if self.stack.devs[port].up != up:
                self.stack.set_link(port, up, now)
            if ev.mtu != self.stack.devs[port].mtu and ev.mtu >= 576:
                try:
                    self.stack.set_mtu(port, min(ev.mtu, self.stack.devs[port].mtu))
                except StackError:
                    pass
            if changed:
                self.pub.emit("port", port=port, up=up, attached=True)

    def _on_dgram_batch(self, peer: bytes, stream: str, frames: list[bytes]):
        """The 'send' stream: datagrams whose senders do not wait for an answer."""
        owner = peer.decode("utf-8", "replace")
        now = time.monotonic()
        owners = self.owners
        sendto = self.stack.udp_sendto
        udp6_owns = self.stack.udp6.owns
        for f in frames:
            try:
                # The destination stays an int: the core's fast path takes it as it is.
                sid, family, dst, dport, device, payload = decode_send(f)
                if owners.get(sid) != owner:
                    raise ValueError(f"socket {sid} is not {owner}'s")
                if (family == 6) != udp6_owns(sid):
                    raise ValueError(f"an IPv{family} destination for socket {sid}")
                sendto(sid, payload, dst, dport, now, device=device)
            except (StackError, ValueError, struct.error):
                self.counters["dg_send_errors"] += 1

    def _after_wakeup(self):
        if not self.active:
            return
        self._flush()
        dl = self.stack.next_deadline()
        now = time.monotonic()
        if dl is not None and dl <= now:
            self.stack.poll(now)
            self._flush()
            self.addresses6_changed()    # DAD ends, SLAAC lifetimes run out, on timers
            dl = self.stack.next_deadline()
        if dl == self._armed_for:
            return  # re-arming on every wake-up would fill the timer heap with cancelled entries
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._armed_for = dl
        if dl is not None:
            self.timer = self.rt.loop.call_at(max(dl, now + 0.001), self._deadline_reached)

    def _deadline_reached(self):
        self.timer = None
        self._armed_for = None

    def _flush(self):
        self.tcp.service()
        self._flush_transmit()
        for ev in self.stack.take_events():
            self._on_core_event(ev)
        readable = self.stack.udp_readable()
        if readable:
            readable = self.udp.deliver(readable)   # qnet.udp's sockets take theirs
        if readable:
            self._deliver_datagrams(readable)

    def _flush_transmit(self):
        for port, frames in self.stack.take_transmit().items():
            if port in self.captures:
                self._capture(port, frames)
            if port == "lo":
                continue
            if port in self.offloads:
                # Every frame to an offload port carries a header; ours leave nothing undone,
                # except TCP super-segments (TSO), which the header has the device cut.
                # One join per frame: two iovecs per frame would need batch offsets that
                # count header and frame as one.
                size = self.offloads[port][1]
                zero = bytes(size)
                limit = self.stack.devs[port].mtu + 14 if port in self.stack.devs else 1 << 30
                frames = [zero + f if len(f) <= limit else self._tso_frame(port, f, limit - 14, size)
                          for f in frames]
                frames = [f for f in frames if f is not None]
            peer = port.encode()
            for i in range(0, len(frames), TX_BATCH):
                chunk = frames[i:i + TX_BATCH]
                if not self.dev_chan.send_batch(peer, "tx", chunk):
                    self.counters["tx_no_driver"] += len(chunk)

    def _deliver_datagrams(self, sids):
        by_owner: dict[str, list[bytes]] = {}
        for sid in sids:
            owner = self.owners.get(sid)
            try:
                dgrams = self.stack.udp_recv(sid, 1024)
            except StackError:
                continue
            if owner is None:
                self.counters["dg_undeliverable"] += len(dgrams)
                continue
            out = by_owner.setdefault(owner, [])
            for d in dgrams:
                out.append(encode_received(sid, d.version, d.src_int, d.src_port, d.dst_int,
                                           d.dst_port, d.device.encode(), d.payload))
        for owner, frames in by_owner.items():
            if not self.dg_chan.send_batch(owner.encode(), "recv", frames):
                self.counters["dg_undeliverable"] += len(frames)

    def _on_core_event(self, ev):
        now = time.monotonic()
        if isinstance(ev, EchoReply):
            p = self.pings.get(ev.ident)
            if p is not None and ev.seq in p.sent and ev.seq not in p.replies and (
                    ev.src == p.dst or p.dst.is_multicast):
                p.replies[ev.seq] = {"seq": ev.seq, "ok": True, "rtt_ms": round((now - p.sent[ev.seq]) * 1000, 3),
                                     "ttl": ev.ttl, "size": ev.size, "error": None, "src": str(ev.src)}
                self._ping_maybe_done(p)
        elif isinstance(ev, PingError):
            p = self.pings.get(ev.ident)
            if p is not None and ev.seq in p.sent and ev.seq not in p.replies:
                p.replies[ev.seq] = {"seq": ev.seq, "ok": False, "rtt_ms": None, "ttl": None, "size": None,
                                     "error": (_icmp_error_text if p.dst.version == 4 else _icmp6_error_text)(
                                         ev.type, ev.code), "src": str(ev.src)}
                self._ping_maybe_done(p)
        elif isinstance(ev, DuplicateAddress):
            self.rt.problem(f"duplicate address on {ev.device}: {ev.address} is used by another node (DAD)")
            self.addresses6_changed()
        elif isinstance(ev, IcmpErrorForSocket):
            self.udp.icmp_error(ev.sid, ev.type, ev.code, ev.dst, ev.dst_port)
        else:
            d = ev.to_dict()
            kind = d.get("event")
            if kind == "AddressConflict":
                self.pub.emit("conflict", port=d["device"], address=d["address"], mac=d["mac"])
                self.rt.problem(f"address conflict on {d['device']}: {d['address']} is used by {d['mac']}")
            elif kind == "LinkChanged":
                self.pub.emit("port", port=d["device"], up=d["up"], attached=self.ports.get(d["device"], {}).get("attached", False))
                self.addresses6_changed()    # a link that comes up probes its addresses again

    def addresses6_changed(self) -> None:
        """Publish what changed in the IPv6 addresses since the last look (address6 events):
        the core tells a failed DAD (DuplicateAddress) but not a passed one, so the states are
        compared after timers, link changes and control calls."""
        if not self.cfg.ipv6:
            return
        now = {(a.device, a.address): a.state for a in self.stack.addresses6()}
        if now == self.addr6_states:
            return
        for (port, address), state in now.items():
            if self.addr6_states.get((port, address)) != state:
                self.pub.emit("address6", port=port, address=address, state=state, present=True)
        for (port, address), state in self.addr6_states.items():
            if (port, address) not in now:
                self.pub.emit("address6", port=port, address=address, state=state, present=False)
        self.addr6_states = now

    def _capture(self, port: str, frames: list[bytes]):
        w, f, limit = self.captures[port]
        ts = time.time()
        for fr in frames:
            if limit and w.frames_written >= limit:
                break
            w.write(bytes(fr), ts)
        f.flush()

    # -- ping ----------------------------------------------------------------------------
    def start_ping(self, token, dst, count, interval, timeout, size, ttl, device=None):
        ident = self.rng.randrange(1, 0xFFFF)
        while ident in self.pings:
            ident = self.rng.randrange(1, 0xFFFF)
        p = _Ping(token, dst, count, interval, timeout, size, ttl, ident, device)
        self.pings[ident] = p
        self._ping_send(p)

    def _ping_send(self, p: _Ping):
        if p.ident not in self.pings:
            return
        seq = p.next_seq
        p.next_seq += 1
        now = time.monotonic()
        p.sent[seq] = now
        payload = (b"qnet-ping" * ((p.size // 9) + 1))[:p.size]
        try:
            if p.dst.version == 6:
                self.stack.ping6(p.dst, p.ident, seq, payload, now, hop_limit=p.ttl, device=p.device)
            else:
                self.stack.ping(p.dst, p.ident, seq, payload, now, ttl=p.ttl)
        except StackError as exc:
            p.replies[seq] = {"seq": seq, "ok": False, "rtt_ms": None, "ttl": None, "size": None,
                              "error": str(exc)[:128], "src": None}
        self._flush()
        self.rt.loop.call_later(p.timeout, lambda: self._ping_timeout(p, seq))
        if p.next_seq < p.count:
            self.rt.loop.call_later(p.interval, lambda: self._ping_send(p))

    def _ping_timeout(self, p: _Ping, seq: int):
        if seq not in p.replies:
            p.replies[seq] = {"seq": seq, "ok": False, "rtt_ms": None, "ttl": None, "size": None,
                              "error": "timeout", "src": None}
        self._ping_maybe_done(p)

    def _ping_maybe_done(self, p: _Ping):
        if len(p.replies) < p.count or p.ident not in self.pings:
            return
        del self.pings[p.ident]
        replies = [p.replies[s] for s in sorted(p.replies)]
        self.rt.rpc.reply(p.token, {"dst": str(p.dst), "sent": len(p.sent),
                                    "received": sum(1 for r in replies if r["ok"]), "replies": replies})


def _icmp_error_text(t: int, code: int) -> str:
    if t == 3:
        return {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                3: "port unreachable", 4: "fragmentation needed"}.get(code, f"destination unreachable ({code})")
    if t == 11:
        return "time to live exceeded" if code == 0 else "fragment reassembly time exceeded"
    return f"icmp type {t} code {code}"


def _icmp6_error_text(t: int, code: int) -> str:
    # RFC 4443 §3
    if t == 1:
        return {0: "no route to destination", 1: "administratively prohibited", 2: "beyond scope of source address",
                3: "address unreachable", 4: "port unreachable", 5: "source address failed policy",
                6: "reject route"}.get(code, f"destination unreachable ({code})")
    if t == 2:
        return "packet too big"
    if t == 3:
        return "hop limit exceeded" if code == 0 else "fragment reassembly time exceeded"
    if t == 4:
        return f"parameter problem ({code})"
    return f"icmpv6 type {t} code {code}"


def main():
    run_component(Netstack)


if __name__ == "__main__":
    main()
