"""Declarations of the small test components (the foundation's own tests use them)."""
from ipc.decl import Method, Protocol, Version
from ipc.types import ANY, BOOL, Bytes, Field, Int, List, Str, U32, struct

COUNTER = Protocol(
    "test.counter", Version(1, 2),
    doc="A counter that keeps its value across restarts (state hand-over).",
    methods=(
        Method("add", args=(Field("n", Int(-1000, 1000)),), result=Int(), doc="Add n, return the new value."),
        Method("get", result=Int(), idempotent=True),
        Method("pid", result=U32, idempotent=True),
        Method("echo", args=(Field("data", Bytes(max_len=1 << 20)),), result=Bytes(max_len=1 << 20),
               idempotent=True),
        Method("fail", args=(Field("code", Str(max_len=32)),), result=BOOL, errors=("not_found",),
               doc="Raise a declared application error, or a bug when code is 'bug'."),
        Method("handle_inode", args=(Field("name", Str(max_len=32)),), result=Int(), errors=("not_found",),
               idempotent=True, doc="st_ino of an inherited handle."),
        Method("crash", result=BOOL, doc="Exit at once with status 3."),
        Method("hang", result=BOOL, doc="Stop answering anything, heartbeats included."),
        Method("record", args=(Field("items", List(Str(max_len=16), max_len=8)),), result=ANY),
    ),
)

PEER = Protocol(
    "test.peer", Version(1, 0),
    doc="Calls the counter in the background and counts its successes.",
    methods=(Method("stats", result=ANY, idempotent=True),),
)
