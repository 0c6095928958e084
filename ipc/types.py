"""The type language of qnet's interface declarations.

Each type knows three things: how a person reads it (``describe``), which
msgspec annotation validates it in one C pass (``annotation``), and how its
values look on the wire (MessagePack). Addresses travel as strings
("10.0.0.1", "10.0.0.0/24", "52:54:00:12:34:56") so a capture of the IPC
traffic stays readable; they decode into ``ipaddress`` objects, so code past
the decoder holds checked values (STYLE.md: types as proofs).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

_MAC_RE = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"

# Container bounds that apply where a declaration sets none: every list and
# string is bounded, so a hostile peer cannot make a decoder allocate freely.
DEFAULT_MAX_STR = 4096
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_LIST = 4096


class IpcType:
    """Base of every declared type."""

    def annotation(self) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.describe()


@dataclass(frozen=True, repr=False)
class Int(IpcType):
    lo: int = -(1 << 63)
    hi: int = (1 << 64) - 1

    def __post_init__(self):
        # msgspec bounds must fit an int64: an upper bound between 2**63 and 2**64-2 could not be
        # enforced, so it is refused here rather than silently widened to uint64.
        if not (-(1 << 63) <= self.lo <= self.hi <= (1 << 64) - 1) or (1 << 63) <= self.hi < (1 << 64) - 1:
            raise ValueError(f"Int bounds [{self.lo}..{self.hi}] cannot be enforced (int64, or uint64 in full)")

    def annotation(self):
        # msgspec bounds must fit in an int64; wider bounds are the type's own (uint64).
        lo = self.lo if self.lo > -(1 << 63) else None
        hi = self.hi if self.hi < (1 << 63) else None
        if lo is None and hi is None:
            return int
        return Annotated[int, msgspec.Meta(ge=lo, le=hi)]

    def describe(self):
        if self.lo == -(1 << 63) and self.hi == (1 << 64) - 1:
            return "int"
        return f"int[{self.lo}..{self.hi}]"


U8, U16, U32, U64 = Int(0, 0xFF), Int(0, 0xFFFF), Int(0, 0xFFFFFFFF), Int(0, (1 << 64) - 1)


@dataclass(frozen=True, repr=False)
class Float(IpcType):
    def annotation(self):
        return float

    def describe(self):
        return "float"


@dataclass(frozen=True, repr=False)
class Bool(IpcType):
    def annotation(self):
        return bool

    def describe(self):
        return "bool"


@dataclass(frozen=True, repr=False)
class Str(IpcType):
    max_len: int = DEFAULT_MAX_STR
    min_len: int = 0
    pattern: str | None = None
    label: str | None = None

    def annotation(self):
        meta = msgspec.Meta(max_length=self.max_len, min_length=self.min_len, pattern=self.pattern)
        return Annotated[str, meta]

    def describe(self):
        if self.label:
            return self.label
        return f"str[..{self.max_len}]" if self.pattern is None else f"str /{self.pattern}/"


@dataclass(frozen=True, repr=False)
class Bytes(IpcType):
    max_len: int = DEFAULT_MAX_BYTES

    def annotation(self):
        return Annotated[bytes, msgspec.Meta(max_length=self.max_len)]

    def describe(self):
        return f"bytes[..{self.max_len}]"


@dataclass(frozen=True, repr=False)
class Enum(IpcType):
    name: str
    values: tuple[str, ...]

    def annotation(self):
        return Literal[self.values]  # type: ignore[valid-type]

    def describe(self):
        return f"{self.name}{{{'|'.join(self.values)}}}"


@dataclass(frozen=True, repr=False)
class List(IpcType):
    item: IpcType
    max_len: int = DEFAULT_MAX_LIST

    def annotation(self):
        return Annotated[list[self.item.annotation()], msgspec.Meta(max_length=self.max_len)]

    def describe(self):
        return f"list[{self.item.describe()}; ..{self.max_len}]"


@dataclass(frozen=True, repr=False)
class Map(IpcType):
    """A string-keyed map; values of one type (use Any() for free-form data)."""

    value: IpcType
    max_len: int = DEFAULT_MAX_LIST

    def annotation(self):
        key = Annotated[str, msgspec.Meta(max_length=256)]
        return Annotated[dict[key, self.value.annotation()], msgspec.Meta(max_length=self.max_len)]

    def describe(self):
        return f"map[str -> {self.value.describe()}; ..{self.max_len}]"


@dataclass(frozen=True, repr=False)
class Optional(IpcType):
    inner: IpcType

    def annotation(self):
        return self.inner.annotation() | None

    def describe(self):
        return f"{self.inner.describe()}?"


@dataclass(frozen=True, repr=False)
class AnyValue(IpcType):
    """Free-form MessagePack data: status figures, counters. Size-bounded by the message limit."""

    def annotation(self):
        return Any

    def describe(self):
        return "any"


@dataclass(frozen=True, repr=False)
class Field:
    name: str
    type: IpcType
    default: Any = msgspec.NODEFAULT
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is msgspec.NODEFAULT

    def describe(self) -> str:
        opt = "" if self.required else f" = {self.default!r}"
        doc = f"    # {self.doc}" if self.doc else ""
        return f"{self.name}: {self.type.describe()}{opt}{doc}"


@dataclass(frozen=True, repr=False, eq=False)
class Struct(IpcType):
    name: str
    fields: tuple[Field, ...] = ()
    _cls: Any = field(default=None, compare=False)

    def struct_class(self):
        # Built lazily and cached: one msgspec Struct per declared struct.
        if self._cls is None:
            spec = []
            for f in self.fields:
                if f.required:
                    spec.append((f.name, f.type.annotation()))
                else:
                    spec.append((f.name, f.type.annotation(), f.default))
            cls = msgspec.defstruct(self.name, spec, kw_only=True, forbid_unknown_fields=True,
                                    omit_defaults=False)
            object.__setattr__(self, "_cls", cls)
        return self._cls

    def annotation(self):
        return self.struct_class()

    def describe(self):
        return self.name

    def describe_fields(self, indent: str = "    ") -> str:
        return "\n".join(indent + f.describe() for f in self.fields)


def struct(name: str, *fields: Field) -> Struct:
    return Struct(name, tuple(fields))


class _AddrType(IpcType):
    pytype: type = object
    label = ""

    def annotation(self):
        return self.pytype

    def describe(self):
        return self.label


class IPv4Addr(_AddrType):
    pytype, label = ipaddress.IPv4Address, "ipv4"


class IPv6Addr(_AddrType):
    pytype, label = ipaddress.IPv6Address, "ipv6"


class IPAddr(_AddrType):
    """An address of either version ("10.0.0.1", "2001:db8::1"); it decodes into an
    IPv4Address or an IPv6Address (their common base is what msgspec checks). No zone: a
    link-local address's scope travels beside it, as sockaddr_in6 keeps it apart."""

    pytype, label = ipaddress._BaseAddress, "ip"


