"""PcapCapture: the file it writes is read back by tshark, an independent reader."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from components.ethdriver.backends.capture import PcapCapture

from ._memory import MemoryBackend

TSHARK = shutil.which("tshark")


def test_both_directions_are_recorded_in_order(tmp_path):
    rx = [bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.99.0.1"))]
    tx = [bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
                / IP(src="10.99.0.2", dst="10.99.0.1") / UDP(sport=1000 + i, dport=53) / b"q")
          for i in range(3)]
    inner = MemoryBackend()
    path = tmp_path / "c.pcap"
    ticks = iter([1000.25, 1001.5])
    with open(path, "wb") as fileobj:
        cap = PcapCapture(inner, fileobj, clock=lambda: next(ticks))
        inner.push(*rx)
        assert cap.read_batch() == rx
        assert cap.write_batch(tx) == 3
        assert inner.sent == tx
        assert cap.counters()["captured_frames"] == 4
        cap.close()
    if TSHARK is None:
        pytest.skip("tshark is not installed")
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len",
         "-e", "frame.protocols"],
        capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    assert len(out) == 4
    rows = [line.split("\t") for line in out]
    assert float(rows[0][0]) == pytest.approx(1000.25)
    assert float(rows[1][0]) == pytest.approx(1001.5)
    assert [int(r[1]) for r in rows] == [len(f) for f in rx + tx]
    assert rows[0][2].endswith("arp")
    assert all(r[2].endswith("ip:udp:dns") or ":udp" in r[2] for r in rows[1:])


def test_only_the_chosen_direction_is_recorded(tmp_path):
    inner = MemoryBackend()
    with open(tmp_path / "tx.pcap", "wb") as fileobj:
        cap = PcapCapture(inner, fileobj, rx=False)
        inner.push(b"\x00" * 60)
        cap.read_batch()
        cap.write_batch([b"\x01" * 60])
        assert cap.counters()["captured_frames"] == 1
        cap.close()
    assert (tmp_path / "tx.pcap").stat().st_size == 24 + 16 + 60
