"""The launcher process: the component manager of one graph.

It owns the runtime directory, the OS handles (TAP fds, QEMU backend sockets),
the supervision of every component, and the last known state of each. It
serves ``qnet.launcher`` (the CLI's interface) and collects ``qnet.supervisor``
reports. It runs the same event loop as every component.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from datetime import datetime, timezone
from typing import Any, Callable

from components.runtime import Loop
from ipc import errors
from ipc.decl import to_plain
from ipc.events import Collector
from ipc.protocols.launcher import LAUNCHER
from ipc.protocols.lifecycle import SUPERVISOR
from ipc.rpc import DEFERRED, RpcServer

from .manifest import Graph
from .supervisor import (UNRESPONSIVE_AFTER, Instance, StartFailed, Steps, Supervisor, Tasks, describe_exit,
                         run_blocking)

log = logging.getLogger("qnet.launcher")

# An incarnation that ran this long before it crashed is respawned at once: a crash after a
# quiet spell is not part of a burst, and waiting would only lengthen the outage. Crashes of
# incarnations that ran less back off (backoff_initial, doubling up to backoff_max).
STABLE_AFTER = 5.0


class AlreadyRunning(Exception):
    pass


def prepare_runtime_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def clear_stale_files(path: str) -> None:
    """Remove sockets and endpoint links a dead launcher left behind (we hold the lock)."""
    import stat
    for entry in os.scandir(path):
        try:
            st = os.lstat(entry.path)
        except FileNotFoundError:
            continue
        if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
            os.unlink(entry.path)


def lock_runtime_dir(path: str) -> int:
    """Hold RUN/launcher.pid locked for the launcher's lifetime: one graph per runtime dir."""
    fd = os.open(os.path.join(path, "launcher.pid"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(f"a qnet graph is already up in {path} (launcher pid {other}); "
                             f"'qnet down' stops it") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def control_endpoint(runtime_dir: str) -> str:
    return f"ipc://{os.path.join(runtime_dir, 'launcher.ctl')}"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Launcher:
    def __init__(self, graph: Graph, runtime_dir: str, *, progress: Callable[[str], None] | None = None):
        self.graph = graph
        self.run_dir = runtime_dir
        self.progress = progress or (lambda msg: None)
        prepare_runtime_dir(runtime_dir)
        self._lock_fd = lock_runtime_dir(runtime_dir)
        clear_stale_files(runtime_dir)
        self.loop = Loop()
        self.tasks = Tasks(self.loop)
        self.sup_endpoint = f"ipc://{os.path.join(runtime_dir, 'launcher.sup')}"
        if graph.transport.get("kind") == "tcp":
            # Components may sit on other hosts: their reports come over tcp too.
            self.sup_endpoint = f"tcp://{graph.transport['host']}:{graph.transport['base_port'] - 1}"
        self.supervisor = Supervisor(graph, runtime_dir, self.sup_endpoint)
        curve_env = self.supervisor.curve_env()
        if curve_env:
            from ipc import transport
            os.environ.update(curve_env)
            transport.configure(transport._from_env())
        self.supervisor.on_activated = self._on_activated
        from .channels import ChannelBroker
        # Programs outside the graph (tests, benchmarks, tools) get data channels here too.
        # Byte channels (TCP) are asked here on either data transport.
        self.supervisor.channels.loop = self.loop
        self.channel_broker = ChannelBroker(self.supervisor.channels, runtime_dir, self.loop)
        from .ports import PortManager
        self.ports = PortManager(self)
        self.collector = Collector([SUPERVISOR], self.sup_endpoint)
        self.control = RpcServer(control_endpoint(runtime_dir), {LAUNCHER: _Control(self)})
        self.vms = None
        try:
            from .vm import VmManager
            from ipc.protocols.vm import VM
        except ImportError:
            pass
        else:
            self.vms = VmManager(self)
            self.control.add(VM, self.vms)
        self.loop.add_reader(self.control.socket, self.control.process)
        self.loop.add_reader(self.collector.socket, self._drain_reports)
        self.loop.call_every(0.05, self._watch)
        self.shutting_down = False
        self.started_at = time.time()
        self._last_watch = time.monotonic()

    @property
    def instances(self) -> dict[str, Instance]:
        return self.supervisor.instances

    # -- start and stop ------------------------------------------------------------
    def start_all(self) -> None:
        for name in list(self.graph.order):
            inst = self.instances[name]
            self.progress(f"starting {name} ...")
            t0 = time.monotonic()
            try:
                run_blocking(self.supervisor.start(inst))
            except StartFailed as exc:
                inst.set_state("failed")
                inst.last_exit = str(exc)[:128]
                raise
            self.progress(f"  {name} running (pid {inst.incarnation.pid}, {time.monotonic() - t0:.2f} s)")
        try:
            self.ports.start_declared()
        except errors.IpcError as exc:
            raise StartFailed(f"ports: {exc}") from None

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_shutdown())
        signal.signal(signal.SIGINT, lambda *_: self.request_shutdown())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            while not self.shutting_down:
                self.loop.run_once(0.2)
            self.ports.retire_config()  # asked to stop: the next `qnet up` starts from the manifest
        finally:
            self.close()

    def request_shutdown(self) -> None:
        self.shutting_down = True

    def close(self) -> None:
        if self.channel_broker is not None:
            self.channel_broker.close()
        if self.vms is not None:
            self.vms.close()
        self.supervisor.stop_all()
        self.control.close()
        self.collector.close()
        for f in ("launcher.ctl", "launcher.sup"):
            try:
                os.unlink(os.path.join(self.run_dir, f))
            except FileNotFoundError:
                pass
        for inst in self.instances.values():
            for kind in ("rpc", "data", "pub", "dgram"):
                try:
                    os.unlink(os.path.join(self.run_dir, f"{inst.name}.{kind}"))
                except FileNotFoundError:
                    pass
        os.close(self._lock_fd)

    def _on_activated(self, inst: Instance) -> None:
        """A new incarnation is in service: re-assert the configuration it should hold."""
        inst.failure = ""  # "crashed N times" is history once it runs again
        if inst.name == self.ports.netstack_name and self.ports.ports:
            self.run_task(self.ports.reconcile(), "reconciling netstack")
        if inst.name == self.ports.dhcpd_name and self.ports.ports:
            self.run_task(self.ports.reconcile_dhcpd(), "reconciling dhcpd")

    def run_task(self, steps: Steps, what: str) -> None:
        """An operation nobody waits for: its failure is logged."""
        def done(_value, exc):
            if exc is not None:
                log.warning("%s failed: %s", what, exc)
        self.tasks.run(steps, done)

    # -- reports from components -------------------------------------------------------
    def _drain_reports(self) -> None:
        self.collector.receive(self._on_report, limit=256)

    def _on_report(self, _proto: str, event: str, value: Any) -> None:
        inst = self.instances.get(value.name)
        if inst is None or inst.incarnation is None or value.incarnation != inst.incarnation.number:
            return  # a retiring incarnation, or a stranger
        if event == "heartbeat":
            now = time.monotonic()
            if inst.state in ("running", "unresponsive"):
                inst.heartbeat_gap_max = max(inst.heartbeat_gap_max, now - inst.last_heartbeat)
            inst.last_heartbeat = now
            if inst.state == "unresponsive":
                log.warning("%s answers again (heartbeat)", inst.name)
                inst.set_state("running")
            inst.details = to_plain(value.status) if isinstance(value.status, dict) else {}
        elif event == "checkpoint":
            inst.snapshot = to_plain(value.snapshot)
        elif event == "problem":
            inst.problems.append(value.message)

    # -- supervision ----------------------------------------------------------------------
    def _watch(self) -> None:
        now = time.monotonic()
        if now - self._last_watch > 1.0:
            # The launcher itself was busy (a restart, a slow call): heartbeats
            # queued meanwhile are not the components' fault.
            for inst in self.instances.values():
                inst.last_heartbeat = max(inst.last_heartbeat, now)
        self._last_watch = now
        self.supervisor.reap_retiring()
        if self.vms is not None:
            self.vms.watch()
        for inst in list(self.instances.values()):
            inc = inst.incarnation
            # "starting" and "handover" belong to the operation that set them (it watches the process).
            if inc is not None and inst.state in ("running", "unresponsive"):
                code = inc.proc.poll()
                silent = now - inst.last_heartbeat
                if code is not None:
                    self._on_exit(inst, describe_exit(code), crashed=(code != 0))
                elif silent > inst.spec.heartbeat_timeout:
                    log.warning("%s sent no heartbeat for %.1f s: killing it", inst.name, silent)
                    inc.proc.kill()
                    inc.proc.wait()
                    self._on_exit(inst, f"unresponsive {silent:.1f} s (killed)", crashed=True)
                elif silent > min(UNRESPONSIVE_AFTER, inst.spec.heartbeat_timeout) and inst.state == "running":
                    log.warning("%s missed a heartbeat (silent %.1f s)", inst.name, silent)
                    inst.set_state("unresponsive")
            if inst.state == "backoff" and inst.next_start is not None and now >= inst.next_start:
                self._respawn(inst)

    def _on_exit(self, inst: Instance, how: str, crashed: bool) -> None:
        log.warning("%s (pid %d) exited: %s", inst.name, inst.incarnation.pid, how)
        self.supervisor._cleanup_files(inst.incarnation)
        ran = time.monotonic() - inst.incarnation.started
        inst.incarnation = None
        inst.last_exit = how
        policy = inst.spec.restart
        if policy == "never" or (policy == "on-failure" and not crashed):
            inst.set_state("stopped" if not crashed else "failed")
            return
        now = time.monotonic()
        inst.crash_times.append(now)
        recent = [t for t in inst.crash_times if now - t <= inst.spec.restart_window]
        if len(recent) > inst.spec.max_restarts:
            inst.set_state("failed")
            msg = (f"{inst.name} crashed {len(recent)} times in {inst.spec.restart_window:g} s; "
                   f"not restarting it (last: {how}); 'qnet restart {inst.name}' brings it back")
            inst.failure = msg
            log.error("%s", msg)
            return
        if ran >= STABLE_AFTER:
            inst.backoff = 0.0  # after a quiet spell: at once
        elif inst.backoff == 0.0:
            inst.backoff = inst.spec.backoff_initial  # a burst: back off, doubling
        else:
            inst.backoff = min(inst.spec.backoff_max, inst.backoff * 2)
        inst.next_start = now + inst.backoff
        inst.set_state("backoff")
        if inst.backoff == 0.0:
            self._respawn(inst)

    def _respawn(self, inst: Instance) -> None:
        inst.next_start = None
        t_exit = inst.crash_times[-1] if inst.crash_times else time.monotonic()

        def done(_value, exc):
            if exc is None:
                inst.restarts += 1
                inst.last_respawn_delay = time.monotonic() - t_exit
                log.info("%s respawned (pid %d) %.2f s after it exited%s", inst.name, inst.incarnation.pid,
                         inst.last_respawn_delay, " with its last state" if inst.snapshot else "")
            elif isinstance(exc, StartFailed):
                log.error("%s", exc)
                self._on_exit_failed_start(inst, str(exc))
            else:
                log.error("respawning %s failed: %r", inst.name, exc)
                self._on_exit_failed_start(inst, str(exc))
        self.tasks.run(self.supervisor.start(inst), done)

    def _on_exit_failed_start(self, inst: Instance, why: str) -> None:
        inst.incarnation = None
        inst.last_exit = why[:128]
        now = time.monotonic()
        inst.crash_times.append(now)
        recent = [t for t in inst.crash_times if now - t <= inst.spec.restart_window]
        if len(recent) > inst.spec.max_restarts:
            inst.set_state("failed")
            inst.failure = (f"{inst.name} failed to start repeatedly: {why}; "
                            f"'qnet restart {inst.name}' tries again")
            return
        inst.backoff = min(inst.spec.backoff_max, max(inst.backoff, inst.spec.backoff_initial) * 2)
        inst.next_start = now + inst.backoff
        inst.set_state("backoff")

    # -- for the control interface ------------------------------------------------------
    def status_rows(self) -> list[dict]:
        rows = []
        for name in self.graph.order:
            inst = self.instances.get(name)
            if inst is None:
                continue
            details = dict(inst.details)
            problems = list(inst.problems) + ([inst.failure] if inst.failure else [])
            if problems:
                details["problems"] = problems
            if inst.state == "unresponsive":
                details["silent_s"] = round(time.monotonic() - inst.last_heartbeat, 1)
            details["heartbeat_gap_max_s"] = round(inst.heartbeat_gap_max, 3)
            if inst.last_respawn_delay is not None:
                details["last_respawn_delay_s"] = round(inst.last_respawn_delay, 3)
            rows.append({
                "name": name,
                "pid": inst.incarnation.pid if inst.incarnation else 0,
                "state": inst.state,
                "restarts": inst.restarts,
                "last_exit": inst.last_exit[:128],
                "incarnation": inst.incarnation.number if inst.incarnation else 0,
                "since": _utc(inst.since),
                "details": details,
            })
        return rows


class _Control:
    """Handlers of qnet.launcher."""

    def __init__(self, launcher: Launcher):
        self.l = launcher

    def status(self):
        return self.l.status_rows()

    def graph(self):
        g = self.l.graph
        return {
            "name": g.name, "source": g.source, "runtime_dir": self.l.run_dir, "launcher_pid": os.getpid(),
            "components": [{"name": n, "module": spec.module,
                            "provides": [f"{p}@{v}" for p, v in spec.provides],
                            "uses": [p if v is None else f"{p}@{v}" for p, v in spec.uses],
                            "restart": spec.restart}
                           for n in g.order for spec in [self.l.instances[n].spec] if n in self.l.instances],
        }

    def _instance(self, name: str) -> Instance:
        inst = self.l.instances.get(name)
        if inst is None:
            raise errors.RemoteError(f"no component named {name!r} (see 'qnet status')", code="not_found")
        return inst

    def _answer_later(self, steps: Steps, shape: Callable[[Any], Any] = lambda v: v):
        """Run an operation on the loop and answer the caller when it ends (a deferred reply)."""
        server = self.l.control
        token = server.defer()

        def done(value, exc):
            if exc is None:
                try:
                    server.reply(token, shape(value))
                except Exception as e:  # a bug in shaping the answer still answers
                    log.exception("answering %s failed", token.method)
                    server.reply_error(token, errors.Internal(f"{token.method}: {type(e).__name__}: {e}"))
                return
            if isinstance(exc, errors.IpcError):
                err = exc
            elif isinstance(exc, StartFailed):
                err = errors.RemoteError(str(exc), code="failed")
            elif isinstance(exc, ValueError):
                err = errors.RemoteError(str(exc), code="bad_argument")
            else:
                log.error("%s failed: %r", token.method, exc, exc_info=exc)
                err = errors.Internal(f"{token.method}: {type(exc).__name__}: {exc}")
            server.reply_error(token, err)
        self.l.tasks.run(steps, done)
        return DEFERRED

    def restart(self, name: str, mode: str):
        inst = self._instance(name)
        if inst.state in ("starting", "handover"):
            raise errors.RemoteError(f"{name} is {inst.state} already; see 'qnet status'", code="failed")
        if inst.state in ("backoff", "failed", "stopped"):
            inst.crash_times.clear()
            inst.next_start = None
        return self._answer_later(self._restart(inst, mode), lambda res: {"name": name, **res})

    def _restart(self, inst: Instance, mode: str) -> Steps:
        sup = self.l.supervisor
        if mode == "cold" and inst.incarnation is not None:
            old_pid = inst.incarnation.pid
            inc = inst.incarnation
            inst.incarnation = None
            sup.retire(inc)
            t0 = time.monotonic()
            yield from sup.start(inst)
            inst.restarts += 1
            return {"old_pid": old_pid, "new_pid": inst.incarnation.pid, "handed_over": False,
                    "seconds": round(time.monotonic() - t0, 3)}
        return (yield from sup.restart_handover(inst))

    def logs(self, name: str, offset: int, max_bytes: int):
        self._instance(name)
        path = os.path.join(self.l.supervisor.logdir, f"{name}.log")
        try:
            size = os.path.getsize(path)
        except OSError:
            return {"text": "", "offset": 0}
        if offset < 0 or offset > size:
            offset = max(0, size - max_bytes)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
        return {"text": data.decode("utf-8", "replace"), "offset": offset + len(data)}

    def shutdown(self):
        self.l.loop.call_later(0.05, self.l.request_shutdown)
        return True

    # -- ports, addresses, routes (configuration the launcher owns) ----------------------------
    def port_add(self, name, backend, tap, create, mac, mtu, forwarding, path, peer_path, dhcp, addresses,
                 offloads=False, fault=None, addresses6=()):
        cfg = {"backend": backend, "mtu": mtu, "forwarding": forwarding, "dhcp": dhcp,
               "addresses": [str(a) for a in addresses] + [str(a) for a in addresses6]}
        if offloads:
            cfg["offloads"] = True
        if fault:
            cfg["fault"] = fault
        for k, v in (("tap", tap), ("mac", mac), ("path", path), ("peer_path", peer_path)):
            if v is not None:
                cfg[k] = v
        if backend == "tap":
            cfg["create"] = create
        return self._answer_later(self.l.ports.add(name, cfg), lambda c: _port_out(name, c))

    def port_del(self, name):
        return self._answer_later(self.l.ports.delete(name))

    def port_set(self, name, forwarding, mtu):
        return self._answer_later(self.l.ports.set(name, forwarding, mtu), lambda c: _port_out(name, c))

    def addr_add(self, port, address):
        return self._answer_later(self.l.ports.addr(port, str(address), True))

    def addr_del(self, port, address):
        return self._answer_later(self.l.ports.addr(port, str(address), False))

    def route_add(self, prefix, via, dev, metric, table=None):
        return self._answer_later(self.l.ports.route({"prefix": str(prefix), "via": None if via is None else str(via),
                                                      "dev": dev, "metric": metric, "table": table}, True))

    def route_del(self, prefix, via, dev, table=None):
        return self._answer_later(self.l.ports.route({"prefix": str(prefix), "via": None if via is None else str(via),
                                                      "dev": dev, "table": table}, False))

    # IPv6 (1.4): kept beside IPv4's in the same configuration (ports.py tells them apart)
    def addr6_add(self, port, address):
        return self._answer_later(self.l.ports.addr(port, str(address), True))

    def addr6_del(self, port, address):
        return self._answer_later(self.l.ports.addr(port, str(address), False))

    def route6_add(self, prefix, via, dev, metric):
        return self._answer_later(self.l.ports.route({"prefix": str(prefix), "via": None if via is None else str(via),
                                                      "dev": dev, "metric": metric}, True))

    def route6_del(self, prefix, via, dev):
        return self._answer_later(self.l.ports.route({"prefix": str(prefix), "via": None if via is None else str(via),
                                                      "dev": dev}, False))

    # router mode (1.5): kept in the port's configuration (ports.py), re-asserted after its addresses
    def ra_set(self, port, prefixes, mtu, rdnss, dnssl, managed, other, router_lifetime):
        ra = {"prefixes": [str(p) for p in prefixes], "mtu": mtu, "rdnss": [str(a) for a in rdnss],
              "dnssl": list(dnssl), "managed": managed, "other": other, "router_lifetime": router_lifetime}
        return self._answer_later(self.l.ports.ra(port, ra))

    def ra_del(self, port):
        return self._answer_later(self.l.ports.ra(port, None))

    def dhcp_pool(self, port, start, end):
        return self._answer_later(self.l.ports.set_pool(port, str(start), str(end)))

    def endpoints(self):
        sup = self.l.supervisor
        out = {}
        for name in self.l.graph.order:
            out[name] = {k: sup.stable_endpoint(name, k) for k in ("rpc", "data", "pub", "dgram")}
        return out


def _port_out(name: str, cfg: dict) -> dict:
    return {"name": name, "backend": cfg["backend"], "tap": cfg.get("tap"), "mtu": cfg["mtu"],
            "forwarding": cfg["forwarding"], "addresses": list(cfg["addresses"]), "dhcp": cfg.get("dhcp")}