class IPv4Prefix(_AddrType):
    pytype, label = ipaddress.IPv4Network, "ipv4-prefix"


class IPv6Prefix(_AddrType):
    pytype, label = ipaddress.IPv6Network, "ipv6-prefix"


class IPv4Iface(_AddrType):
    """An address with its prefix length, as given to an interface: 10.0.0.1/24."""

    pytype, label = ipaddress.IPv4Interface, "ipv4-interface"


class IPv6Iface(_AddrType):
    pytype, label = ipaddress.IPv6Interface, "ipv6-interface"


class Mac(IpcType):
    def annotation(self):
        return Annotated[str, msgspec.Meta(pattern=_MAC_RE)]

    def describe(self):
        return "mac"


IPV4, IPV6, IPV4_PREFIX, IPV6_PREFIX = IPv4Addr(), IPv6Addr(), IPv4Prefix(), IPv6Prefix()
IP = IPAddr()
IPV4_IFACE, IPV6_IFACE, MAC = IPv4Iface(), IPv6Iface(), Mac()
BOOL, FLOAT, ANY = Bool(), Float(), AnyValue()
NAME = Str(max_len=64, min_len=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", label="name")

def _unscoped(a):
    if getattr(a, "scope_id", None):
        raise ValueError(f"{a}: a zone travels apart from the address (a scope_id field)")
    return a


_ADDR_TYPES = {
    ipaddress.IPv4Address: ipaddress.IPv4Address,
    ipaddress.IPv6Address: ipaddress.IPv6Address,
    ipaddress._BaseAddress: lambda s: _unscoped(ipaddress.ip_address(s)),
    ipaddress.IPv4Network: lambda s: ipaddress.IPv4Network(s, strict=True),
    ipaddress.IPv6Network: lambda s: ipaddress.IPv6Network(s, strict=True),
    ipaddress.IPv4Interface: ipaddress.IPv4Interface,
    ipaddress.IPv6Interface: ipaddress.IPv6Interface,
}


def dec_hook(tp: type, obj: Any) -> Any:
    """msgspec hook: strings on the wire become checked ipaddress objects."""
    make = _ADDR_TYPES.get(tp)
    if make is None:
        raise NotImplementedError(f"no decoder for {tp!r}")
    if not isinstance(obj, str) or len(obj) > 64:
        raise ValueError(f"expected {tp.__name__} as a string")
    return make(obj)


_ADDR_CLASSES = tuple(_ADDR_TYPES)


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, _ADDR_CLASSES):
        return str(obj)
    if isinstance(obj, memoryview):
        return bytes(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def is_mac(text: str) -> bool:
    return re.match(_MAC_RE, text) is not None
