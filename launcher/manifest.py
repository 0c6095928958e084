"""The graph manifest: which components run, what they provide and use, how they restart.

The whole graph is validated before anything starts. Every error names the
file, the line where it can be found, the component and the field.

    [graph]
    name = "default"
    pythonpath = []                 # extra import directories, relative to the manifest
    declarations = []               # extra modules of protocol declarations

    [components.NAME]
    module = "components.netstack.process"   # run as python -m MODULE
    provides = ["qnet.device@1.0"]
    uses = ["qnet.launcher@1.0"]
    after = []                      # extra start-order edges
    restart = "always"              # always | on-failure | never
    max_restarts = 5                # crash restarts allowed within restart_window seconds
    restart_window = 30.0
    backoff_initial = 0.2           # seconds; doubles per consecutive crash
    backoff_max = 5.0
    heartbeat_timeout = 3.0         # silent this long: killed and respawned (default: [graph])
    cpus = [1]                      # CPUs it may run on (default: [graph] cpus)
    instances = []                  # per-instance copies named NAME.INSTANCE
    per_port = false                # a template: one instance NAME.PORT per port (ethdriver)
    args = { ... }                  # free-form, handed to the component
    handles.H = { kind = "file", path = "..." }   # OS handles the launcher holds
"""
from __future__ import annotations

import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ipc import registry
from ipc.decl import Version

# Protocols the launcher itself provides to every component.
LAUNCHER_PROVIDES = ("qnet.launcher", "qnet.supervisor")
POLICIES = ("always", "on-failure", "never")
HANDLE_KINDS = ("file", "tap", "unix-listen", "unix-dgram")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_COMPONENT_KEYS = {"module", "provides", "uses", "after", "restart", "max_restarts", "restart_window",
                   "backoff_initial", "backoff_max", "instances", "args", "handles", "enabled", "description",
                   "per_port", "heartbeat_timeout", "cpus"}
# Seconds a running component may stay silent (it heartbeats every second) before the launcher
# kills and respawns it; one missed heartbeat already shows it "unresponsive". Measured
# (docs/status.md, "Respawn timing"): heartbeat gaps of netstack, dhcpd and a driver under a
# 100/s ping and restarts stay at 1.0 s; a component blocked in synchronous calls to a dead peer
# (tests/components/peer.py) goes 3.6 s silent. 5 s is above both.
DEFAULT_HEARTBEAT_TIMEOUT = 5.0
HEARTBEAT_TIMEOUT_RANGE = (1.5, 3600.0)


class ManifestError(Exception):
    """One clear line: file:line: component: field: what is wrong."""


@dataclass
class HandleSpec:
    name: str
    kind: str
    options: dict[str, Any]


@dataclass
class ComponentSpec:
    name: str                 # instance name: "netstack" or "ethdriver.p0"
    template: str             # the [components.X] key
    module: str
    provides: list[tuple[str, Version]]
    uses: list[tuple[str, Version | None]]
    after: list[str]
    restart: str = "always"
    max_restarts: int = 5
    restart_window: float = 30.0
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    args: dict[str, Any] = field(default_factory=dict)
    handles: list[HandleSpec] = field(default_factory=list)
    instance: str | None = None
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    cpus: tuple[int, ...] | None = None     # CPU affinity; None: wherever the kernel likes


@dataclass
class Graph:
    name: str
    source: str
    declarations: list[str]
    components: dict[str, ComponentSpec]
    order: list[str]           # start order (providers first)
    raw: dict[str, Any]
    pythonpath: list[str] = field(default_factory=list)
    templates: dict[str, ComponentSpec] = field(default_factory=dict)
    transport: dict[str, Any] = field(default_factory=lambda: {"kind": "ipc"})

    def provider_of(self, protocol: str) -> str | None:
        for c in list(self.components.values()):
            if any(p == protocol for p, _ in c.provides):
                return c.name
        return None


def default_manifest_text() -> str:
    return resources.files("launcher").joinpath("default_graph.toml").read_text()


# A graph is a handful of processes; a manifest with thousands of components is a mistake or
# an attack (every one is a process, four sockets and a log file). Ports are not components
# here: per-port drivers come from a per_port template and are bounded by netstack's devices.
MAX_COMPONENTS = 64
MAX_MANIFEST_BYTES = 1 << 20


def load(path: str | None = None) -> Graph:
    if path is None:
        return parse(default_manifest_text(), "<embedded default graph>")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start}): a manifest is TOML, which is UTF-8") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; a graph manifest is small")
    return parse(text, path)


