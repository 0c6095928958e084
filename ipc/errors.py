"""The one error type of the IPC layer, and its typed subclasses.

Every error that crosses a component boundary travels as a map
``{code, message, details}``; a client turns it back into the class below
that owns the code. Application errors (the ``errors`` a method declares,
such as ``not_found``) arrive as ``RemoteError`` with that code.
"""
from __future__ import annotations


class IpcError(Exception):
    """Base of every IPC error. ``code`` is stable and machine-readable."""

    code = "ipc_error"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __str__(self) -> str:
        return self.message


class BadMessage(IpcError):
    """Bytes that are not MessagePack, a wrong part count, a malformed header."""
    code = "bad_message"


class MessageTooLarge(IpcError):
    code = "too_large"


class UnknownProtocol(IpcError):
    code = "unknown_protocol"


class UnknownMethod(IpcError):
    code = "unknown_method"


class InvalidArgument(IpcError):
    """A field is missing, unknown, of the wrong type or out of its declared bounds."""
    code = "invalid_argument"


class InvalidResult(IpcError):
    """The server answered with a value that does not match the declaration."""
    code = "invalid_result"


class VersionMismatch(IpcError):
    code = "version_mismatch"


class Timeout(IpcError):
    code = "timeout"


class Unavailable(IpcError):
    """The peer is restarting or stopping; idempotent calls are retried on it."""
    code = "unavailable"


class Internal(IpcError):
    code = "internal"


class RemoteError(IpcError):
    """An application error declared by the method (``not_found``, ``exists`` ...)."""
    code = "remote_error"


_BY_CODE = {cls.code: cls for cls in (
    BadMessage, MessageTooLarge, UnknownProtocol, UnknownMethod, InvalidArgument,
    InvalidResult, VersionMismatch, Timeout, Unavailable, Internal)}

# Codes that belong to the IPC layer itself; a method may not declare them.
TRANSPORT_CODES = frozenset(_BY_CODE)


def from_wire(obj: object) -> IpcError:
    """Rebuild an error from its wire map; a malformed map is itself a BadMessage."""
    if not isinstance(obj, dict):
        return BadMessage("error reply is not a map")
    code = obj.get("code")
    message = obj.get("message")
    details = obj.get("details")
    if not isinstance(code, str) or not isinstance(message, str):
        return BadMessage("error reply lacks code or message")
    if not isinstance(details, dict):
        details = {}
    cls = _BY_CODE.get(code)
    if cls is None:
        return RemoteError(message, code=code, details=details)
    return cls(message, details=details)
