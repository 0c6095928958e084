"""Interface declarations: a protocol is data, read by tools and by people.

A ``Protocol`` names its version, its methods (typed arguments and result,
the application errors each may raise, whether a retry is safe), its events
and its one-way data streams. Both ends compile it into msgspec decoders and
validate every message against it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from . import errors
from .types import Field, IpcType, Struct, dec_hook, enc_hook

_encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
_raw_decoder = msgspec.msgpack.Decoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_raw(data: bytes) -> Any:
    """Untyped MessagePack from a peer; anything unreadable is a BadMessage.

    msgspec decodes nested containers recursively: a peer's 100,000-deep array
    raises RecursionError, which must become the same typed answer as any other
    malformed message (never a traceback and a caller left to time out).
    """
    try:
        return _raw_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise errors.BadMessage(f"not MessagePack ({exc})") from None
    except RecursionError:
        raise errors.BadMessage("MessagePack nested too deeply") from None


@dataclass(frozen=True)
class Version:
    major: int
    minor: int = 0

    @classmethod
    def parse(cls, text: str) -> "Version":
        try:
            major, _, minor = text.partition(".")
            return cls(int(major), int(minor or 0))
        except ValueError:
            raise ValueError(f"bad version {text!r}: expected MAJOR.MINOR") from None

    def serves(self, wanted: "Version") -> bool:
        """A server at this version can serve a client built for ``wanted``."""
        return self.major == wanted.major and self.minor >= wanted.minor

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(eq=False)
class Method:
    name: str
    args: tuple[Field, ...] = ()
    result: IpcType | None = None
    errors: tuple[str, ...] = ()
    idempotent: bool = False
    doc: str = ""
    _args_struct: Struct | None = None
    _args_decoder: Any = None
    _result_decoder: Any = None

    def compile(self, protocol: str) -> None:
        for code in self.errors:
            if code in errors.TRANSPORT_CODES:
                raise ValueError(f"{protocol}.{self.name}: error code {code!r} is reserved")
        self._args_struct = Struct(f"{protocol}.{self.name}.args", self.args)
        self._args_decoder = msgspec.msgpack.Decoder(self._args_struct.struct_class(), dec_hook=dec_hook)
        rtype = self.result.annotation() if self.result is not None else None
        self._result_decoder = msgspec.msgpack.Decoder(rtype, dec_hook=dec_hook)

    def decode_args(self, body: bytes) -> Any:
        """Validated arguments as a msgspec Struct; raises InvalidArgument or BadMessage."""
        try:
            return self._args_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise errors.InvalidArgument(f"{self.name}: {readable_validation_error(str(exc))}",
                                         details={"raw": str(exc)}) from None
        except msgspec.DecodeError as exc:
            raise errors.BadMessage(f"{self.name}: arguments are not MessagePack ({exc})") from None
        except RecursionError:
            raise errors.BadMessage(f"{self.name}: arguments nested too deeply") from None

    def decode_result(self, body: bytes) -> Any:
        try:
            return self._result_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise errors.InvalidResult(f"{self.name}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise errors.BadMessage(f"{self.name}: result is not MessagePack ({exc})") from None
        except RecursionError:
            raise errors.BadMessage(f"{self.name}: result nested too deeply") from None

    def describe(self) -> str:
        args = ", ".join(f.describe().split("    #")[0] for f in self.args)
        result = self.result.describe() if self.result is not None else "none"
        tags = []
        if self.idempotent:
            tags.append("idempotent")
        if self.errors:
            tags.append("errors: " + ", ".join(self.errors))
        line = f"  {self.name}({args}) -> {result}"
        if tags:
            line += f"    [{'; '.join(tags)}]"
        if self.doc:
            line += f"\n      {self.doc}"
        return line


@dataclass(eq=False)
class Event:
    name: str
    fields: tuple[Field, ...] = ()
    doc: str = ""
    _decoder: Any = None

    def compile(self, protocol: str) -> None:
        st = Struct(f"{protocol}.{self.name}", self.fields)
        self._decoder = msgspec.msgpack.Decoder(st.struct_class(), dec_hook=dec_hook)

    def decode(self, body: bytes) -> Any:
        try:
            return self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise errors.InvalidArgument(f"event {self.name}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise errors.BadMessage(f"event {self.name}: not MessagePack ({exc})") from None
        except RecursionError:
            raise errors.BadMessage(f"event {self.name}: nested too deeply") from None

    def describe(self) -> str:
        fields = ", ".join(f.describe().split("    #")[0] for f in self.fields)
        line = f"  {self.name}({fields})"
        return line + (f"\n      {self.doc}" if self.doc else "")


@dataclass(eq=False)
class Stream:
    """A one-way stream of frame batches: one message per batch (ipc.batch)."""

    name: str
    direction: str  # "to_provider" or "to_user"
    max_batch: int = 1024
    max_frame: int = 65535 + 18
    doc: str = ""

    def describe(self) -> str:
        arrow = "user -> provider" if self.direction == "to_provider" else "provider -> user"
        line = f"  {self.name}: frame batches, {arrow}, <= {self.max_batch} frames of <= {self.max_frame} B"
        return line + (f"\n      {self.doc}" if self.doc else "")


@dataclass(eq=False)
class Protocol:
    name: str
    version: Version
    methods: tuple[Method, ...] = ()
    events: tuple[Event, ...] = ()
    streams: tuple[Stream, ...] = ()
    doc: str = ""
    # Connections or sockets of this protocol carry their data on launcher-held AF_UNIX
    # socketpairs, one per connection or socket, asked of the launcher's broker: True (or
    # "stream") for SOCK_STREAM byte channels (TCP), "seqpacket" for SOCK_SEQPACKET datagram
    # channels, one message per datagram (UDP).
    byte_channels: bool | str = False
    method_by_name: dict = field(default_factory=dict)
    event_by_name: dict = field(default_factory=dict)
    stream_by_name: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.byte_channels not in (False, True, "stream", "seqpacket"):
            raise ValueError(f"{self.name}: byte_channels must be False, True, 'stream' or 'seqpacket'")
        for m in self.methods:
            if m.name in self.method_by_name:
                raise ValueError(f"{self.name}: method {m.name} declared twice")
            m.compile(self.name)
            self.method_by_name[m.name] = m
        for e in self.events:
            e.compile(self.name)
            self.event_by_name[e.name] = e
        for s in self.streams:
            if s.direction not in ("to_provider", "to_user"):
                raise ValueError(f"{self.name}: stream {s.name}: bad direction {s.direction!r}")
            self.stream_by_name[s.name] = s

    @property
    def channel_kind(self) -> str | None:
        """The socket type of this protocol's byte channels: "stream", "seqpacket" or None."""
        if not self.byte_channels:
            return None
        return "stream" if self.byte_channels is True else str(self.byte_channels)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def describe(self) -> str:
        out = [f"protocol {self.name} version {self.version}"]
        if self.doc:
            out.append(f"  {self.doc}")
        if self.methods:
            out.append("methods:")
            out.extend(m.describe() for m in self.methods)
        if self.events:
            out.append("events:")
            out.extend(e.describe() for e in self.events)
        if self.streams:
            out.append("streams:")
            out.extend(s.describe() for s in self.streams)
        structs = _collect_structs(self)
        if structs:
            out.append("types:")
            for st in structs:
                out.append(f"  {st.name}:")
                out.append(st.describe_fields("    "))
        return "\n".join(out)


