"""Between a port's ethdriver and netstack: frame batches and link events."""
from ..decl import Event, Protocol, Stream, Version
from ..types import ANY, BOOL, NAME, Field, Int, Optional, Str, U32, MAC

DEVICE = Protocol(
    "qnet.device", Version(1, 0),
    doc="netstack binds; each ethdriver connects with its port name as routing id.",
    streams=(
        Stream("rx", "to_provider", max_batch=1024, doc="frames received from the backend"),
        Stream("tx", "to_user", max_batch=1024, doc="frames for the backend to send"),
    ),
    events=(
        Event("attach", (Field("port", NAME), Field("incarnation", U32), Field("backend", Str(max_len=32)),
                         Field("mac", Optional(MAC)), Field("mtu", Int(68, 65535)), Field("link_up", BOOL)),
              doc="driver -> netstack, on start and every few seconds (idempotent)."),
        Event("link", (Field("port", NAME), Field("up", BOOL), Field("mtu", Int(68, 65535))),
              doc="driver -> netstack when the backend's carrier or MTU changes."),
        Event("counters", (Field("port", NAME), Field("counters", ANY)),
              doc="driver -> netstack, periodic backend counters."),
        Event("resync", (), doc="netstack -> driver: send attach again (netstack restarted)."),
    ),
)
