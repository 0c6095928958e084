"""TCP (RFC 9293) for the sans-I/O core. See README.md for what is here and what is not."""

from .conn import Connection, TcpConfig, TcpEvent
from .segment import OutSegment, rst_for
from .state import TRANSITIONS, Act, Event, State

__all__ = ["Connection", "TcpConfig", "TcpEvent", "OutSegment", "rst_for", "TRANSITIONS", "Act",
           "Event", "State"]
