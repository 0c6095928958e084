"""The data channels the launcher creates and owns (ipc.seqpacket).

One AF_UNIX SOCK_SEQPACKET socketpair per (provider, protocol, user) for every
protocol that declares data streams (qnet.device, qnet.datagram): the user's
end goes to every incarnation of the user (a port's driver, dhcpd), the
provider's end to every incarnation of the provider (netstack). The launcher
keeps both ends open until the user is removed, so whatever is queued in a
channel survives a restart or a crash of either side and is read, in order, by
the next incarnation. A provider that is already running learns of a new
channel over its control socket (an fd passed with SCM_RIGHTS); a provider
that starts later gets every channel at spawn.

Identity is the channel itself: netstack knows which port a batch comes from
by the socket it arrived on, so no other process can speak for a port.
"""
from __future__ import annotations

import json
import logging
import socket
from typing import Any

from ipc import registry
from ipc.seqpacket import make_pair, send_channel

log = logging.getLogger("qnet.launcher")


def _data_protocols(refs) -> list[str]:
    out = []
    for name, _ver in refs:
        proto = registry.get(name)
        if proto is not None and proto.streams:
            out.append(name)
    return out


def user_identity(spec) -> str:
    """The name a user's channel has at its provider: the port of a driver, else the component's name."""
    return str(spec.args.get("instance") or spec.name)


class DataChannels:
    def __init__(self, graph):
        self.graph = graph
        # (provider, protocol, user) -> (provider end, user end); the launcher holds both.
        self.pairs: dict[tuple[str, str, str], tuple[socket.socket, socket.socket]] = {}
        self.owner: dict[tuple[str, str, str], str] = {}      # pair -> user instance name
        # provider instance name -> {incarnation number: launcher's end of its control socket}
        self.ctl: dict[str, dict[int, socket.socket]] = {}
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.graph.transport.get("data", "zmq") == "socketpair"

    # -- spawn -------------------------------------------------------------------------
    def for_spawn(self, inst) -> tuple[dict[str, str], list[int], tuple | None]:
        """(environment, fds to pass, the control socketpair (ours, the child's)) for a new incarnation."""
        if not self.enabled:
            return {}, [], None
        spec = inst.spec
        use: dict[str, int] = {}
        provide: dict[str, dict[str, int]] = {}
        fds: list[int] = []
        for proto in _data_protocols(spec.uses):
            prov = self.graph.provider_of(proto)
            if prov is None:
                continue
            key = (prov, proto, user_identity(spec))
            if key not in self.pairs:
                self.pairs[key] = make_pair()
                self.owner[key] = inst.name
                self._tell_provider(prov, "add", proto, key[2], self.pairs[key][0].fileno())
            use[proto] = self.pairs[key][1].fileno()
            fds.append(use[proto])
        ctl = None
        provided = _data_protocols(spec.provides)
        if provided:
            for proto in provided:
                provide[proto] = {}
            for (prov, proto, user), (pend, _uend) in self.pairs.items():
                if prov == inst.name and proto in provide:
                    provide[proto][user] = pend.fileno()
                    fds.append(pend.fileno())
            ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ctl[0].setblocking(False)
            fds.append(ctl[1].fileno())
        env: dict[str, Any] = {"use": use, "provide": provide}
        if ctl is not None:
            env["ctl"] = ctl[1].fileno()
        return {"QNET_CHANNELS": json.dumps(env)}, fds, ctl

    def spawned(self, inst, number: int, ctl: tuple | None) -> None:
        """After the child started (or failed to): keep our end of its control socket, close the child's."""
        if ctl is None:
            return
        ctl[1].close()
        self.ctl.setdefault(inst.name, {})[number] = ctl[0]

    def ended(self, name: str, number: int) -> None:
        """An incarnation exited: its control socket goes."""
        s = self.ctl.get(name, {}).pop(number, None)
        if s is not None:
            s.close()

    # -- users coming and going ----------------------------------------------------------
    def release_user(self, inst) -> None:
        """The user instance is gone for good (port deleted): its channels close."""
        for key in [k for k, owner in self.owner.items() if owner == inst.name]:
            prov, proto, user = key
            self._tell_provider(prov, "remove", proto, user, None)
            for s in self.pairs.pop(key):
                s.close()
            del self.owner[key]

    def _tell_provider(self, provider: str, op: str, proto: str, user: str, fd: int | None) -> None:
        for number, ctl in list(self.ctl.get(provider, {}).items()):
            try:
                send_channel(ctl, op, proto, user, fd)
            except OSError as exc:
                # A provider that died: its successor gets every channel at spawn.
                self.ended(provider, number)
                if not isinstance(exc, (BrokenPipeError, ConnectionError)):
                    self.errors += 1
                log.info("channel %s %s/%s not sent to %s.%d: %s", op, proto, user, provider, number, exc)

    def close_all(self) -> None:
        for pair in self.pairs.values():
            for s in pair:
                s.close()
        self.pairs.clear()
        self.owner.clear()
        for by_number in self.ctl.values():
            for s in by_number.values():
                s.close()
        self.ctl.clear()

    def status(self) -> dict[str, Any]:
        return {"transport": "socketpair" if self.enabled else "zmq", "channels": len(self.pairs),
                "errors": self.errors}
