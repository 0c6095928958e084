"""Supervision of component processes: spawn, watch, restart by policy, hand over.

Each component instance has one live incarnation at a time (two, briefly,
during a make-before-break restart). Every incarnation binds its endpoints at
``RUN/NAME.N.rpc`` (and ``.data``, ``.pub``); the stable names ``RUN/NAME.rpc``
etc. are symlinks the launcher points at the incarnation in service. Peers
connect to the stable names, so when the old incarnation closes, ZeroMQ
reconnects them to the new one without operator action.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from ipc import errors
from ipc.decl import Protocol, to_plain
from ipc.protocols.lifecycle import LIFECYCLE
from ipc.rpc import AsyncRpcClient, RpcClient

from .channels import DataChannels
from .manifest import ComponentSpec, Graph, HandleSpec

log = logging.getLogger("qnet.launcher")

ENDPOINT_KINDS = ("rpc", "data", "pub", "dgram")
ACTIVATE_TIMEOUT = 20.0      # a cold Python start plus the component's own set-up
FREEZE_TIMEOUT = 5.0
STOP_GRACE = 3.0
# A component heartbeats every second (components.runtime.HEARTBEAT_INTERVAL). Silent for
# UNRESPONSIVE_AFTER: one heartbeat missed, shown as "unresponsive" at once. Silent for the
# component's heartbeat_timeout (manifest; DEFAULT_HEARTBEAT_TIMEOUT, measured in docs/status.md): killed
# and respawned.
UNRESPONSIVE_AFTER = 1.5


def die_with_parent() -> None:
    """preexec_fn of every child (components, QEMU): PR_SET_PDEATHSIG, so no child outlives the launcher."""
    import ctypes
    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except OSError:
        pass


def _child_setup(cpus: tuple[int, ...] | None):
    """preexec_fn of a component: die with the launcher, and run on the manifest's CPUs (set
    before exec, so every thread the component starts, libzmq's too, inherits it)."""
    if not cpus:
        return die_with_parent

    def setup() -> None:
        die_with_parent()
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass  # a CPU gone offline since the manifest was read: run anywhere rather than not at all
    return setup


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


@dataclass
class Incarnation:
    number: int
    proc: subprocess.Popen
    endpoints: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    retiring: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Instance:
    spec: ComponentSpec
    state: str = "stopped"
    incarnation: Incarnation | None = None
    counter: int = 0                      # incarnations started so far
    restarts: int = 0
    crash_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    last_exit: str = ""
    since: float = field(default_factory=time.time)
    backoff: float = 0.0
    next_start: float | None = None
    snapshot: dict | None = None          # last handed-over or checkpointed state
    last_heartbeat: float = 0.0
    details: dict = field(default_factory=dict)
    problems: collections.deque = field(default_factory=lambda: collections.deque(maxlen=8))
    failure: str = ""                     # why it is "failed"; cleared when it runs again
    heartbeat_gap_max: float = 0.0        # the longest silence seen while running (status, tuning)
    last_respawn_delay: float | None = None
    fds: dict[str, int] = field(default_factory=dict)
    handle_objs: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()


