"""The runtime every component process shares.

One event-loop model everywhere: a ``zmq.Poller`` over ZeroMQ sockets and
plain file descriptors (TAP fds, unix sockets), plus a heap of timers, all in
one thread. We chose it over ``zmq.asyncio`` because the data path is a tight
read-batch / process / write-batch cycle where a coroutine switch per message
costs more than it gives, and because the sans-I/O cores already return their
next deadline, which maps directly onto the poll timeout (docs/decisions.md).

The runtime also owns the component's side of supervision: the lifecycle
protocol (activate / freeze / thaw / stop / status), heartbeats and
checkpoints to the launcher, logging (JSON lines in the runtime dir, readable
lines on stderr), SIGTERM, and the parent-death signal that keeps a component
from outliving its launcher.
"""
from __future__ import annotations

import ctypes
import heapq
import itertools
import json
import logging
import os
import re
import signal
import stat
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec
import zmq

from ipc import errors, registry
from ipc.decl import Protocol, encode
from ipc.events import Reporter
from ipc.protocols.lifecycle import LIFECYCLE, SUPERVISOR
from ipc.channel import DEFAULT_DATA_HWM
from ipc.rpc import HARD_MAX_MESSAGE, RpcServer

HEARTBEAT_INTERVAL = 1.0
_POLLIN_OR_ERR = int(zmq.POLLIN) | int(zmq.POLLERR)
_POLLOUT_OR_ERR = int(zmq.POLLOUT) | int(zmq.POLLERR)
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Die with the parent (the launcher): no orphans, ever."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:
        pass


# -- the event loop -------------------------------------------------------------
@dataclass(order=True)
class Timer:
    when: float
    seq: int
    callback: Callable[[], Any] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """zmq.Poller + timers. Callbacks run in the loop's thread, one at a time."""

    def __init__(self) -> None:
        self.poller = zmq.Poller()
        self._readers: dict[Any, Callable[[], Any]] = {}
        self._writers: dict[Any, Callable[[], Any]] = {}
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._running = False
        self.idle_hooks: list[Callable[[], Any]] = []  # run after every wake-up
        self.errors = 0
        # A self-pipe: stop() and signals (set_wakeup_fd) wake a poll at once,
        # so a retiring incarnation exits in milliseconds, not at the next tick.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add_reader(self._wake_r, self._drain_wakeups)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass

    @property
    def wakeup_fd(self) -> int:
        return self._wake_w

    @staticmethod
    def _key(obj: Any) -> Any:
        return obj if isinstance(obj, zmq.Socket) else (obj if isinstance(obj, int) else obj.fileno())

    def add_reader(self, obj: Any, callback: Callable[[], Any]) -> None:
        key = self._key(obj)
        self._readers[key] = callback
        self._reregister(key)

    def remove_reader(self, obj: Any) -> None:
        key = self._key(obj)
        if self._readers.pop(key, None) is not None:
            self._reregister(key)

    def add_writer(self, obj: Any, callback: Callable[[], Any]) -> None:
        """Call ``callback`` when ``obj`` can take data (a paused sender waiting for room)."""
        key = self._key(obj)
        self._writers[key] = callback
        self._reregister(key)

    def remove_writer(self, obj: Any) -> None:
        key = self._key(obj)
        if self._writers.pop(key, None) is not None:
            self._reregister(key)

    def _reregister(self, key: Any) -> None:
        flags = (zmq.POLLIN if key in self._readers else 0) | (zmq.POLLOUT if key in self._writers else 0)
        if flags:
            self.poller.register(key, flags)
        else:
            self.poller.unregister(key)

    def call_at(self, when: float, callback: Callable[[], Any]) -> Timer:
        t = Timer(when, next(self._seq), callback)
        heapq.heappush(self._timers, t)
        return t

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def call_every(self, interval: float, callback: Callable[[], Any]) -> None:
        def tick() -> None:
            self.call_later(interval, tick)
            callback()
        self.call_later(interval, tick)

    def stop(self) -> None:
        self._running = False
        self.wake()

    def _run_guarded(self, cb: Callable[[], Any]) -> None:
        try:
            cb()
        except Exception:
            # A bug in one handler is logged and counted; the component stays up.
            self.errors += 1
            logging.getLogger("qnet.loop").error("callback failed:\n%s", traceback.format_exc())

    def run_once(self, max_wait: float = 1.0) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        wait = max_wait
        if self._timers:
            wait = max(0.0, min(wait, self._timers[0].when - now))
        ready = self.poller.poll(wait * 1000.0)
        for key, ev in ready:
            if ev & _POLLIN_OR_ERR:
                cb = self._readers.get(key)
                if cb is not None:
                    self._run_guarded(cb)
            if ev & _POLLOUT_OR_ERR:
                cb = self._writers.get(key)
                if cb is not None:
                    self._run_guarded(cb)
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            t = heapq.heappop(self._timers)
            if not t.cancelled:
                self._run_guarded(t.callback)
        for hook in self.idle_hooks:
            self._run_guarded(hook)

    def run(self) -> None:
        self._running = True
        while self._running:
            self.run_once()


