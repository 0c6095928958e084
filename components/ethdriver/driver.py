"""The ethdriver component: moves Ethernet frames between one backend and netstack.

One instance per port (``ethdriver.PORT``). It knows nothing of IP. The
backend's OS handle (a TAP fd, QEMU's stream or dgram socket) is opened by the
launcher and inherited by every incarnation, so a restart is invisible to the
kernel device and to QEMU. Frames travel in batches: the driver reads until
the backend is empty and sends one message per batch.

State: none that matters beyond the handle. A planned restart freezes the
predecessor (it stops reading the backend, so unread frames stay in the
kernel's queue for the successor) and hands over the stream backend's partial
frame bytes.
"""
from __future__ import annotations

import time

from components.ethdriver.backends import BackendWrapper, DgramBackend, FaultInjector, StreamBackend, TapBackend, TapError
from components.ethdriver.backends.fault import parse_fault_spec
from components.runtime import Component, run_component
from ipc.accounting import drops_of, table
from ipc.channel import UserChannel
from ipc.protocols.device import DEVICE

ATTACH_INTERVAL = 2.0
LINK_POLL = 0.5
MAX_BATCH = 256


class EthDriver(Component):
    STATE_SCHEMA = 1

    def __init__(self, rt):
        super().__init__(rt)
        self.port = rt.args.get("instance") or rt.args.get("port")
        if not self.port:
            raise SystemExit("ethdriver: no port name (args.instance)")
        self.kind = rt.args.get("backend", "tap")
        self.peer = rt.spec.peers.get("qnet.device")
        if self.peer is None:
            raise SystemExit("ethdriver: the graph gives no provider of qnet.device")
        # The channel is opened in activate(), not here. On the socketpair transport it is
        # the launcher's channel, shared with the predecessor; on ZeroMQ, netstack's
        # ROUTER_HANDOVER gives the port's name to the newest connection, and a successor
        # that connected while its predecessor still runs would steal the predecessor's
        # last batches (ZeroMQ drops what the old connection sends after a hand-over).
        self.chan = None
        self.backend = None
        self.active = False
        self.link = None
        self.counters = {"rx_batches": 0, "tx_batches": 0, "tx_short": 0, "rx_paused": 0}
        self._paused = False
        self._backend_timer = None
        self.fault = None
        if rt.args.get("fault"):
            # The launcher checked it (launcher/ports.py); a hand-written args table may not be.
            try:
                self.fault = parse_fault_spec(rt.args["fault"])
            except ValueError as exc:
                raise SystemExit(f"ethdriver: {exc}") from None

    def _open_backend(self, state):
        backend = self._open_device(state)
        if self.fault is not None:
            # A wrapper around whichever device: a TAP, a QEMU stream or dgram link gets the
            # same loss, reordering and delay (docs/fault-injection.md).
            backend = FaultInjector.from_spec(backend, self.fault)
            self.log.info("fault injection: %s", self.fault)
        return backend

    def _device(self):
        """The backend under any wrappers."""
        b = self.backend
        while isinstance(b, BackendWrapper):
            b = b.inner
        return b

    def _open_device(self, state):
        h = self.rt.handles
        mtu = int(self.rt.args.get("mtu", 1500))
        if self.kind == "tap":
            ifname = self.rt.args.get("ifname")
            if self.rt.args.get("offloads"):
                try:
                    return TapBackend(h["tap"], ifname, offloads=True)
                except TapError as exc:
                    # A TAP opened without IFF_VNET_HDR, or a kernel that refuses: the port
                    # still works, as a plain one (netstack learns so from attach).
                    self.log.warning("offloads unavailable, running plain: %s", exc)
            return TapBackend(h["tap"], ifname)
        if self.kind == "dgram":
            return DgramBackend(h["dgram"], self.rt.args["peer_path"], mtu=mtu)
        if self.kind == "stream":
            residue = (state or {}).get("rx_residue", b"")
            conn = h.get("conn")
            return StreamBackend.from_handles(h["listen"], conn, residue) if (conn or residue) \
                else StreamBackend(h["listen"], mtu=mtu)
        raise SystemExit(f"ethdriver: unknown backend {self.kind!r}")

    # -- lifecycle ------------------------------------------------------------------------
    def activate(self, state):
        self.chan = self.rt.data_user(DEVICE, self.peer["data"], self.port.encode())
        self.backend = self._open_backend(state)
        # attach goes first on the ordered channel: netstack must know the frame prefix of an
        # offload port before the first batch (frames may wait in the kernel queue already).
        self._attach()
        self._start_io()
        self.rt.loop.call_every(ATTACH_INTERVAL, self._attach)
        self.rt.loop.call_every(LINK_POLL, self._poll_link)
        self.rt.loop.idle_hooks.append(self._arm_backend_timer)

    def _start_io(self):
        self.active = True
        self.rt.loop.add_reader(self.backend.fileno(), self._on_backend)
        self.chan.start(self.rt.loop, self._on_tx, self._on_event, 64)
        # Frames may already wait in the kernel queue (a successor after a hand-over).
        self._on_backend()

    def freeze(self):
        self.active = False
        self._paused = False
        self.rt.loop.remove_reader(self.backend.fileno())
        self.rt.loop.remove_writer(self.chan.poll_key)
        if self._backend_timer is not None:
            self._backend_timer.cancel()
            self._backend_timer = None
        self.chan.stop()
        if isinstance(self.chan, UserChannel):
            # ZeroMQ: what netstack already sent to this connection is ours to write now.
            # (A socketpair keeps unread batches queued for the successor instead.)
            self._on_channel_drain()
        state = {}
        device = self._device()
        if isinstance(device, StreamBackend):
            state["rx_residue"] = device.rx_residue()
        return state

    def thaw(self):
        self._start_io()

    def close(self):
        if self.backend is not None:
            self.backend.close()
        if self.chan is not None:
            self.chan.close()

    def status(self):
        c = self.backend.counters() if self.backend is not None else {}
        ch = dict(self.chan.counters) if self.chan is not None else {}
        drops = drops_of(c) + drops_of(ch) + drops_of(self.counters)
        offloads = list(self.backend.offloads()) if self.backend is not None else []
        tables = {}
        end = getattr(self.chan, "end", None)
        if end is not None:  # the launcher's socketpair toward netstack: bytes netstack has not read
            tables["channel"] = table(end.queued_bytes(), end.sndbuf, end.dropped_frames)
        if self.backend is not None:
            tables.update(self.backend.tables())
        return {"port": self.port, "backend": self.kind, "link_up": bool(self.link), "drops": drops,
                "fault": str(self.fault) if self.fault is not None else None,
                "internal_errors": self.rt.loop.errors, "tables": tables,
                "offloads": offloads, "frame_prefix": self.backend.frame_prefix_len if self.backend else 0,
                "backend_counters": c, "channel": ch, **self.counters}

    # -- data path ------------------------------------------------------------------------
    def _on_backend(self):
        if not self.active:
            return
        # Read until the backend is empty (bounded per wake-up so the channel side gets a turn).
        for _ in range(8):
            if not self.chan.writable():
                # netstack is behind: leave frames in the kernel's queue (where the kernel
                # drops and counts them) instead of reading them only to drop them here.
                self._pause_backend()
                return
            frames = self.backend.read_batch(MAX_BATCH)
            if not frames:
                break
            if not self.link:
                # A dgram backend comes up with its first datagram: say so before the
                # frames, on the same ordered channel, so netstack does not drop them.
                self._poll_link()
            self.counters["rx_batches"] += 1
            self.chan.send_batch("rx", frames)
            if len(frames) < MAX_BATCH:
                break

    def _arm_backend_timer(self):
        """After every wake-up: a timer for the backend's next timed work (a delay line's next
        release). Not while paused: frames that came due wait for the resume, which reads them."""
        if not self.active or self._paused or self.backend is None:
            return
        when = self.backend.next_deadline()
        if when is None:
            return
        t = self._backend_timer
        if t is not None:
            if t.when <= when:
                return
            t.cancel()
        self._backend_timer = self.rt.loop.call_at(when, self._on_backend_timer)

    def _on_backend_timer(self):
        self._backend_timer = None
        if not self.active:
            return
        self.backend.poll(time.monotonic())
        self._on_backend()

    def _pause_backend(self):
        """Stop reading the backend until the channel has room again."""
        if self._paused:
            return
        self._paused = True
        self.counters["rx_paused"] += 1
        self.rt.loop.remove_reader(self.backend.fileno())
        self.rt.loop.add_writer(self.chan.poll_key, self._resume_backend)

    def _resume_backend(self):
        self.rt.loop.remove_writer(self.chan.poll_key)
        self._paused = False
        if self.active:
            self.rt.loop.add_reader(self.backend.fileno(), self._on_backend)
            self._on_backend()

    def _on_channel_drain(self):
        self.chan.receive(self._on_tx, self._on_event, limit=1024)

    def _on_tx(self, stream: str, frames: list[bytes]):
        if stream != "tx":
            return
        self.counters["tx_batches"] += 1
        # With offloads each frame carries its virtio-net header, as the backend wants it.
        n = self.backend.write_batch(frames)
        if n < len(frames):
            self.counters["tx_short"] += len(frames) - n

    def _on_event(self, name: str, ev):
        if name == "resync":
            self._attach()

    def _attach(self):
        if self.backend is None:
            return
        self.link = self.backend.link_up()
        mac = self.backend.mac
        mac = ":".join(f"{b:02x}" for b in bytes(mac)) if mac and len(mac) == 6 else None
        self.chan.send_event("attach", port=self.port, incarnation=self.rt.incarnation, backend=self.kind,
                             mac=mac, mtu=max(68, min(65535, self.backend.mtu)),
                             link_up=bool(self.link), offloads=list(self.backend.offloads()),
                             frame_prefix=self.backend.frame_prefix_len)

    def _poll_link(self):
        if self.backend is None or not self.active:
            return
        up = self.backend.link_up()
        if up != self.link:
            self.link = up
            self.chan.send_event("link", port=self.port, up=bool(up), mtu=max(68, min(65535, self.backend.mtu)))
            self.log.info("link %s", "up" if up else "down")


def main():
    run_component(EthDriver)


if __name__ == "__main__":
    main()
