"""Construction shortcuts for parsers, whose inputs are already checked.

A frozen dataclass's generated __init__ sets each field through object.__setattr__, which
costs about 95 ns a field; calling the slot descriptors directly halves that. Only parsers use
these, after they have validated every value; the public classes stay frozen.
"""

from __future__ import annotations

from dataclasses import fields
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Callable

from .addr import MacAddr


def trusted_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen slots dataclass that skips object.__setattr__."""
    names = [f.name for f in fields(cls)]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def make({', '.join(names)}):", "    obj = _new(_cls)"]
    for i, name in enumerate(names):
        env[f"_set{i}"] = getattr(cls, name).__set__
        lines.append(f"    _set{i}(obj, {name})")
    lines.append("    return obj")
    exec("\n".join(lines), env)  # noqa: S102 - code built from dataclass field names only
    make = env["make"]
    make.__qualname__ = f"{cls.__name__}._trusted"
    return make


_bytes_new = bytes.__new__


def trusted_mac(raw: bytes | memoryview) -> MacAddr:
    """A MacAddr from a slice the caller knows is 6 bytes long."""
    return _bytes_new(MacAddr, raw)


# Address objects are immutable, so parsed packets can share them. The caches are bounded
# (cleared when full) because source addresses come from the wire, and hostile input could
# otherwise grow them without limit.
_CACHE_LIMIT = 4096
_v4_cache: dict[bytes, IPv4Address] = {}
_v6_cache: dict[bytes, IPv6Address] = {}


def ipv4_address(raw: bytes) -> IPv4Address:
    addr = _v4_cache.get(raw)
    if addr is None:
        if len(_v4_cache) >= _CACHE_LIMIT:
            _v4_cache.clear()
        addr = _v4_cache[raw] = IPv4Address(raw)
    return addr


def ipv6_address(raw: bytes) -> IPv6Address:
    addr = _v6_cache.get(raw)
    if addr is None:
        if len(_v6_cache) >= _CACHE_LIMIT:
            _v6_cache.clear()
        addr = _v6_cache[raw] = IPv6Address(raw)
    return addr