# -- logging ----------------------------------------------------------------------
# Log lines caused by the network (an address conflict per hostile ARP frame, a malformed
# message per datagram) must not fill the disk: each kind of line passes LOG_BURST times per
# LOG_WINDOW seconds, the rest are counted and the next line of that kind says how many were
# suppressed; and every log file is rotated at LOG_FILE_MAX bytes (one old file, NAME.1, kept).
LOG_BURST = 10
LOG_WINDOW = 10.0
LOG_KINDS_MAX = 512
LOG_FILE_MAX = 4 << 20
_VARYING = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2})+|\d+")


class LogRateLimit(logging.Filter):
    """One instance shared by every handler of the process: a record is judged once.

    A "kind" is the logger, the level and the message with its numbers and MAC addresses
    blanked, so a flood of conflicts from random MACs is one kind.
    """

    def __init__(self, burst: int = LOG_BURST, window: float = LOG_WINDOW, clock=time.monotonic):
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._kinds: dict[tuple, list] = {}   # kind -> [window start, passed, suppressed]
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        verdict = getattr(record, "_qnet_pass", None)
        if verdict is not None:
            return verdict
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        passed, suppressed = self.admit((record.name, record.levelno, text))
        if passed and suppressed:
            record.msg, record.args = f"{text} ({suppressed} similar suppressed)", None
        record._qnet_pass = passed
        return passed

    def admit(self, kind: tuple) -> tuple[bool, int]:
        """Whether a line of this kind may pass now, and how many were suppressed before it."""
        kind = kind[:-1] + (_VARYING.sub("#", str(kind[-1])[:200]),)
        now = self.clock()
        st = self._kinds.get(kind)
        if st is None:
            if len(self._kinds) >= LOG_KINDS_MAX:
                self._kinds.pop(next(iter(self._kinds)))
            st = self._kinds[kind] = [now, 0, 0]
        if now - st[0] >= self.window:
            st[0], st[1] = now, 0
        if st[1] >= self.burst:
            st[2] += 1
            self.suppressed_total += 1
            return False, 0
        st[1] += 1
        suppressed, st[2] = st[2], 0
        return True, suppressed


def _rotate(path: str) -> None:
    try:
        os.replace(path, path + ".1")
    except FileNotFoundError:
        pass


class _JsonLines(logging.Handler):
    def __init__(self, path: str, component: str, max_bytes: int = LOG_FILE_MAX):
        super().__init__()
        self.path, self.max_bytes = path, max_bytes
        self._f = open(path, "a", buffering=1, encoding="utf-8")
        self.component = component

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"ts": record.created, "level": record.levelname.lower(), "component": self.component,
                     "logger": record.name, "msg": record.getMessage()}
            self._f.write(json.dumps(entry) + "\n")
            if self._f.tell() > self.max_bytes:
                self._f.close()
                _rotate(self.path)
                self._f = open(self.path, "a", buffering=1, encoding="utf-8")
        except Exception:
            pass


class _RotatingStderr(logging.StreamHandler):
    """The component's stderr, which the launcher points at RUN/logs/NAME.log: when that file
    passes the bound it becomes NAME.log.1 and a fresh NAME.log takes over fds 1 and 2."""

    def __init__(self, max_bytes: int = LOG_FILE_MAX):
        super().__init__(sys.stderr)
        self.max_bytes = max_bytes

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        try:
            st = os.fstat(2)
            if st.st_size <= self.max_bytes or not stat.S_ISREG(st.st_mode):
                return
            path = os.readlink("/proc/self/fd/2")
            if not path.startswith("/"):
                return
            _rotate(path)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(fd, 2)
            if os.path.sameopenfile(1, 2) or stat.S_ISREG(os.fstat(1).st_mode):
                os.dup2(fd, 1)
            os.close(fd)
        except OSError:
            pass


