"""The one parse error type of the wire layer."""

from __future__ import annotations


class ParseError(ValueError):
    """Raised by every parser on malformed input; `reason` names the layer and the fault.

    Parsers raise nothing else: struct.error, IndexError and ValueError from malformed
    input are wrapped, so callers can count-and-drop with a single `except ParseError`.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
