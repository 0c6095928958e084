"""Two small protocols for a manifest whose components use each other (a dependency cycle)."""
from ipc.decl import Method, Protocol, Version
from ipc.types import BOOL

PING = Protocol("test.ping", Version(1, 0), doc="Provided by one side of a cycle.",
                methods=(Method("ping", result=BOOL, idempotent=True),))
PONG = Protocol("test.pong", Version(1, 0), doc="Provided by the other side of a cycle.",
                methods=(Method("pong", result=BOOL, idempotent=True),))
