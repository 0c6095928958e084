"""Classic libpcap capture files (the format tshark and Wireshark read everywhere)."""

from __future__ import annotations

import struct
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
SNAPLEN = 65535

_GLOBAL = struct.Struct("<IHHiIII")  # magic, v2, v4, thiszone, sigfigs, snaplen, linktype
_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len


class PcapWriter:
    """Writes the global header at construction and one record per `write`."""

    def __init__(self, fileobj: BinaryIO, linktype: int = LINKTYPE_ETHERNET,
                 snaplen: int = SNAPLEN) -> None:
        self.fileobj = fileobj
        self.snaplen = snaplen
        self.frames_written = 0
        fileobj.write(_GLOBAL.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype))

    def write(self, frame: bytes | memoryview, ts: float) -> None:
        """Record one frame; `ts` is wall-clock seconds since the epoch (the binding's clock)."""
        usec_total = round(ts * 1_000_000)
        sec, usec = divmod(usec_total, 1_000_000)
        orig_len = len(frame)
        incl = frame if orig_len <= self.snaplen else frame[:self.snaplen]
        self.fileobj.write(_RECORD.pack(sec & 0xFFFFFFFF, usec, len(incl), orig_len))
        self.fileobj.write(incl)
        self.frames_written += 1

    def flush(self) -> None:
        self.fileobj.flush()
