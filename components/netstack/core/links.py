"""The device layer's tables: the devices, their transmit queues and the loopback queue.

Every layer that sends hands its frame or packet to `Links`: `enqueue_tx` for a device's
transmit queue (taken by the binding), `loopback` for a packet the stack delivers to itself
(drained by Stack, which feeds it back into receive). Both are bounded and count what they
drop in the device's counter group (`dev:NAME`).
"""

from __future__ import annotations

from collections import deque

from .config import StackConfig
from .counters import CounterSet
from ..wire import MacAddr
from .device import LOOPBACK, Device


class Links:
    def __init__(self, cfg: StackConfig, ctr: CounterSet) -> None:
        self.cfg = cfg
        self._ctr = ctr
        self.devices: dict[str, Device] = {}
        self.lo_queue: deque[bytes] = deque()

    def counters(self, name: str):
        """The counter group of device `name` (made on first use)."""
        return self._ctr.group(f"dev:{name}")

    def drop_counters(self, name: str) -> None:
        self._ctr.drop_group(f"dev:{name}")

    def enqueue_tx(self, dev: Device, frame: bytes) -> None:
        c = self.counters(dev.name)
        if not dev.up:
            c["tx_drop_link_down"] += 1
        elif len(dev.tx) >= self.cfg.tx_queue_frames:
            c["tx_drop_queue_full"] += 1
        else:
            dev.tx.append(frame)
            c["tx_frames"] += 1
            c["tx_bytes"] += len(frame)

    def loopback(self, dev: Device, packet: bytes) -> None:
        c = self.counters(dev.name)
        if len(self.lo_queue) >= self.cfg.loopback_queue_frames:
            c["tx_drop_queue_full"] += 1
            return
        self.lo_queue.append(packet)
        c["tx_frames"] += 1
        c["tx_bytes"] += len(packet)

    # -- restart -----------------------------------------------------------------------------
    def snapshot(self) -> list[dict]:
        return [{"name": d.name, "kind": d.kind,
                 "mac": None if d.mac is None else bytes(d.mac),
                 "mtu": d.mtu, "up": d.up, "forwarding": d.forwarding}
                for d in self.devices.values() if d.kind != LOOPBACK]

    def restore(self, snap: list[dict]) -> None:
        for d in snap:
            mac = None if d["mac"] is None else MacAddr(bytes(d["mac"]))
            self.devices[d["name"]] = Device(d["name"], d["kind"], mac, int(d["mtu"]),
                                             up=bool(d["up"]), forwarding=bool(d["forwarding"]))