def _collect_structs(proto: Protocol) -> list[Struct]:
    seen: dict[str, Struct] = {}

    def walk(t: Any) -> None:
        if isinstance(t, Struct):
            if t.name not in seen:
                seen[t.name] = t
                for f in t.fields:
                    walk(f.type)
        for attr in ("item", "inner", "value"):
            sub = getattr(t, attr, None)
            if isinstance(sub, IpcType):
                walk(sub)

    for m in proto.methods:
        for f in m.args:
            walk(f.type)
        walk(m.result)
    for e in proto.events:
        for f in e.fields:
            walk(f.type)
    return list(seen.values())


# msgspec shows a pattern with its backslashes doubled.
NAME_PATTERN_AS_SHOWN = "^[A-Za-z0-9][A-Za-z0-9_." + "\\" * 2 + "-]*$"
_PATTERN_WORDS = {
    "^[0-9a-f]{2}(:[0-9a-f]{2}){5}$": "a MAC address like 52:54:00:12:34:56",
    NAME_PATTERN_AS_SHOWN: "a name of letters, digits, '.', '_' and '-'",
}


def readable_validation_error(text: str) -> str:
    """msgspec's "Expected `int` >= 64 - at `$.mem_mb`" as "mem_mb: expected an integer >= 64"."""
    reason, sep, where = text.partition(" - at `$")
    field_path = where.rstrip("`").lstrip(".") if sep else ""
    m = re.match(r"Expected `str` matching regex '(.*)'$", reason)
    if m:
        reason = "expected " + _PATTERN_WORDS.get(m.group(1), f"text matching {m.group(1)}")
    else:
        reason = reason.replace("Expected `int`", "expected an integer").replace("Expected `str`", "expected text")
        reason = reason.replace("Expected `", "expected `")
    return f"{field_path}: {reason}" if field_path else reason


def to_plain(value: Any) -> Any:
    """A decoded value (msgspec Structs, addresses) as plain builtins, for handlers and JSON."""
    return msgspec.to_builtins(value, enc_hook=enc_hook, builtin_types=(bytes, bytearray, memoryview))