class Supervisor:
    def __init__(self, graph: Graph, runtime_dir: str, supervisor_endpoint: str):
        self.graph = graph
        self.run = runtime_dir
        self.supervisor_endpoint = supervisor_endpoint
        self.instances: dict[str, Instance] = {n: Instance(graph.components[n]) for n in graph.order}
        self.logdir = os.path.join(runtime_dir, "logs")
        os.makedirs(self.logdir, mode=0o700, exist_ok=True)
        self.retiring: list[Incarnation] = []
        self.on_activated = lambda inst: None
        self._tcp_ports: dict[tuple[str, str], int] = {}
        self.channels = DataChannels(graph, runtime_dir)   # launcher-held socketpairs of the data plane

    # -- endpoints -----------------------------------------------------------------
    @property
    def tcp(self) -> bool:
        return self.graph.transport.get("kind") == "tcp"

    def stable_endpoint(self, name: str, kind: str) -> str:
        if self.tcp:
            key = (name, kind)
            if key not in self._tcp_ports:
                self._tcp_ports[key] = self.graph.transport["base_port"] + len(self._tcp_ports)
            return f"tcp://{self.graph.transport['host']}:{self._tcp_ports[key]}"
        return f"ipc://{os.path.join(self.run, f'{name}.{kind}')}"

    def _incarnation_endpoints(self, name: str, number: int) -> dict[str, str]:
        if self.tcp:
            # A tcp port cannot be bound twice: incarnations share the stable endpoints
            # and a restart is break-before-make (state is still handed over).
            return {k: self.stable_endpoint(name, k) for k in ENDPOINT_KINDS}
        return {k: f"ipc://{os.path.join(self.run, f'{name}.{number}.{k}')}" for k in ENDPOINT_KINDS}

    def curve_env(self) -> dict[str, str]:
        """The graph's CURVE key for tcp transport (generated once per runtime dir, 0600)."""
        if not (self.tcp and self.graph.transport.get("curve")):
            return {}
        keydir = os.path.join(self.run, "keys")
        secret = os.path.join(keydir, "graph.key_secret")
        if not os.path.exists(secret):
            from ipc.curve import CurveKeys
            CurveKeys.generate().save(keydir, "graph")
        return {"QNET_CURVE_SECRET_FILE": secret}

    def _point_stable_names(self, name: str, number: int) -> None:
        """Atomically re-point NAME.KIND at NAME.N.KIND (rename over the old symlink)."""
        if self.tcp:
            return
        for kind in ENDPOINT_KINDS:
            link = os.path.join(self.run, f"{name}.{kind}")
            tmp = link + ".new"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(f"{name}.{number}.{kind}", tmp)
            os.replace(tmp, link)

    def _remove_incarnation_files(self, name: str, number: int) -> None:
        if self.tcp:
            return
        for kind in ENDPOINT_KINDS:
            try:
                os.unlink(os.path.join(self.run, f"{name}.{number}.{kind}"))
            except FileNotFoundError:
                pass

    def peers_for(self, spec: ComponentSpec) -> dict[str, dict]:
        peers = {}
        for proto, _ver in spec.uses:
            if proto in ("qnet.launcher", "qnet.supervisor"):
                peers[proto] = {"component": "launcher", "rpc": f"ipc://{os.path.join(self.run, 'launcher.ctl')}"}
                continue
            prov = self.graph.provider_of(proto)
            if prov is not None:
                peers[proto] = {"component": prov, **{k: self.stable_endpoint(prov, k) for k in ENDPOINT_KINDS}}
        return peers

    # -- handles ---------------------------------------------------------------------
    def open_handles(self, inst: Instance) -> None:
        for h in inst.spec.handles:
            if h.name not in inst.fds:
                fd, obj = open_handle(h, inst.spec)
                inst.fds[h.name] = fd
                if obj is not None:
                    inst.handle_objs.append(obj)

    def close_handles(self, inst: Instance) -> None:
        self.channels.release_user(inst)
        for obj in inst.handle_objs:
            try:
                obj.close()
            except OSError:
                pass
        for name, fd in list(inst.fds.items()):
            if not any(getattr(o, "fileno", lambda: -1)() == fd for o in inst.handle_objs):
                try:
                    os.close(fd)
                except OSError:
                    pass
        inst.handle_objs.clear()
        inst.fds.clear()

    # -- processes ---------------------------------------------------------------------
    def spawn(self, inst: Instance) -> Incarnation:
        self.open_handles(inst)
        inst.counter += 1
        number = inst.counter
        eps = self._incarnation_endpoints(inst.name, number)
        self._remove_incarnation_files(inst.name, number)
        env = dict(os.environ)
        args = dict(inst.spec.args)
        if self.graph.declarations:
            args["_declarations"] = list(self.graph.declarations)
        env.update({
            "QNET_NAME": inst.name,
            "QNET_INCARNATION": str(number),
            "QNET_RUNTIME_DIR": self.run,
            "QNET_SUPERVISOR": self.supervisor_endpoint,
            "QNET_ENDPOINTS": json.dumps(eps),
            "QNET_PEERS": json.dumps(self.peers_for(inst.spec)),
            "QNET_ARGS": json.dumps(args),
            "QNET_HANDLES": json.dumps(inst.fds),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.curve_env())
        chan_env, chan_fds, chan_ctl = self.channels.for_spawn(inst)
        env.update(chan_env)
        if self.graph.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(self.graph.pythonpath + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        logf = open(os.path.join(self.logdir, f"{inst.name}.log"), "ab", buffering=0)
        try:
            proc = subprocess.Popen([sys.executable, "-m", inst.spec.module], env=env, stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT,
                                    pass_fds=tuple(inst.fds.values()) + tuple(chan_fds),
                                    preexec_fn=_child_setup(inst.spec.cpus), close_fds=True)
        finally:
            logf.close()
            self.channels.spawned(inst, number, chan_ctl)
        log.info("started %s incarnation %d (pid %d)", inst.name, number, proc.pid)
        return Incarnation(number, proc, eps)

    def lifecycle_call(self, inc: Incarnation, method: str, timeout: float, **kw) -> "Call":
        return Call(inc.endpoints["rpc"], LIFECYCLE, method, timeout, kw)

    # Every operation that talks to a component is a generator of Call/Sleep steps (see Tasks):
    # on the launcher's loop it never stops the loop; at start-up and from the VM manager it
    # runs blocking (run_blocking).
    def await_up(self, inst: Instance, inc: Incarnation, timeout: float = ACTIVATE_TIMEOUT) -> Steps:
        """Wait until a new incarnation answers on its endpoint (it is then idle, not yet active).

        Asks in short slices so that a child that dies early (an import error,
        a bad argument) is reported at once instead of after the whole timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            code = inc.proc.poll()
            if code is not None:
                raise StartFailed(f"{inst.name} exited ({describe_exit(code)}) before it was ready; "
                                  f"see 'qnet logs {inst.name}'")
            try:
                yield self.lifecycle_call(inc, "status", 0.25)
                return
            except (errors.Timeout, errors.Unavailable):
                if time.monotonic() > deadline:
                    raise StartFailed(f"{inst.name} did not answer within {timeout:g} s") from None
                yield Sleep(0.02)

    def activate(self, inst: Instance, inc: Incarnation, snapshot: dict | None) -> Steps:
        """Hand the state over and wait for the readiness report. Returns whether state was used.

        A state the incarnation cannot restore is reported and discarded (never handed to
        another incarnation): the runtime's own refusal (``bad_snapshot``) leaves the
        incarnation clean, so it is activated without state; an error raised while the
        component restored it may have left it half-made, so RestoreFailed tells the caller
        to replace the incarnation.
        """
        try:
            yield self.lifecycle_call(inc, "activate", ACTIVATE_TIMEOUT, snapshot=snapshot)
            return snapshot is not None
        except (errors.Timeout, errors.Unavailable):
            raise
        except errors.IpcError as exc:
            if snapshot is None:
                raise
            self.discard_snapshot(inst, snapshot, exc)
            if exc.code != "bad_snapshot":
                raise RestoreFailed(str(exc)) from None
        yield self.lifecycle_call(inc, "activate", ACTIVATE_TIMEOUT, snapshot=None)
        return False

    def discard_snapshot(self, inst: Instance, snapshot: dict, why: Exception) -> None:
        if inst.snapshot is snapshot:
            inst.snapshot = None
        msg = f"{inst.name}'s saved state did not restore ({str(why)[:200]}); discarded it, started clean"
        log.warning("%s", msg)
        inst.problems.append(msg)

    def start(self, inst: Instance) -> Steps:
        """Start an instance (first start or crash respawn) with its last known state."""
        inst.set_state("starting")
        inc = self.spawn(inst)
        inst.incarnation = inc
        inst.last_heartbeat = time.monotonic()
        try:
            yield from self.await_up(inst, inc)
            try:
                yield from self.activate(inst, inc, inst.snapshot)
            except RestoreFailed:
                self._kill(inc)
                inc = self.spawn(inst)
                inst.incarnation = inc
                yield from self.await_up(inst, inc)
                yield from self.activate(inst, inc, None)
        except (errors.IpcError, StartFailed) as exc:
            self._kill(inc)
            inst.incarnation = None
            why = str(exc) if isinstance(exc, StartFailed) else f"{inst.name} did not become ready: {exc}"
            # Never left "starting" with no process: a caller that retries sets backoff itself.
            inst.set_state("failed")
            inst.last_exit = why[:128]
            raise StartFailed(why) from None
        self._point_stable_names(inst.name, inc.number)
        inst.set_state("running")
        inst.last_heartbeat = time.monotonic()
        self.on_activated(inst)

    def restart_handover(self, inst: Instance) -> Steps:
        """Make-before-break: successor up, state handed over, then the predecessor stops."""
        old = inst.incarnation
        if old is None or old.proc.poll() is not None:
            t0 = time.monotonic()
            yield from self.start(inst)
            inst.restarts += 1
            return {"old_pid": 0, "new_pid": inst.incarnation.pid, "handed_over": inst.snapshot is not None,
                    "seconds": round(time.monotonic() - t0, 3)}
        t0 = time.monotonic()
        if self.tcp:
            return (yield from self._restart_break_before_make(inst, old, t0))
        new = self.spawn(inst)
        try:
            yield from self.await_up(inst, new)  # the successor is up and idle
        except StartFailed as exc:
            self._kill(new)
            raise StartFailed(f"successor of {inst.name} did not start: {exc}") from None
        inst.set_state("handover")
        snapshot = None
        try:
            snapshot = _plain((yield self.lifecycle_call(old, "freeze", FREEZE_TIMEOUT)))
        except errors.IpcError as exc:
            log.warning("%s: freeze failed (%s); using the last checkpoint", inst.name, exc)
            snapshot = inst.snapshot
        try:
            used = yield from self.activate(inst, new, snapshot)
        except (errors.IpcError, RestoreFailed) as exc:
            self._kill(new)
            try:
                yield self.lifecycle_call(old, "thaw", FREEZE_TIMEOUT)
            except errors.IpcError:
                pass
            inst.set_state("running")
            raise StartFailed(f"successor of {inst.name} failed to take over: {exc}") from None
        if used:
            inst.snapshot = snapshot
        self._point_stable_names(inst.name, new.number)
        inst.incarnation = new
        inst.restarts += 1
        inst.last_exit = "replaced (restart)"
        inst.set_state("running")
        inst.last_heartbeat = time.monotonic()
        self.retire(old)
        self.on_activated(inst)
        return {"old_pid": old.pid, "new_pid": new.pid, "handed_over": used,
                "seconds": round(time.monotonic() - t0, 3)}

    def _restart_break_before_make(self, inst: Instance, old: Incarnation, t0: float) -> Steps:
        """tcp transport: freeze and stop the predecessor, then start the successor with its state."""
        inst.set_state("handover")
        try:
            inst.snapshot = _plain((yield self.lifecycle_call(old, "freeze", FREEZE_TIMEOUT)))
            handed = True
        except errors.IpcError as exc:
            log.warning("%s: freeze failed (%s); using the last checkpoint", inst.name, exc)
            handed = False
        try:
            old.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE
        while old.proc.poll() is None and time.monotonic() < deadline:
            yield Sleep(0.02)
        if old.proc.poll() is None:
            old.proc.kill()
            old.proc.wait()
        inst.incarnation = None
        yield from self.start(inst)
        inst.restarts += 1
        inst.last_exit = "replaced (restart)"
        return {"old_pid": old.pid, "new_pid": inst.incarnation.pid, "handed_over": handed,
                "seconds": round(time.monotonic() - t0, 3)}

    def retire(self, inc: Incarnation) -> None:
        """Ask an incarnation to stop; the reaper kills it if it lingers."""
        inc.retiring = True
        inc.started = time.monotonic()  # reused as the retirement clock
        try:
            inc.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.retiring.append(inc)

    def _kill(self, inc: Incarnation) -> None:
        try:
            inc.proc.kill()
        except ProcessLookupError:
            pass
        try:
            inc.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        self._cleanup_files(inc)

    def reap_retiring(self) -> None:
        now = time.monotonic()
        for inc in list(self.retiring):
            if inc.proc.poll() is not None:
                self.retiring.remove(inc)
                self._cleanup_files(inc)
            elif now - inc.started > STOP_GRACE:
                inc.proc.kill()

    def _cleanup_files(self, inc: Incarnation) -> None:
        for ep in inc.endpoints.values():
            if not ep.startswith("ipc://"):
                continue
            try:
                os.unlink(ep[len("ipc://"):])
            except (FileNotFoundError, ValueError):
                pass

    def stop_all(self, timeout: float = STOP_GRACE) -> None:
        """SIGTERM everything in reverse start order, then SIGKILL what lingers."""
        procs = []
        for name in reversed(self.graph.order):
            inst = self.instances.get(name)
            if inst and inst.incarnation and inst.incarnation.proc.poll() is None:
                procs.append(inst.incarnation.proc)
                inst.set_state("stopping")
        procs += [i.proc for i in self.retiring if i.proc.poll() is None]
        terminate_all(procs, timeout)
        for inst in self.instances.values():
            if inst.incarnation is not None:
                inst.last_exit = describe_exit(inst.incarnation.proc.returncode or 0)
                self._cleanup_files(inst.incarnation)
            inst.incarnation = None
            inst.set_state("stopped")
            self.close_handles(inst)
        self.channels.close_all()


class StartFailed(Exception):
    pass


class RestoreFailed(Exception):
    """An incarnation failed while restoring a state: it may be half-made, so it is replaced."""


# -- operations that talk to components without stopping the launcher's loop ---------------------
@dataclass
class Call:
    """A step of an operation: one call to a component; the operation resumes with its answer."""

    endpoint: str
    protocol: Protocol
    method: str
    timeout: float
    kwargs: dict[str, Any]


@dataclass
class Sleep:
    seconds: float


Steps = Generator[Any, Any, Any]   # yields Call | Sleep, is sent results, returns the operation's result


def run_blocking(steps: Steps) -> Any:
    """Run an operation to its end in the caller's thread (start-up, the VM manager)."""
    value: Any = None
    exc: BaseException | None = None
    while True:
        try:
            step = steps.throw(exc) if exc is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, exc = None, None
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            continue
        try:
            with RpcClient(step.endpoint, step.protocol, timeout=step.timeout, retries=0) as c:
                value = c.call(step.method, step.timeout, **step.kwargs)
        except errors.IpcError as e:
            exc = e


class Tasks:
    """Operations on the launcher's loop: each Call is sent at once and its answer (or its
    timeout) resumes the operation later, so neither a hung component nor a slow one ever
    stops the loop; supervision and the CLI keep answering meanwhile."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.running = 0
        self.counters = {"started": 0, "failed": 0, "timeouts": 0}

    def run(self, steps: Steps, done: Callable[[Any, BaseException | None], None]) -> None:
        self.running += 1
        self.counters["started"] += 1
        self._step(steps, done, None, None)

    def _finish(self, done, value: Any, exc: BaseException | None) -> None:
        self.running -= 1
        if exc is not None:
            self.counters["failed"] += 1
        done(value, exc)

    def _step(self, steps: Steps, done, value: Any, exc: BaseException | None) -> None:
        try:
            step = steps.throw(exc) if exc is not None else steps.send(value)
        except StopIteration as stop:
            self._finish(done, stop.value, None)
            return
        except Exception as e:  # the operation's error is its caller's answer
            self._finish(done, None, e)
            return
        if isinstance(step, Sleep):
            self.loop.call_later(step.seconds, lambda: self._step(steps, done, None, None))
            return
        try:
            client = AsyncRpcClient(step.endpoint, step.protocol, retries=0)
        except Exception as e:
            self.loop.call_later(0, lambda e=e: self._step(steps, done, None, e))
            return
        state: dict[str, Any] = {}

        def finish(val: Any, err: BaseException | None) -> None:
            if state.get("over"):
                return
            state["over"] = True
            timer.cancel()
            self.loop.remove_reader(client.socket)
            client.close()
            self._step(steps, done, val, err)

        def on_readable() -> None:
            for _req, res in client.replies():
                if isinstance(res, errors.IpcError):
                    finish(None, res)
                else:
                    finish(res, None)
                return

        def on_timeout() -> None:
            self.counters["timeouts"] += 1
            finish(None, errors.Timeout(f"{step.protocol.name}.{step.method}: no answer from "
                                        f"{step.endpoint} in {step.timeout:g} s"))

        timer = self.loop.call_later(step.timeout, on_timeout)
        try:
            client.start(step.method, **step.kwargs)
        except errors.IpcError as e:
            timer.cancel()
            client.close()
            self.loop.call_later(0, lambda e=e: self._step(steps, done, None, e))
            return
        self.loop.add_reader(client.socket, on_readable)


def terminate_all(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM every process, then SIGKILL those still alive after ``grace`` seconds."""
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _plain(value: Any) -> Any:
    return to_plain(value)


def open_handle(h: HandleSpec, spec: ComponentSpec) -> tuple[int, Any]:
    """Open an OS handle the launcher will hold for a component's incarnations."""
    o = h.options
    try:
        if h.kind == "file":
            fd = os.open(o["path"], os.O_RDWR | os.O_CREAT, 0o600)
            return fd, None
        if h.kind == "tap":
            from components.ethdriver.backends.tap import open_tap
            fd = open_tap(o["name"], create=o.get("create", True), vnet_hdr=o.get("vnet_hdr", False))
            return fd, None
        if h.kind == "unix-listen":
            from components.ethdriver.backends.qemu_stream import listen_stream
            s = listen_stream(o["path"])
            return s.fileno(), s
        if h.kind == "unix-dgram":
            from components.ethdriver.backends.qemu_dgram import open_dgram
            s = open_dgram(o["path"])
            return s.fileno(), s
    except KeyError as exc:
        raise StartFailed(f"{spec.name}: handle {h.name}: missing option {exc}") from None
    except OSError as exc:
        raise StartFailed(f"{spec.name}: handle {h.name}: {exc.strerror or exc}") from None
    raise StartFailed(f"{spec.name}: handle {h.name}: unknown kind {h.kind}")

