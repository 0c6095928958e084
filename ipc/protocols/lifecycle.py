"""Protocols between the launcher and every component."""
from ..decl import Event, Method, Protocol, Version
from ..types import ANY, BOOL, NAME, Bytes, Field, Optional, Str, U16, U32, struct

# A component's state, handed from one incarnation to the next through the
# launcher. ``schema`` is the component's own state version: a successor that
# does not know it refuses the snapshot and starts clean (reported, not hidden).
SNAPSHOT = struct(
    "Snapshot",
    Field("component", NAME),
    Field("schema", U16),
    Field("data", Bytes(max_len=64 << 20), doc="MessagePack of the component's state"),
)

LIFECYCLE = Protocol(
    "qnet.lifecycle", Version(1, 0),
    doc="Served by every component; the launcher drives restarts with it.",
    methods=(
        Method("status", result=ANY, idempotent=True,
               doc="State, counters, queues and drops of this incarnation."),
        Method("activate", args=(Field("snapshot", Optional(SNAPSHOT), default=None),),
               result=BOOL, errors=("bad_snapshot",),
               doc="Take over with the given state (or none) and start I/O; the reply is the readiness report."),
        Method("freeze", result=SNAPSHOT,
               doc="Stop I/O, answer further calls with 'unavailable', and return the state for a successor."),
        Method("thaw", result=BOOL, doc="Undo freeze: a make-before-break restart was abandoned."),
        Method("stop", result=BOOL, doc="Exit soon (graceful); SIGTERM does the same."),
    ),
)

SUPERVISOR = Protocol(
    "qnet.supervisor", Version(1, 0),
    doc="One-way reports from components to the launcher (PUSH/PULL).",
    events=(
        Event("heartbeat", (Field("name", NAME), Field("incarnation", U32), Field("pid", U32),
                            Field("state", Str(max_len=32)), Field("status", ANY)),
              doc="Sent every second; a component silent for several seconds is restarted."),
        Event("checkpoint", (Field("name", NAME), Field("incarnation", U32), Field("snapshot", SNAPSHOT)),
              doc="The latest state worth keeping; used to respawn after a crash."),
        Event("problem", (Field("name", NAME), Field("incarnation", U32), Field("message", Str(max_len=1024))),
              doc="Something the operator should see in 'qnet status'."),
    ),
)

__all__ = ["LIFECYCLE", "SUPERVISOR", "SNAPSHOT"]
