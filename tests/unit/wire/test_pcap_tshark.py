"""PcapWriter output is a classic pcap that tshark reads back frame by frame."""

import io
import shutil
import struct
import subprocess
from ipaddress import IPv4Address

import pytest

from components.netstack.wire import (ETHERTYPE_IPV4, MacAddr, PcapWriter, build_echo,
                                      build_ethernet, build_ipv4, build_udp)

A = MacAddr.parse("02:00:00:00:00:01")
B = MacAddr.parse("02:00:00:00:00:02")
SRC, DST = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")


def _frames() -> list[bytes]:
    return [
        build_ethernet(B, A, ETHERTYPE_IPV4, build_ipv4(SRC, DST, 1, build_echo(8, 1, 1, b"ping"))),
        build_ethernet(A, B, ETHERTYPE_IPV4, build_ipv4(DST, SRC, 17, build_udp(DST, SRC, 53, 5353, b"x" * 101))),
        build_ethernet(A, B, 0x88B5, b"\0" * 46),
    ]


def test_global_header_and_records_follow_the_classic_format():
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    writer.write(b"\x01" * 70000, 1700000000.9999996)  # longer than the snaplen
    data = buf.getvalue()
    assert struct.unpack_from("<IHHiIII", data) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    sec, usec, incl, orig = struct.unpack_from("<IIII", data, 24)
    assert (sec, usec, incl, orig) == (1700000001, 0, 65535, 70000)  # usec rounding carried
    assert len(data) == 24 + 16 + 65535 and writer.frames_written == 1


def test_tshark_reads_the_frames_we_write(tmp_path):
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    path = tmp_path / "capture.pcap"
    frames = _frames()
    with open(path, "wb") as f:
        writer = PcapWriter(f)
        for i, frame in enumerate(frames):
            writer.write(frame, 1700000000.25 + i)
    result = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "frame.len",
                             "-e", "frame.time_epoch", "-e", "frame.protocols"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [len(f) for f in frames]
    assert [round(float(r[1]), 2) for r in rows] == [1700000000.25, 1700000001.25, 1700000002.25]
    assert "icmp" in rows[0][2] and "udp" in rows[1][2]
