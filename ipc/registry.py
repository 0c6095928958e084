"""Every declared protocol, by name: what `qnet ipc list` and the manifest validator read."""
from __future__ import annotations

import importlib

from .decl import Protocol, Version

_PROTOCOLS: dict[str, Protocol] = {}

# The modules in ipc/protocols that hold qnet's own declarations.
BUILTIN_MODULES = (
    "ipc.protocols.lifecycle",
    "ipc.protocols.launcher",
    "ipc.protocols.device",
    "ipc.protocols.netstack",
    "ipc.protocols.udp",
    "ipc.protocols.dhcpd",
    "ipc.protocols.vm",
    "ipc.protocols.sockets",
    "ipc.protocols.filter",
    "ipc.protocols.firewall",
)
_loaded = False


def register(proto: Protocol) -> Protocol:
    old = _PROTOCOLS.get(proto.name)
    if old is not None and old is not proto:
        raise ValueError(f"protocol {proto.name} is declared twice")
    _PROTOCOLS[proto.name] = proto
    return proto


def load_module(name: str) -> list[Protocol]:
    """Import a module of declarations and register every Protocol it defines."""
    mod = importlib.import_module(name)
    found = [v for v in vars(mod).values() if isinstance(v, Protocol)]
    for p in found:
        register(p)
    return found


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN_MODULES:
        try:
            load_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def get(name: str) -> Protocol | None:
    _load_builtin()
    return _PROTOCOLS.get(name)


def all_protocols() -> list[Protocol]:
    _load_builtin()
    return sorted(_PROTOCOLS.values(), key=lambda p: p.name)


def parse_ref(ref: str) -> tuple[str, Version | None]:
    """'qnet.device@1.0' -> ('qnet.device', Version(1, 0)); the version is optional."""
    name, sep, ver = ref.partition("@")
    return name, (Version.parse(ver) if sep else None)