def setup_logging(name: str, runtime_dir: str | None, level: int = logging.INFO) -> LogRateLimit:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    limit = LogRateLimit()
    console = _RotatingStderr()
    console.setFormatter(logging.Formatter(f"%(asctime)s {name} %(levelname)s %(message)s", "%H:%M:%S"))
    console.addFilter(limit)
    root.addHandler(console)
    if runtime_dir:
        logdir = os.path.join(runtime_dir, "logs")
        os.makedirs(logdir, mode=0o700, exist_ok=True)
        jl = _JsonLines(os.path.join(logdir, f"{name}.jsonl"), name)
        jl.addFilter(limit)
        root.addHandler(jl)
    return limit


# -- the component contract ------------------------------------------------------------
class Component:
    """Base of every component. Subclasses set PROTOCOLS and override the hooks.

    A component is built idle; ``activate(state)`` starts its I/O (with the
    state its predecessor handed over, or None); ``freeze()`` stops its I/O and
    returns its state; ``thaw()`` resumes after an abandoned hand-over.
    """

    STATE_SCHEMA = 1

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.log = logging.getLogger(f"qnet.{rt.name}")

    def implementations(self) -> dict[Protocol, Any]:
        """The protocols this component serves on its RPC endpoint, with their handlers."""
        return {}

    def activate(self, state: dict | None) -> None:
        pass

    def freeze(self) -> dict:
        return {}

    def thaw(self) -> None:
        pass

    def status(self) -> dict:
        return {}

    def close(self) -> None:
        pass


@dataclass
class Spec:
    """What the launcher tells a component about itself (environment QNET_*)."""

    name: str
    incarnation: int
    runtime_dir: str
    supervisor: str
    endpoints: dict[str, str]      # what this incarnation binds: rpc, data, pub
    peers: dict[str, dict]         # provider component -> its stable endpoints
    args: dict[str, Any]
    handles: dict[str, int]        # handle name -> inherited fd
    # Data channels the launcher holds (ipc.seqpacket): {"provide": {protocol: {user: fd}},
    # "use": {protocol: fd}, "ctl": fd of the socket that brings channels added later}.
    channels: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env=os.environ) -> "Spec":
        try:
            return cls(
                name=env["QNET_NAME"],
                incarnation=int(env.get("QNET_INCARNATION", "1")),
                runtime_dir=env["QNET_RUNTIME_DIR"],
                supervisor=env["QNET_SUPERVISOR"],
                endpoints=json.loads(env.get("QNET_ENDPOINTS", "{}")),
                peers=json.loads(env.get("QNET_PEERS", "{}")),
                args=json.loads(env.get("QNET_ARGS", "{}")),
                handles={k: int(v) for k, v in json.loads(env.get("QNET_HANDLES", "{}")).items()},
                channels=json.loads(env.get("QNET_CHANNELS", "{}")),
            )
        except (KeyError, ValueError) as exc:
            raise SystemExit(f"qnet component: started without a valid launcher environment ({exc}); "
                             f"components are started by 'qnet up'") from None


class _LifecycleHandler:
    def __init__(self, rt: "Runtime"):
        self.rt = rt

    def status(self):
        return self.rt.status()

    def activate(self, snapshot):
        return self.rt.do_activate(snapshot)

    def freeze(self):
        return self.rt.do_freeze()

    def thaw(self):
        return self.rt.do_thaw()

    def stop(self):
        self.rt.loop.call_later(0.01, self.rt.loop.stop)
        return True


