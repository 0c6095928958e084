"""ethdriver backends: open a handle (launcher side), drive an open handle (driver side).

Launcher side: ``open_tap``, ``set_link_up``, ``listen_stream``, ``open_dgram``.
Driver side: ``TapBackend``, ``StreamBackend``, ``DgramBackend``, and the wrappers
``FaultInjector`` and ``PcapCapture`` that turn any backend into another one.
"""

from .base import MAX_FRAME_LEN, Backend, BackendWrapper
from .capture import PcapCapture
from .fault import FaultInjector
from .qemu_dgram import DgramBackend, open_dgram
from .qemu_stream import StreamBackend, listen_stream
from .tap import OFFLOAD_FLAGS, TapBackend, TapError, negotiate_offloads, open_tap, set_link_up

__all__ = [
    "MAX_FRAME_LEN", "Backend", "BackendWrapper", "PcapCapture", "FaultInjector",
    "DgramBackend", "open_dgram", "StreamBackend", "listen_stream",
    "OFFLOAD_FLAGS", "TapBackend", "TapError", "negotiate_offloads", "open_tap", "set_link_up",
]
