"""The guest image boots under TCG, takes DHCP leases on boot and hot-plugged NICs, and
its serial shell can be driven by SerialConsole.run."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from qemu.qmp import QMPClient

from launcher.console import hotplug_bus
from tests.qemu.guest import Guest, booted_guest, guest_image

pytestmark = pytest.mark.qemu

LEASE_TIMEOUT = 60.0
# romfile= drops the iPXE option ROM: the guest boots its kernel directly, never from the NIC.
NIC0 = "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile="


@pytest.fixture(scope="module")
def image():
    return guest_image()


def wait_for_lease(guest: Guest, interface: str, since: float) -> str:
    try:
        found = guest.console.wait_for(
            re.compile(rb"QNET-GUEST: lease " + interface.encode() + rb" ([0-9./]+) "),
            LEASE_TIMEOUT)
    except TimeoutError as error:
        pytest.fail(f"{error}\nQEMU log: {guest.qemu_log()}")
    print(f"\n{guest.machine}: {interface} lease {found.group(1).decode()} "
          f"{time.monotonic() - since:.2f} s after "
          f"{'QEMU start' if since == guest.started else 'hot-plug'}")
    return found.group(1).decode()


def test_guest_gets_slirp_lease_and_runs_shell_commands(image):
    with booted_guest(image, netdevs=["user,id=n0"], devices=[NIC0]) as guest:
        assert wait_for_lease(guest, "eth0", guest.started) == "10.0.2.15/24"
        console = guest.console

        status, output = console.run("ip -4 addr show eth0", timeout=20)
        assert status == 0 and "inet 10.0.2.15/24" in output

        status, output = console.run("ping -c 1 -W 5 10.0.2.2", timeout=20)
        assert status == 0, output
        assert "1 packets received" in output

        # Output is exactly what the command printed: no echoed command line, no CR.
        assert console.run("echo hello; echo to-stderr >&2", timeout=10) == (0, "hello\nto-stderr\n")
        assert console.run("echo partial; exit 7", timeout=10) == (7, "partial\n")
        assert console.run("false", timeout=10)[0] == 1
        status, output = console.run("if then", timeout=10)
        assert status == 2 and "syntax error" in output
        assert console.run("cat", timeout=10) == (0, "")  # stdin is /dev/null, not the console

        status, output = console.run("ip route; cat /etc/resolv.conf", timeout=10)
        assert re.search(r"default via 10\.0\.2\.2 dev eth0 +metric \d+", output), output
        assert "nameserver 10.0.2.3" in output

        with pytest.raises(TimeoutError):
            console.run("sleep 30", timeout=1.5)
        # After a timeout the command was interrupted and the shell still answers.
        assert console.run("echo alive", timeout=10) == (0, "alive\n")


async def _qmp(path, commands):
    client = QMPClient("qnet-test")
    await asyncio.wait_for(client.connect(str(path)), 10)
    try:
        for name, arguments in commands:
            await asyncio.wait_for(client.execute(name, arguments), 10)
    finally:
        await client.disconnect()


@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_hot_plugged_nic_gets_lease_and_unplugged_nic_is_reported(image, machine):
    with booted_guest(image, machine=machine, netdevs=["user,id=n0"], devices=[NIC0],
                      hotplug_slots=1) as guest:
        wait_for_lease(guest, "eth0", guest.started)
        nic = {"driver": "virtio-net-pci", "id": "nic1", "netdev": "n1",
               "mac": "52:54:00:12:34:99", "romfile": ""}
        bus = hotplug_bus(machine, 1)
        if bus is not None:
            nic["bus"] = bus
        plugged = time.monotonic()
        asyncio.run(_qmp(guest.qmp_path, [
            ("netdev_add", {"type": "user", "id": "n1", "net": "10.0.3.0/24"}),
            ("device_add", nic),
        ]))
        assert wait_for_lease(guest, "eth1", plugged) == "10.0.3.15/24"

        status, output = guest.console.run("ip -4 addr show eth1; ip route", timeout=20)
        assert status == 0 and "inet 10.0.3.15/24" in output
        # Each interface has its own default route, told apart by metric.
        assert len(re.findall(r"^default via .* metric \d+", output, re.M)) == 2, output
        status, output = guest.console.run("ping -c 1 -W 5 -I eth1 10.0.3.2", timeout=20)
        assert status == 0, output

        asyncio.run(_qmp(guest.qmp_path, [("device_del", {"id": "nic1"})]))
        guest.console.wait_for(b"QNET-GUEST: link eth1 gone", 20)
        status, output = guest.console.run("ip link show eth1", timeout=10)
        assert status != 0
