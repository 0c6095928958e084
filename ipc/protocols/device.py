"""Between a port's ethdriver and netstack: frame batches and link events."""
from ..decl import Event, Protocol, Stream, Version
from ..types import ANY, BOOL, NAME, Field, Int, List, Optional, Str, U32, MAC

# A port with offloads (a TAP opened with IFF_VNET_HDR, TUNSETOFFLOAD) hands over GSO
# super-frames: a 65535-byte IP packet (IPv6: plus its 40-byte header) behind a tagged
# Ethernet header (18), each frame prefixed with its 12-byte virtio-net header.
# core/offload.MAX_SUPER_FRAME + wire/virtio_net.VNET_HDR_LEN; ipc/ imports no component.
MAX_DEVICE_FRAME = 12 + 18 + 40 + 0xFFFF

DEVICE = Protocol(
    "qnet.device", Version(1, 1),
    doc="Between a port's ethdriver and netstack. Data: the launcher's socketpair per port (its identity), "
        "or on ZeroMQ a routing id NAME~HMAC proved with the graph's data key.",
    streams=(
        Stream("rx", "to_provider", max_batch=1024, max_frame=MAX_DEVICE_FRAME,
               doc="frames received from the backend (each behind frame_prefix bytes of "
                   "virtio-net header when the port has offloads)"),
        Stream("tx", "to_user", max_batch=1024, max_frame=MAX_DEVICE_FRAME,
               doc="frames for the backend to send (with the same prefix)"),
    ),
    events=(
        Event("attach", (Field("port", NAME), Field("incarnation", U32), Field("backend", Str(max_len=32)),
                         Field("mac", Optional(MAC)), Field("mtu", Int(68, 65535)), Field("link_up", BOOL),
                         # 1.1; the defaults keep a 1.0 driver's attach valid (no offloads)
                         Field("offloads", List(Str(max_len=16), max_len=16), default=[],
                               doc="what the backend takes and may hand over: csum tso4 tso6 tso_ecn uso"),
                         Field("frame_prefix", Int(0, 12), default=0,
                               doc="bytes of virtio-net header before every frame, both ways: 12 or 0")),
              doc="driver -> netstack, on start and every few seconds (idempotent)."),
        Event("link", (Field("port", NAME), Field("up", BOOL), Field("mtu", Int(68, 65535))),
              doc="driver -> netstack when the backend's carrier or MTU changes."),
        Event("counters", (Field("port", NAME), Field("counters", ANY)),
              doc="driver -> netstack, periodic backend counters."),
        Event("resync", (), doc="netstack -> driver: send attach again (netstack restarted)."),
    ),
)
