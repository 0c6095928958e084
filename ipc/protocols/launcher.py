"""The launcher's control interface: the `qnet` CLI is an ordinary client of it."""
from ..decl import Method, Protocol, Version
from ..types import ANY, BOOL, NAME, Enum, Field, Int, List, Str, U32, struct

COMPONENT_STATUS = struct(
    "ComponentStatus",
    Field("name", NAME),
    Field("pid", Int(0, 1 << 32)),
    Field("state", Str(max_len=32), doc="starting | running | frozen | stopping | backoff | failed | stopped"),
    Field("restarts", U32),
    Field("last_exit", Str(max_len=128)),
    Field("incarnation", U32),
    Field("since", Str(max_len=64), doc="UTC time of the last state change"),
    Field("details", ANY, doc="the component's own figures from its last heartbeat: queues, drops"),
)

RESTART_RESULT = struct(
    "RestartResult",
    Field("name", NAME),
    Field("old_pid", Int(0, 1 << 32)),
    Field("new_pid", Int(0, 1 << 32)),
    Field("handed_over", BOOL, doc="the successor received its predecessor's state"),
    Field("seconds", ANY),
)

LOG_CHUNK = struct(
    "LogChunk",
    Field("text", Str(max_len=1 << 20)),
    Field("offset", Int(0, 1 << 62)),
)

LAUNCHER = Protocol(
    "qnet.launcher", Version(1, 0),
    doc="Control of the component graph: status, restarts, logs, shutdown.",
    methods=(
        Method("status", result=List(COMPONENT_STATUS), idempotent=True),
        Method("graph", result=ANY, idempotent=True, doc="The graph as loaded: file, components, endpoints."),
        Method("restart", args=(Field("name", NAME),
                                Field("mode", Enum("RestartMode", ("handover", "cold")), default="handover")),
               result=RESTART_RESULT, errors=("not_found", "failed"),
               doc="Make-before-break: start the successor, hand state and handles over, stop the predecessor."),
        Method("logs", args=(Field("name", NAME), Field("offset", Int(-1, 1 << 62), default=-1),
                             Field("max_bytes", Int(1, 1 << 20), default=65536)),
               result=LOG_CHUNK, errors=("not_found",), idempotent=True,
               doc="Readable log lines of a component from byte offset (-1: the tail)."),
        Method("shutdown", result=BOOL, doc="Stop every component, then the launcher."),
    ),
)