class _Locator:
    """Finds the line of a table or key in the TOML text, for error messages."""

    def __init__(self, text: str, source: str):
        self.lines = text.splitlines()
        self.source = source

    def line_of(self, component: str | None, key: str | None) -> int | None:
        start = 0
        if component is not None:
            pat = re.compile(rf"^\s*\[\s*components\s*\.\s*\"?{re.escape(component)}\"?\s*[\].]")
            for i, line in enumerate(self.lines):
                if pat.match(line):
                    start = i
                    break
            else:
                return None
        if key is None:
            return start + 1
        kpat = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*[=.]")
        for i in range(start, len(self.lines)):
            if i > start and self.lines[i].lstrip().startswith("[") and component is not None \
                    and f"components.{component}" not in self.lines[i].replace(" ", ""):
                break
            if kpat.match(self.lines[i]):
                return i + 1
        return start + 1 if component is not None else None

    def error(self, message: str, component: str | None = None, key: str | None = None) -> ManifestError:
        line = self.line_of(component, key)
        where = f"{self.source}:{line}" if line else self.source
        who = f"component {component}: " if component else ""
        what = f"field '{key}': " if key else ""
        return ManifestError(f"{where}: {who}{what}{message}")


def parse(text: str, source: str) -> Graph:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{source}: not valid TOML: {exc}") from None
    loc = _Locator(text, source)
    graph_tbl = raw.get("graph", {})
    if not isinstance(graph_tbl, dict):
        raise loc.error("[graph] must be a table")
    unknown_top = set(raw) - {"graph", "components", "ports", "routes", "vms"}
    if unknown_top:
        raise loc.error(f"unknown top-level table(s): {', '.join(sorted(unknown_top))}")
    pythonpath = graph_tbl.get("pythonpath", [])
    if not isinstance(pythonpath, list) or not all(isinstance(d, str) for d in pythonpath):
        raise loc.error("[graph] pythonpath must be a list of directories", key="pythonpath")
    base = os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else os.getcwd()
    pythonpath = [os.path.normpath(os.path.join(base, d)) for d in pythonpath]
    for d in pythonpath:
        if d not in sys.path:
            sys.path.insert(0, d)
    declarations = graph_tbl.get("declarations", [])
    if not isinstance(declarations, list) or not all(isinstance(d, str) for d in declarations):
        raise loc.error("[graph] declarations must be a list of module names", key="declarations")
    for mod in declarations:
        try:
            registry.load_module(mod)
        except ImportError as exc:
            raise loc.error(f"cannot import declarations module {mod!r}: {exc}", key="declarations") from None
        except ValueError as exc:
            raise loc.error(str(exc), key="declarations") from None
    comps_tbl = raw.get("components")
    if not isinstance(comps_tbl, dict) or not comps_tbl:
        raise loc.error("the graph declares no [components.NAME] table")
    if len(comps_tbl) > MAX_COMPONENTS:
        raise loc.error(f"the graph declares {len(comps_tbl)} components; at most {MAX_COMPONENTS} are allowed "
                        f"(each is a process with its own sockets; docs/manifest.md)")
    components: dict[str, ComponentSpec] = {}
    templates: dict[str, ComponentSpec] = {}
    hb_default = _heartbeat_timeout(loc, graph_tbl.get("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT), None)
    cpus_default = _cpus(loc, graph_tbl.get("cpus", DEFAULT_CPUS), None)
    for cname, ctbl in comps_tbl.items():
        for spec in _component(loc, cname, ctbl, hb_default, cpus_default):
            if isinstance(ctbl, dict) and ctbl.get("per_port"):
                templates[spec.name] = spec
            else:
                components[spec.name] = spec
    _check_interfaces(loc, {**components, **templates})
    order = _start_order(loc, components)
    transport = _transport(loc, graph_tbl)
    graph = Graph(name=str(graph_tbl.get("name", "unnamed")), source=source, declarations=declarations, transport=transport,
                 components=components, order=order, raw=raw, pythonpath=pythonpath, templates=templates)
    from .ports import manifest_ports  # ports and routes are checked before anything starts, too
    manifest_ports(graph)
    return graph


def _transport(loc: _Locator, g: dict) -> dict[str, Any]:
    """[graph] transport = "ipc" (default) | "tcp", with tcp_host, tcp_base_port, curve."""
    kind = g.get("transport", "ipc")
    if kind not in ("ipc", "tcp"):
        raise loc.error(f"transport must be 'ipc' or 'tcp', got {kind!r}", key="transport")
    # Frame batches between components on this host: launcher-held socketpairs
    # (docs/decisions.md, "Same-host data plane"), or ZeroMQ like the control plane.
    data = g.get("data_transport", "socketpair" if kind == "ipc" else "zmq")
    if data not in ("socketpair", "zmq"):
        raise loc.error(f"data_transport must be 'socketpair' or 'zmq', got {data!r}", key="data_transport")
    if kind == "tcp" and data != "zmq":
        raise loc.error("data_transport = 'socketpair' needs transport = 'ipc' (one host)", key="data_transport")
    if kind == "ipc":
        return {"kind": "ipc", "data": data}
    host = g.get("tcp_host", "127.0.0.1")
    base = g.get("tcp_base_port", 47100)
    curve = g.get("curve", True)
    if not isinstance(host, str) or not host:
        raise loc.error("tcp_host must be an address to bind, e.g. 127.0.0.1", key="tcp_host")
    if not isinstance(base, int) or isinstance(base, bool) or not 1024 <= base <= 60000:
        raise loc.error("tcp_base_port must be 1024..60000", key="tcp_base_port")
    if not isinstance(curve, bool):
        raise loc.error("curve must be true or false", key="curve")
    return {"kind": "tcp", "host": host, "base_port": base, "curve": curve, "data": "zmq"}


# Where components run. Measured on the 2-core machine (docs/status.md, "CPU placement"): the
# whole graph on one CPU answers a ping in 110 µs against 178 µs left to the kernel (a wake-up
# on the same CPU costs far less than one across CPUs in this VM), and forwards as much; split
# driver/netstack placements were slower at both. "pack" puts every component on the
# machine's last CPU; "none" leaves placement to the kernel; a list names the CPUs.
DEFAULT_CPUS = "pack"


def _cpus(loc: _Locator, v: Any, cname: str | None) -> tuple[int, ...] | None:
    where = (cname, "cpus") if cname else (None, "cpus")
    if v == "none":
        return None
    online = sorted(os.sched_getaffinity(0))
    if v == "pack":
        return (online[-1],)
    if (not isinstance(v, list) or not v or len(v) > 1024
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in v)):
        raise loc.error('cpus must be "pack", "none" or a list of CPU numbers, e.g. [0]', *where)
    missing = sorted(set(v) - set(online))
    if missing:
        raise loc.error(f"cpus: CPU {missing[0]} is not available here (available: {online})", *where)
    return tuple(sorted(set(v)))


def _heartbeat_timeout(loc: _Locator, v: Any, cname: str | None) -> float:
    lo, hi = HEARTBEAT_TIMEOUT_RANGE
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise loc.error(f"must be seconds, {lo:g}..{hi:g} (a heartbeat comes every second), got {v!r}",
                        cname, "heartbeat_timeout")
    return float(v)


def _component(loc: _Locator, cname: str, t: Any, hb_default: float = DEFAULT_HEARTBEAT_TIMEOUT,
               cpus_default: tuple[int, ...] | None = None) -> list[ComponentSpec]:
    if not _NAME_RE.match(cname):
        raise loc.error("a component name uses letters, digits, '-' and '_'", cname)
    if not isinstance(t, dict):
        raise loc.error("must be a table", cname)
    unknown = set(t) - _COMPONENT_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise loc.error(f"unknown field (known: {', '.join(sorted(_COMPONENT_KEYS))})", cname, key)
    if t.get("enabled", True) is False:
        return []

    def get(key: str, typ: type | tuple, default: Any) -> Any:
        v = t.get(key, default)
        if isinstance(v, bool) and typ in (int, float, (int, float)):
            raise loc.error(f"must be a number, not {v!r}", cname, key)
        if not isinstance(v, typ):
            want = typ.__name__ if isinstance(typ, type) else "/".join(x.__name__ for x in typ)
            raise loc.error(f"must be {want}, got {type(v).__name__} {v!r}", cname, key)
        return v

    module = get("module", str, None) if "module" in t else None
    if not module:
        raise loc.error("missing (the Python module to run, e.g. components.netstack.process)", cname, "module")
    provides = []
    for ref in get("provides", list, []):
        name, ver = _ref(loc, cname, "provides", ref)
        proto = registry.get(name)
        if proto is None:
            raise loc.error(f"unknown interface {name!r} (see 'qnet ipc list')", cname, "provides")
        if ver is not None and not proto.version.serves(ver):
            raise loc.error(f"{name} is declared at version {proto.version}, not {ver}", cname, "provides")
        provides.append((name, proto.version))
    uses = []
    for ref in get("uses", list, []):
        name, ver = _ref(loc, cname, "uses", ref)
        if registry.get(name) is None:
            raise loc.error(f"unknown interface {name!r} (see 'qnet ipc list')", cname, "uses")
        uses.append((name, ver))
    after = get("after", list, [])
    restart = get("restart", str, "always")
    if restart not in POLICIES:
        raise loc.error(f"must be one of {', '.join(POLICIES)}, got {restart!r}", cname, "restart")
    max_restarts = get("max_restarts", int, 5)
    window = float(get("restart_window", (int, float), 30.0))
    b0 = float(get("backoff_initial", (int, float), 0.2))
    bmax = float(get("backoff_max", (int, float), 5.0))
    if max_restarts < 0 or window <= 0 or b0 < 0 or bmax < b0:
        raise loc.error("restart limits must be non-negative with backoff_max >= backoff_initial", cname)
    args = get("args", dict, {})
    handles = []
    for hname, h in get("handles", dict, {}).items():
        if not isinstance(h, dict) or h.get("kind") not in HANDLE_KINDS:
            raise loc.error(f"handle {hname!r} needs kind = one of {', '.join(HANDLE_KINDS)}", cname, "handles")
        handles.append(HandleSpec(hname, h["kind"], {k: v for k, v in h.items() if k != "kind"}))
    instances = get("instances", list, [])
    hb = _heartbeat_timeout(loc, t["heartbeat_timeout"], cname) if "heartbeat_timeout" in t else hb_default
    cpus = _cpus(loc, t["cpus"], cname) if "cpus" in t else cpus_default
    common = dict(template=cname, module=module, provides=provides, uses=uses, after=list(after),
                  restart=restart, max_restarts=max_restarts, restart_window=window,
                  backoff_initial=b0, backoff_max=bmax, heartbeat_timeout=hb, cpus=cpus)
    if not instances:
        return [ComponentSpec(name=cname, args=dict(args), handles=handles, **common)]
    out = []
    for inst in instances:
        if not isinstance(inst, str) or not _NAME_RE.match(inst):
            raise loc.error(f"bad instance name {inst!r}", cname, "instances")
        out.append(ComponentSpec(name=f"{cname}.{inst}", instance=inst, args={**args, "instance": inst},
                                 handles=handles, **common))
    return out


def _ref(loc: _Locator, cname: str, key: str, ref: Any) -> tuple[str, Version | None]:
    if not isinstance(ref, str):
        raise loc.error(f"interface references are strings like 'qnet.device@1.0', got {ref!r}", cname, key)
    try:
        return registry.parse_ref(ref)
    except ValueError as exc:
        raise loc.error(str(exc), cname, key) from None


def _check_interfaces(loc: _Locator, comps: dict[str, ComponentSpec]) -> None:
    providers: dict[str, tuple[str, Version]] = {}
    for c in comps.values():
        for name, ver in c.provides:
            other = providers.get(name)
            if other is not None and comps[other[0]].template != c.template:
                raise loc.error(f"{name} is provided by both {other[0]} and {c.name}", c.template, "provides")
            providers.setdefault(name, (c.name, ver))
    for c in comps.values():
        for name, wanted in c.uses:
            if name in LAUNCHER_PROVIDES:
                continue
            prov = providers.get(name)
            if prov is None:
                raise loc.error(f"uses {name} but no component provides it", c.template, "uses")
            if wanted is not None and not prov[1].serves(wanted):
                raise loc.error(f"uses {name}@{wanted} but {prov[0]} provides version {prov[1]}",
                                c.template, "uses")
        for a in c.after:
            if a not in comps and not any(x.template == a for x in comps.values()):
                raise loc.error(f"'after' names {a!r}, which is not in the graph", c.template, "after")


def _start_order(loc: _Locator, comps: dict[str, ComponentSpec]) -> list[str]:
    providers = {name: c.name for c in comps.values() for name, _ in c.provides}
    deps: dict[str, set[str]] = {}
    for c in comps.values():
        d = {providers[n] for n, _ in c.uses if n in providers}
        for a in c.after:
            d |= {x.name for x in comps.values() if x.name == a or x.template == a}
        d.discard(c.name)
        deps[c.name] = d
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = path[path.index(n):] + [n]
            raise loc.error(f"dependency cycle: {' -> '.join(cycle)}", comps[n].template, "uses")
        state[n] = 1
        for d in sorted(deps[n]):
            visit(d, path + [n])
        state[n] = 2
        order.append(n)

    for n in sorted(comps):
        visit(n, [])
    return order


def default_runtime_dir() -> str:
    env = os.environ.get("QNET_RUNTIME_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/qnet"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "qnet")
    return f"/tmp/qnet-{os.getuid()}"
