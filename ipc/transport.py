"""Where sockets bind and connect, and with what protection.

ipc:// endpoints live in the private 0700 runtime directory and need nothing
more. tcp:// endpoints (a graph whose manifest says ``transport = "tcp"``)
are protected with CURVE when the process has keys: servers accept only the
client keys the launcher listed, clients check the server's public key. The
keys arrive in the environment the launcher gives each component:

    QNET_CURVE_SECRET_FILE   this process's key pair (ZeroMQ certificate, 0600)
    QNET_CURVE_ALLOWED       JSON list of client public keys a server accepts (default: its own)
    QNET_CURVE_SERVERS       JSON map: tcp endpoint -> the server's public key (default: its own)

The launcher gives every component of a graph the graph's one key pair: only
holders of that key (a 0600 file in the runtime directory, copied to another
host to run a component there) can talk to the graph's tcp endpoints.

Every bind and connect in ipc/ goes through ``bind`` and ``connect`` below,
so a component needs no code of its own for this.
"""
from __future__ import annotations

import json
import os

import zmq

_security: "Security | None" = None
_loaded_env = False


class Security:
    def __init__(self, keys, allowed: list[bytes], servers: dict[str, bytes]):
        from .curve import ClientCurve, ServerCurve
        self.keys = keys
        self.server = ServerCurve(keys, allowed=list(allowed))
        self.servers = dict(servers)
        self._client_curve = ClientCurve

    def apply_server(self, sock: zmq.Socket) -> None:
        self.server.apply_server(sock)

    def apply_client(self, sock: zmq.Socket, endpoint: str) -> None:
        public = self.servers.get(endpoint, self.keys.public)
        self._client_curve(self.keys, public).apply_client(sock)


def configure(security: Security | None) -> None:
    global _security, _loaded_env
    _security = security
    _loaded_env = True


def _from_env() -> Security | None:
    global _loaded_env
    _loaded_env = True
    secret_file = os.environ.get("QNET_CURVE_SECRET_FILE")
    if not secret_file:
        return None
    from .curve import CurveKeys
    keys = CurveKeys.load(secret_file)
    allowed = [k.encode() for k in json.loads(os.environ.get("QNET_CURVE_ALLOWED", "[]"))] or [keys.public]
    servers = {ep: k.encode() for ep, k in json.loads(os.environ.get("QNET_CURVE_SERVERS", "{}")).items()}
    return Security(keys, allowed, servers)


def security() -> Security | None:
    global _security
    if not _loaded_env:
        _security = _from_env()
    return _security


def bind(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("tcp://"):
        sec = security()
        if sec is not None:
            sec.apply_server(sock)
    sock.bind(endpoint)


def connect(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("tcp://"):
        sec = security()
        if sec is not None:
            sec.apply_client(sock, endpoint)
    sock.connect(endpoint)
