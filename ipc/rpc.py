"""Request/response over ZeroMQ: a ROUTER server and DEALER clients.

Wire format (two frames after ZeroMQ's routing id):

    call:   [header, body]   header = msgpack [1, req_id, protocol, version, method]
    reply:  [header, body]   header = msgpack [2, req_id] (ok)  or  [3, req_id] (error)

The body is the MessagePack map of the method's arguments, the result, or an
error map ``{code, message, details}``. Every call names its protocol and the
version the caller was built for, so a peer that was replaced by an
incompatible incarnation is refused on the first call after a reconnect, with
both versions named (the handshake travels with each call; ``handshake()``
asks for it explicitly).
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from . import errors, transport
from .decl import Method, Protocol, Version, decode_raw, encode

log = logging.getLogger("qnet.ipc")

KIND_CALL, KIND_OK, KIND_ERR = 1, 2, 3

# The largest request body a server accepts; larger ones get a typed
# "too_large" reply. ZeroMQ's own MAXMSGSIZE sits above it as a hard stop
# for absurd sizes (the connection is dropped, memory stays bounded).
DEFAULT_MAX_MESSAGE = 4 << 20
HARD_MAX_MESSAGE = 64 << 20
# Outstanding messages per peer before ZeroMQ pushes back (or drops on a ROUTER).
DEFAULT_HWM = 1000


@dataclass
class Limits:
    max_message: int = DEFAULT_MAX_MESSAGE
    hwm: int = DEFAULT_HWM
    batch: int = 256  # requests handled per process() call before yielding to the loop


_context: zmq.Context | None = None
_context_pid = 0


def context() -> zmq.Context:
    """One ZeroMQ context per process (re-created after a fork)."""
    global _context, _context_pid
    if _context is None or _context_pid != os.getpid():
        _context = zmq.Context()
        _context_pid = os.getpid()
    return _context


def configure_socket(sock: zmq.Socket, hwm: int = DEFAULT_HWM) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.RECONNECT_IVL, 20)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    sock.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_MESSAGE)


class _Deferred:
    __slots__ = ()


DEFERRED = _Deferred()


@dataclass(frozen=True)
class CallToken:
    """Identifies a call whose reply is sent later (``RpcServer.defer``)."""

    peer: bytes
    req_id: int
    method: str


class RpcServer:
    """Serves one or more declared protocols on one ROUTER socket.

    ``implementations`` maps a Protocol to an object whose methods carry the
    declared names and take the declared arguments as keywords. A handler
    returns the result, raises an ``IpcError`` (a declared application error
    as ``RemoteError(code=...)``), or calls ``defer()`` and returns its
    result to answer later with ``reply()``.
    """

    def __init__(self, endpoints: list[str] | str, implementations: dict[Protocol, Any],
                 *, limits: Limits | None = None, curve=None):
        self.limits = limits or Limits()
        self.socket = context().socket(zmq.ROUTER)
        configure_socket(self.socket, self.limits.hwm)
        # A reply to a peer that went away must not block or raise.
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if curve is not None:
            curve.apply_server(self.socket)
        self._protocols: dict[str, tuple[Protocol, Any]] = {}
        for proto, impl in implementations.items():
            self.add(proto, impl)
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        for ep in self.endpoints:
            if curve is not None:
                self.socket.bind(ep)
            else:
                transport.bind(self.socket, ep)
        self._current: CallToken | None = None
        self._deferred = False
        self.unavailable_reason: str | None = None
        self.always_available: set[str] = set()
        # (protocol, method) pairs whose bodies may reach HARD_MAX_MESSAGE (a hand-over snapshot).
        self.large_bodies: set[tuple[str, str]] = set()
        self.counters = {"calls": 0, "errors": 0, "bad_messages": 0, "too_large": 0, "internal_errors": 0}

    def add(self, proto: Protocol, impl: Any) -> None:
        self._protocols[proto.name] = (proto, impl)

    def set_unavailable(self, reason: str | None) -> None:
        """While set, calls get an ``unavailable`` error (a frozen incarnation)."""
        self.unavailable_reason = reason

    def close(self) -> None:
        self.socket.close(linger=0)

    # -- the loop's entry point -------------------------------------------------
    def process(self) -> int:
        """Handle every queued request (up to the batch limit) without blocking."""
        handled = 0
        sock = self.socket
        while handled < self.limits.batch:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            handled += 1
            self._handle(parts)
        return handled

    def _handle(self, parts: list[bytes]) -> None:
        peer = parts[0]
        if len(parts) != 3:
            self._bad(peer, 0, errors.BadMessage(
                f"expected 2 message parts (header, body), got {len(parts) - 1}"))
            return
        header, body = parts[1], parts[2]
        try:
            h = decode_raw(header)
        except errors.BadMessage as exc:
            self._bad(peer, 0, errors.BadMessage(f"header: {exc}"))
            return
        if (not isinstance(h, list) or len(h) != 5 or h[0] != KIND_CALL
                or not isinstance(h[1], int) or not all(isinstance(x, str) for x in h[2:])):
            req_id = h[1] if isinstance(h, list) and len(h) > 1 and isinstance(h[1], int) else 0
            self._bad(peer, req_id, errors.BadMessage(
                "header must be [1, req_id, protocol, version, method]"))
            return
        _, req_id, proto_name, version, method_name = h
        if not (0 <= req_id < 1 << 64):
            self._bad(peer, 0, errors.BadMessage("req_id out of range"))
            return
        limit = HARD_MAX_MESSAGE if (proto_name, method_name) in self.large_bodies \
            else self.limits.max_message
        if len(body) > limit:
            self.counters["too_large"] += 1
            self._error(peer, req_id, errors.MessageTooLarge(
                f"request body is {len(body)} bytes; the limit is {limit}"))
            return
        entry = self._protocols.get(proto_name)
        if entry is None:
            self._error(peer, req_id, errors.UnknownProtocol(
                f"protocol {proto_name!r} is not served here (serving: {', '.join(sorted(self._protocols))})"))
            return
        proto, impl = entry
        try:
            wanted = Version.parse(version)
        except ValueError as exc:
            self._bad(peer, req_id, errors.BadMessage(str(exc)))
            return
        if not proto.version.serves(wanted):
            self._error(peer, req_id, errors.VersionMismatch(
                f"{proto.name}: client speaks version {wanted}, server speaks version {proto.version}",
                details={"client": str(wanted), "server": str(proto.version)}))
            return
        if method_name == "":
            # An explicit handshake: the version check above is all it asks.
            self._reply(peer, req_id, KIND_OK, encode({"protocol": proto.name, "version": str(proto.version)}))
            return
        method = proto.method_by_name.get(method_name)
        if method is None:
            self._error(peer, req_id, errors.UnknownMethod(f"{proto.name} has no method {method_name!r}"))
            return
        if self.unavailable_reason is not None and proto.name not in self.always_available:
            self._error(peer, req_id, errors.Unavailable(self.unavailable_reason))
            return
        try:
            args = method.decode_args(body)
        except errors.IpcError as exc:
            self._error(peer, req_id, exc)
            return
        handler = getattr(impl, method_name, None)
        if handler is None:
            self._error(peer, req_id, errors.Internal(f"{proto.name}.{method_name} is declared but not implemented"))
            return
        self.counters["calls"] += 1
        self._current = CallToken(peer, req_id, method_name)
        self._deferred = False
        try:
            kwargs = {name: getattr(args, name) for name in args.__struct_fields__}
            result = handler(**kwargs)
        except errors.RemoteError as exc:
            if exc.code not in method.errors:
                log.warning("%s.%s raised undeclared error %s: %s", proto.name, method_name, exc.code, exc)
            self._error(peer, req_id, exc)
            return
        except errors.IpcError as exc:
            self._error(peer, req_id, exc)
            return
        except Exception as exc:  # a handler bug must not take the component down
            log.exception("%s.%s failed", proto.name, method_name)
            self.counters["internal_errors"] += 1
            self._error(peer, req_id, errors.Internal(f"{proto.name}.{method_name}: {type(exc).__name__}: {exc}"))
            return
        finally:
            token, self._current = self._current, None
        if self._deferred or result is DEFERRED:
            return
        self._send_result(token, result)

    # -- deferred replies -------------------------------------------------------
    def defer(self) -> CallToken:
        """Called inside a handler: the reply will be sent later via reply()/reply_error()."""
        if self._current is None:
            raise RuntimeError("defer() outside a handler")
        self._deferred = True
        return self._current

    def reply(self, token: CallToken, result: Any) -> None:
        self._send_result(token, result)

    def reply_error(self, token: CallToken, error: errors.IpcError) -> None:
        self._error(token.peer, token.req_id, error)

    # -- sending ----------------------------------------------------------------
    def _send_result(self, token: CallToken, result: Any) -> None:
        try:
            body = encode(result)
        except (TypeError, NotImplementedError, OverflowError) as exc:
            self.counters["internal_errors"] += 1
            self._error(token.peer, token.req_id, errors.Internal(f"{token.method}: unencodable result: {exc}"))
            return
        self._reply(token.peer, token.req_id, KIND_OK, body)

    def _bad(self, peer: bytes, req_id: int, exc: errors.IpcError) -> None:
        self.counters["bad_messages"] += 1
        self._error(peer, req_id, exc)

    def _error(self, peer: bytes, req_id: int, exc: errors.IpcError) -> None:
        self.counters["errors"] += 1
        self._reply(peer, req_id, KIND_ERR, encode(exc.to_wire()))

    def _reply(self, peer: bytes, req_id: int, kind: int, body: bytes) -> None:
        try:
            self.socket.send_multipart([peer, encode([kind, req_id]), body], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone or not reading: its reply is dropped, never blocks us


class RpcClient:
    """A typed client of one protocol at one endpoint.

    Calls block up to ``timeout`` seconds. Arguments are validated before they
    are sent and results after they arrive. A call to a method the declaration
    marks idempotent is retried on ``unavailable`` and on timeouts.
    """

    _ids = itertools.count(1)

    def __init__(self, endpoint: str, protocol: Protocol, *, timeout: float = 5.0,
                 retries: int = 3, curve=None, identity: bytes | None = None):
        self.endpoint = endpoint
        self.protocol = protocol
        self.timeout = timeout
        self.retries = retries
        self._curve = curve
        self._identity = identity
        self._poller = zmq.Poller()
        self.socket: zmq.Socket | None = None
        self._connect()
        self.counters = {"stale_replies": 0, "retries": 0}

    def _connect(self) -> None:
        sock = context().socket(zmq.DEALER)
        configure_socket(sock)
        if self._identity:
            sock.setsockopt(zmq.IDENTITY, self._identity)
        if self._curve is not None:
            self._curve.apply_client(sock)
        if self._curve is not None:
            sock.connect(self.endpoint)
        else:
            transport.connect(sock, self.endpoint)
        self.socket = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)

    def _reset(self) -> None:
        # After a timeout the socket may hold a queued request for a dead
        # peer; a fresh socket keeps it from being delivered twice later.
        if self.socket is not None:
            self.socket.close(linger=0)
        self._connect()

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def handshake(self, timeout: float | None = None) -> dict:
        """Ask the server whether it speaks a compatible version of our protocol."""
        return self._roundtrip("", encode({}), None, timeout or self.timeout)

    def call(self, method_name: str, timeout: float | None = None, /, **kwargs: Any) -> Any:
        """Call a method with keyword arguments; ``timeout`` (seconds) is positional only,
        so that a method may have an argument named ``timeout`` of its own (netstack.ping)."""
        method = self.protocol.method_by_name.get(method_name)
        if method is None:
            raise errors.UnknownMethod(f"{self.protocol.name} has no method {method_name!r}")
        try:
            body = encode(kwargs)
        except (TypeError, NotImplementedError, OverflowError) as exc:
            raise errors.InvalidArgument(f"{method_name}: {exc}") from None
        method.decode_args(body)  # validate before sending: same decoder as the server
        timeout = self.timeout if timeout is None else timeout
        attempts = 1 + (self.retries if method.idempotent else 0)
        deadline = time.monotonic() + timeout * attempts
        for attempt in range(attempts):
            try:
                return self._roundtrip(method_name, body, method, timeout)
            except (errors.Unavailable, errors.Timeout):
                if attempt + 1 >= attempts or time.monotonic() >= deadline:
                    raise
                self.counters["retries"] += 1
                time.sleep(min(0.05 * (2 ** attempt), 0.5))
        raise AssertionError("unreachable")

    def _roundtrip(self, method_name: str, body: bytes, method: Method | None, timeout: float) -> Any:
        req_id = next(self._ids)
        header = encode([KIND_CALL, req_id, self.protocol.name, str(self.protocol.version), method_name])
        assert self.socket is not None, "client is closed"
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.socket.send_multipart([header, body], zmq.NOBLOCK)
                break
            except zmq.Again:
                # No pipe yet (a tcp:// connection still in its handshake) or a full queue.
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.socket.poll(remaining * 1000, zmq.POLLOUT):
                    raise errors.Unavailable(f"{self.endpoint}: cannot send (no connection or queue full)") from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poller.poll(remaining * 1000):
                self._reset()
                raise errors.Timeout(
                    f"{self.protocol.name}.{method_name or 'handshake'}: no answer from {self.endpoint} in {timeout:g} s")
            parts = self.socket.recv_multipart()
            if len(parts) != 2:
                self.counters["stale_replies"] += 1
                continue
            try:
                h = decode_raw(parts[0])
            except errors.BadMessage:
                self.counters["stale_replies"] += 1
                continue
            if not isinstance(h, list) or len(h) != 2 or h[1] != req_id:
                if isinstance(h, list) and len(h) == 2 and h[1] == 0 and h[0] == KIND_ERR:
                    raise _decode_error(parts[1])  # the server could not read our header
                self.counters["stale_replies"] += 1
                continue
            if h[0] == KIND_ERR:
                raise _decode_error(parts[1])
            if method is None:
                return decode_raw(parts[1])
            return method.decode_result(parts[1])


class AsyncRpcClient(RpcClient):
    """Calls that do not block the caller's loop: ``start`` sends, ``replies`` collects.

    Register ``socket`` in the loop; when it is readable, ``replies()`` returns
    ``(req_id, result_or_IpcError)`` pairs for the calls that were answered. A
    call nobody answers is the caller's to time out (keep its own deadline).
    """

    def __init__(self, endpoint: str, protocol: Protocol, **kw: Any):
        super().__init__(endpoint, protocol, **kw)
        self._pending: dict[int, Method] = {}
        self.max_pending = 256

    def start(self, method_name: str, /, **kwargs: Any) -> int:
        method = self.protocol.method_by_name.get(method_name)
        if method is None:
            raise errors.UnknownMethod(f"{self.protocol.name} has no method {method_name!r}")
        body = encode(kwargs)
        method.decode_args(body)
        if len(self._pending) >= self.max_pending:
            raise errors.Unavailable(f"{self.endpoint}: {self.max_pending} calls already outstanding")
        req_id = next(self._ids)
        header = encode([KIND_CALL, req_id, self.protocol.name, str(self.protocol.version), method_name])
        try:
            self.socket.send_multipart([header, body], zmq.NOBLOCK)
        except zmq.Again:
            raise errors.Unavailable(f"{self.endpoint}: cannot send (no connection or queue full)") from None
        self._pending[req_id] = method
        return req_id

    def forget(self, req_id: int) -> None:
        """The caller gave up on a call; a late reply is then counted as stale."""
        self._pending.pop(req_id, None)

    def replies(self) -> list[tuple[int, Any]]:
        out: list[tuple[int, Any]] = []
        sock = self.socket
        while sock.get(zmq.EVENTS) & zmq.POLLIN:
            parts = sock.recv_multipart(zmq.NOBLOCK)
            try:
                h = decode_raw(parts[0]) if len(parts) == 2 else None
            except errors.BadMessage:
                h = None
            method = self._pending.pop(h[1], None) if isinstance(h, list) and len(h) == 2 else None
            if method is None:
                self.counters["stale_replies"] += 1
                continue
            if h[0] == KIND_ERR:
                out.append((h[1], _decode_error(parts[1])))
                continue
            try:
                out.append((h[1], method.decode_result(parts[1])))
            except errors.IpcError as exc:
                out.append((h[1], exc))
        return out


def _decode_error(body: bytes) -> errors.IpcError:
    try:
        return errors.from_wire(decode_raw(body))
    except errors.BadMessage:
        return errors.BadMessage("error reply is not MessagePack")


def call_once(endpoint: str, protocol: Protocol, method: str, timeout: float = 5.0, /, **kwargs: Any) -> Any:
    """A one-shot client for command-line use."""
    with RpcClient(endpoint, protocol, timeout=timeout, retries=0) as client:
        return client.call(method, **kwargs)


Handler = Callable[..., Any]
