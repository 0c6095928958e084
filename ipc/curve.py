"""CURVE authentication for tcp:// endpoints (components on another host).

On one host every endpoint is ipc:// in a private 0700 directory and needs no
keys. Across hosts, a server gets a key pair and a list of client public keys
it accepts; ZeroMQ's ZAP handler (zmq.auth) refuses any other client during
the handshake, before a single message is read.

    keys = CurveKeys.generate()
    server = RpcServer("tcp://0.0.0.0:7001", impls, curve=ServerCurve(keys, allowed=[client.public]))
    client = RpcClient("tcp://host:7001", proto, curve=ClientCurve(client_keys, server_public=keys.public))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from .rpc import context


@dataclass(frozen=True)
class CurveKeys:
    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> "CurveKeys":
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    def save(self, directory: str, name: str) -> tuple[str, str]:
        """Write NAME.key (public) and NAME.key_secret (0600) in ZeroMQ's certificate format."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        pub, sec = zmq.auth.create_certificates(directory, name)
        os.chmod(sec, 0o600)
        return pub, sec

    @classmethod
    def load(cls, secret_file: str) -> "CurveKeys":
        public, secret = zmq.auth.load_certificate(secret_file)
        if secret is None:
            raise ValueError(f"{secret_file} holds no secret key")
        return cls(public, secret)


_authenticator: ThreadAuthenticator | None = None


def _auth() -> ThreadAuthenticator:
    global _authenticator
    if _authenticator is None:
        _authenticator = ThreadAuthenticator(context())
        _authenticator.start()
    return _authenticator


@dataclass
class ServerCurve:
    keys: CurveKeys
    allowed: list[bytes] = field(default_factory=list)
    domain: str = "*"

    def apply_server(self, sock: zmq.Socket) -> None:
        auth = _auth()
        auth.configure_curve_callback(domain=self.domain, credentials_provider=_KeyList(self.allowed))
        sock.curve_server = True
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.zap_domain = self.domain.encode()


@dataclass
class ClientCurve:
    keys: CurveKeys
    server_public: bytes

    def apply_client(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_serverkey = self.server_public


class _KeyList:
    """The ZAP credentials provider: a client is let in only if its public key is listed."""

    def __init__(self, keys: list[bytes]):
        # ZAP hands us the client's key in Z85 text, as zmq.curve_keypair() makes them.
        self.keys = {zmq.utils.z85.encode(k) if len(k) == 32 else bytes(k) for k in keys}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys
