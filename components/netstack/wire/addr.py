"""Link-layer addresses. IP addresses are the stdlib ipaddress types everywhere."""

from __future__ import annotations

from typing import Union

from .errors import ParseError


class MacAddr(bytes):
    """An IEEE 802 MAC address: exactly 6 bytes, checked on construction."""

    __slots__ = ()

    def __new__(cls, value: Union[bytes, bytearray, memoryview, "MacAddr"]) -> "MacAddr":
        if type(value) is cls:
            return value  # type: ignore[return-value]
        if isinstance(value, str):
            raise TypeError("MacAddr takes bytes; use MacAddr.parse() for text")
        self = super().__new__(cls, value)
        if len(self) != 6:
            raise ValueError(f"MAC address must be 6 bytes, got {len(self)}")
        return self

    @classmethod
    def parse(cls, text: str) -> "MacAddr":
        """Parse "aa:bb:cc:dd:ee:ff" (also "-" separated); ValueError on anything else."""
        parts = text.strip().replace("-", ":").split(":")
        if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
            raise ValueError(f"not a MAC address: {text!r}")
        try:
            return cls(bytes(int(p, 16) for p in parts))
        except ValueError:
            raise ValueError(f"not a MAC address: {text!r}") from None

    def __str__(self) -> str:
        return self.hex(":")

    def __repr__(self) -> str:
        return f"MacAddr('{self.hex(':')}')"

    @property
    def is_broadcast(self) -> bool:
        return self == b"\xff\xff\xff\xff\xff\xff"

    @property
    def is_multicast(self) -> bool:
        # IEEE 802: the I/G bit (least significant bit of the first octet); broadcast included.
        return bool(self[0] & 1)

    @property
    def is_unicast(self) -> bool:
        return not self[0] & 1

    @property
    def is_local(self) -> bool:
        """Locally administered (U/L bit set), as generated addresses should be."""
        return bool(self[0] & 2)


BROADCAST_MAC = MacAddr(b"\xff\xff\xff\xff\xff\xff")
ZERO_MAC = MacAddr(b"\x00\x00\x00\x00\x00\x00")


def mac_from_wire(buf: bytes | memoryview, offset: int) -> MacAddr:
    """Six bytes at offset as a MacAddr, ParseError if the buffer is short."""
    raw = bytes(buf[offset:offset + 6])
    if len(raw) != 6:
        raise ParseError("mac: truncated address")
    return MacAddr(raw)