class Runtime:
    def __init__(self, spec: Spec, factory: Callable[["Runtime"], Component]):
        self.spec = spec
        self.name = spec.name
        self.incarnation = spec.incarnation
        self.args = spec.args
        self.handles = spec.handles
        self.loop = Loop()
        self.state = "starting"
        self.log = logging.getLogger(f"qnet.{spec.name}")
        self._problems = LogRateLimit()
        self._last_checkpoint = 0.0
        self._pending_checkpoint: dict | None = None
        self._checkpoint_timer: Timer | None = None
        self._providers: dict[str, Any] = {}    # protocol name -> ipc.channel.DataProvider
        self.component = factory(self)
        impls: dict[Protocol, Any] = {LIFECYCLE: _LifecycleHandler(self)}
        impls.update(self.component.implementations())
        self.rpc = RpcServer(spec.endpoints["rpc"], impls)
        self.rpc.always_available = {LIFECYCLE.name}
        # A hand-over snapshot holds whole TCP buffers: it may be larger than a control call.
        self.rpc.large_bodies = {(LIFECYCLE.name, "activate")}
        self.rpc.set_unavailable(f"{self.name} is starting")
        self.loop.add_reader(self.rpc.socket, self.rpc.process)
        self.reporter = Reporter(SUPERVISOR, spec.supervisor)
        self.loop.call_every(HEARTBEAT_INTERVAL, self.heartbeat)
        self._channel_ctl = None
        if spec.channels.get("ctl") is not None:
            import socket as _socket
            self._channel_ctl = _socket.socket(fileno=int(spec.channels["ctl"]))
            self._channel_ctl.setblocking(False)
            self.loop.add_reader(self._channel_ctl.fileno(), self._on_channel_ctl)
        self.channel_counters = {"ctl_added": 0, "ctl_removed": 0, "ctl_bad": 0, "ctl_release_failed": 0}

    # -- data channels (ipc.seqpacket, launcher-held socketpairs) -------------------
    def data_provider(self, protocol: Protocol, endpoint_kind: str, *, zmq_users: bool = True):
        """The provider's channels for ``protocol``: its users' socketpairs and its ZeroMQ endpoint."""
        from ipc.channel import DataProvider
        provided = self.spec.channels.get("provide", {})
        fds = provided.get(protocol.name)
        chan = DataProvider(protocol, self.spec.endpoints[endpoint_kind],
                            {k: int(v) for k, v in fds.items()} if fds is not None else None,
                            zmq_users=zmq_users if protocol.name in provided else True, key=self.data_key)
        self._providers[protocol.name] = chan
        return chan

    def data_user(self, protocol: Protocol, endpoint: str, identity: bytes):
        """This component's channel to its provider of ``protocol``: the launcher's socketpair, else ZeroMQ."""
        from ipc.channel import open_user
        fd = self.spec.channels.get("use", {}).get(protocol.name)
        return open_user(protocol, endpoint, identity, int(fd) if fd is not None else None, key=self.data_key)

    def byte_channels(self, protocol: Protocol, sink: Any) -> dict[str, int]:
        """Byte channels of ``protocol`` (launcher-held AF_UNIX stream socketpairs, one per
        connection): the ones inherited at spawn as {id: fd}; channels added later reach
        ``sink.add_peer(id: bytes, fd)``."""
        self._providers[protocol.name] = sink
        return {str(k): int(v) for k, v in self.spec.channels.get("streams", {}).items()}

    def release_channel(self, protocol: Protocol, channel: str) -> bool:
        """Tell the launcher a byte channel is done: it closes its copy of our end."""
        if self._channel_ctl is None:
            return False
        from ipc.decl import encode
        try:
            self._channel_ctl.send(encode({"op": "release", "protocol": protocol.name, "peer": channel}))
            return True
        except OSError:
            self.channel_counters["ctl_release_failed"] += 1
            return False

    @property
    def data_key(self) -> bytes | None:
        """The graph's data key: users of a ZeroMQ data endpoint prove their names with it."""
        raw = os.environ.get("QNET_DATA_KEY")
        try:
            return bytes.fromhex(raw) if raw else None
        except ValueError:
            return None

    def _on_channel_ctl(self) -> None:
        from ipc.seqpacket import recv_channel
        for _ in range(64):
            try:
                got = recv_channel(self._channel_ctl)
            except errors.IpcError as exc:
                self.channel_counters["ctl_bad"] += 1
                self.log.warning("bad channel message from the launcher: %s", exc)
                continue
            except (EOFError, OSError):
                self.loop.remove_reader(self._channel_ctl.fileno())
                return
            if got is None:
                return
            m, fd = got
            chan = self._providers.get(m["protocol"])
            if chan is None:
                self.channel_counters["ctl_bad"] += 1
                if fd is not None:
                    os.close(fd)
                continue
            if m["op"] == "add":
                chan.add_peer(m["peer"].encode(), fd)
                self.channel_counters["ctl_added"] += 1
            else:
                chan.remove_peer(m["peer"].encode())
                self.channel_counters["ctl_removed"] += 1

    # -- lifecycle ------------------------------------------------------------
    def do_activate(self, snapshot) -> bool:
        if self.state == "running":
            return True
        state = None
        if snapshot is not None:
            if snapshot.component != self.name.split(".")[0] and snapshot.component != self.name:
                raise errors.RemoteError(f"snapshot is for {snapshot.component}, not {self.name}", code="bad_snapshot")
            if snapshot.schema != self.component.STATE_SCHEMA:
                raise errors.RemoteError(
                    f"snapshot schema {snapshot.schema} is not {self.component.STATE_SCHEMA}", code="bad_snapshot")
            try:
                state = msgspec.msgpack.decode(snapshot.data)
            except msgspec.DecodeError as exc:
                raise errors.RemoteError(f"snapshot data is not MessagePack: {exc}", code="bad_snapshot") from None
        self.component.activate(state)
        self.state = "running"
        self.rpc.set_unavailable(None)
        self.log.info("running (incarnation %d%s)", self.incarnation, ", with handed-over state" if state else "")
        self.heartbeat()
        return True

    def snapshot_of(self, state: dict) -> dict:
        return {"component": self.name, "schema": self.component.STATE_SCHEMA, "data": encode(state)}

    def do_freeze(self) -> dict:
        state = self.component.freeze()
        self.state = "frozen"
        self.rpc.set_unavailable(f"{self.name} is handing over to a successor")
        self.log.info("frozen for hand-over")
        return self.snapshot_of(state)

    def do_thaw(self) -> bool:
        if self.state == "frozen":
            self.component.thaw()
            self.state = "running"
            self.rpc.set_unavailable(None)
        return True

    def checkpoint(self, state: dict, min_interval: float = 0.2) -> None:
        """Report state worth keeping across a crash.

        Rate-limited: a state that arrives within ``min_interval`` of the last
        report is kept and sent when the interval ends, so the launcher never
        holds a stale checkpoint after a burst of changes.
        """
        now = time.monotonic()
        self._pending_checkpoint = state
        wait = self._last_checkpoint + min_interval - now
        if wait > 0:
            if self._checkpoint_timer is None:
                self._checkpoint_timer = self.loop.call_later(wait, self._send_checkpoint)
            return
        self._send_checkpoint()

    def _send_checkpoint(self) -> None:
        self._checkpoint_timer = None
        state, self._pending_checkpoint = self._pending_checkpoint, None
        if state is None:
            return
        self._last_checkpoint = time.monotonic()
        self.reporter.emit("checkpoint", name=self.name, incarnation=self.incarnation,
                           snapshot=self.snapshot_of(state))

    def problem(self, message: str) -> None:
        # A problem is often caused by the network (one per conflicting ARP frame): the log
        # and the launcher hear of each kind LOG_BURST times per LOG_WINDOW, with a count.
        passed, suppressed = self._problems.admit(("problem", message))
        if not passed:
            return
        if suppressed:
            message = f"{message} ({suppressed} similar suppressed)"
        self.log.warning("%s", message)
        self.reporter.emit("problem", name=self.name, incarnation=self.incarnation, message=message[:1024])

    def status(self) -> dict:
        try:
            own = self.component.status()
        except Exception as exc:
            own = {"status_error": str(exc)}
        lim = self.rpc.limits
        return {"state": self.state, "incarnation": self.incarnation, "pid": os.getpid(),
                "ipc": dict(self.rpc.counters),
                "ipc_limits": {"max_message": lim.max_message, "hard_max_message": HARD_MAX_MESSAGE,
                               "queue_depth": lim.hwm, "data_queue_depth": DEFAULT_DATA_HWM},
                "loop_errors": self.loop.errors, **own}

    def heartbeat(self) -> None:
        self.reporter.emit("heartbeat", name=self.name, incarnation=self.incarnation, pid=os.getpid(),
                           state=self.state, status=self.status())

    # -- run --------------------------------------------------------------------
    def run(self) -> None:
        self.heartbeat()
        try:
            self.loop.run()
        finally:
            self.log.info("stopping")
            try:
                self.component.close()
            finally:
                self.rpc.close()
                self.reporter.close()


def run_component(factory: Callable[[Runtime], Component]) -> None:
    """Entry point of every component process (``python -m components.X``)."""
    set_parent_death_signal()
    spec = Spec.from_env()
    setup_logging(spec.name, spec.runtime_dir)
    for mod in spec.args.get("_declarations", []):
        registry.load_module(mod)
    rt = Runtime(spec, factory)
    signal.set_wakeup_fd(rt.loop.wakeup_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda *_: rt.loop.stop())
    signal.signal(signal.SIGINT, lambda *_: rt.loop.stop())
    profile_dir = os.environ.get("QNET_PROFILE_DIR")
    try:
        if profile_dir:
            # Optimise where the profile says: QNET_PROFILE_DIR=DIR writes DIR/NAME.N.prof at exit.
            import cProfile
            prof = cProfile.Profile()
            try:
                prof.runcall(rt.run)
            finally:
                prof.dump_stats(os.path.join(profile_dir, f"{spec.name}.{spec.incarnation}.prof"))
        else:
            rt.run()
    except Exception:
        logging.getLogger("qnet").critical("component failed:\n%s", traceback.format_exc())
        sys.exit(70)
