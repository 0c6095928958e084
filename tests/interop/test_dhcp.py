"""qnet's dhcpd against DHCP implementations no one here wrote, each in a network namespace on the
far side of a TAP port of one running qnet graph:

- ISC dhclient and busybox udhcpc get leases from our server (10.99.X.1/24, pool .10-.250);
- malformed datagrams (scapy-built) are counted and dropped while the server keeps serving;
- a two-address pool runs out: the third client (a macvlan of the same TAP) hears nothing;
- our client gets, renews and (across `qnet restart dhcpd`) keeps a lease from dnsmasq.

Each test adds its own port on its own random 10.99.X.0/24 and removes it, its namespaces and its
peer processes in a finalizer. The test that restarts dhcpd is last."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.interop.dhcp_util import (BUSYBOX, DHCLIENT, DNSMASQ, DhcpLab, dhcp_frame, dnsmasq_events,
                                     lease_rows, malformed_dhcp_payloads, missing_peer, send_frames,
                                     well_formed_discover)
from tests.interop.util import (QnetGraph, capture_in_background, missing_prerequisite, stop_process, tshark_fields,
                                wait_for)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module", params=["socketpair", "zmq"])
def dhcp_graph(request):
    """dhcpd's datagrams ride both data transports: launcher-held socketpairs and ZeroMQ."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    g = QnetGraph.start(data_transport=request.param)
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def subnets() -> list[int]:
    return random.sample(range(1, 255), 6)


@pytest.fixture
def lab(dhcp_graph, tmp_path):
    lab = DhcpLab(dhcp_graph, str(tmp_path))
    try:
        yield lab
    finally:
        lab.cleanup()


def _need(*binaries: str) -> None:
    reason = missing_peer(*binaries)
    if reason is not None:
        pytest.skip(reason)


def _dhcpd_row(lab: DhcpLab) -> dict:
    return lab.g.components()["dhcpd"]


def _ns_ping(n, dst: str) -> str:
    return n.sh(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", dst], check=False).stdout


def _inform_frame(rng: random.Random) -> bytes:
    """A well-formed DHCPINFORM (scapy) from a fresh chaddr: dhcpd answers it at once (no probe)
    and it touches no lease (RFC 2131 §4.3.5), so a test can send it without changing the pool."""
    from scapy.layers.dhcp import BOOTP, DHCP
    mac = bytes([0x02, 0x96]) + rng.randbytes(4)
    pkt = BOOTP(op=1, xid=rng.getrandbits(32), chaddr=mac + bytes(10), flags=0x8000) / \
        DHCP(options=[("message-type", "inform"), "end"])
    return dhcp_frame(bytes(pkt), ":".join(f"{b:02x}" for b in mac))


def _answered_sentinel(lab: DhcpLab, n, port: str, rng: random.Random) -> dict:
    """Send a DHCPINFORM into `port` after whatever was sent before it and wait (bounded) until
    dhcpd has answered it; returns the server's counters from then on.

    Frames from the namespace take one ordered path (TAP, driver, netstack, dhcpd's datagram
    channel), so once the sentinel is answered, everything sent before it has been handled or
    dropped: a check that something did not happen can follow at once instead of after a sleep."""
    answered = lab.server_counters(port).get("tx_ack_inform", 0)
    assert send_frames(n, [_inform_frame(rng)]) == 1
    return wait_for(lambda: (c := lab.server_counters(port)).get("tx_ack_inform", 0) > answered and c,
                    5.0, 0.05, f"dhcpd on {port} to answer the sentinel DHCPINFORM")


# -- 1: ISC dhclient --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_isc_dhclient_gets_a_lease_pings_us_and_its_release_frees_the_lease(lab, subnets):
    _need(DHCLIENT)
    x = subnets[0]
    n = lab.guest_port("g1", x)
    addr, us = f"10.99.{x}.10", f"10.99.{x}.1"

    r = lab.dhclient(n)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"DHCPACK of {addr} from {us}" in out, out
    assert n.ipv4() == [f"{addr}/24"]

    rows = lease_rows(lab.leases(), "g1")
    assert len(rows) == 1, rows
    assert rows[0]["mac"] == n.mac() and rows[0]["address"] == addr and rows[0]["state"] == "bound", rows
    assert 3500 <= rows[0]["expires_in"] <= 3600, rows

    assert " 0% packet loss" in _ns_ping(n, us)

    rel = lab.dhclient_release(n)
    assert f"DHCPRELEASE of {addr} on {n.iface} to {us}" in rel.stdout + rel.stderr, rel.stdout + rel.stderr
    # RFC 2131 §4.3.4: the server marks the address as not allocated.
    wait_for(lambda: not lease_rows(lab.leases(), "g1"), 5.0, 0.1, "the released lease to disappear")
    assert lab.server_counters("g1").get("released") == 1
    assert n.ipv4() == []


# -- 2: busybox udhcpc ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_busybox_udhcpc_gets_a_lease_with_router_and_mask_and_its_hostname_is_recorded(lab, subnets):
    _need(BUSYBOX)
    x = subnets[1]
    n = lab.guest_port("g2", x)
    addr, us = f"10.99.{x}.10", f"10.99.{x}.1"

    r = lab.udhcpc(n, "-x", "hostname:bbguest")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"lease of {addr} obtained from {us}, lease time 3600" in r.stdout + r.stderr, r.stdout + r.stderr
    # What udhcpc handed its script: the options it parsed out of our ACK.
    assert f"udhcpc-script bound ip={addr} subnet=255.255.255.0 router={us} serverid={us} lease=3600" \
        in r.stdout, r.stdout
    assert n.ipv4() == [f"{addr}/24"]
    assert " 0% packet loss" in _ns_ping(n, us)

    rows = lease_rows(lab.leases(), "g2")
    assert [(l["mac"], l["address"], l["state"], l["hostname"]) for l in rows] == \
        [(n.mac(), addr, "bound", "bbguest")], rows


# -- 4: malformed datagrams -----------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_malformed_datagrams_are_counted_and_dropped_and_the_server_keeps_serving(lab, subnets):
    _need(DHCLIENT)
    x = subnets[2]
    n = lab.guest_port("g4", x)
    row = _dhcpd_row(lab)
    pid, restarts = row["pid"], row["restarts"]
    before = lab.server_counters("g4")

    junk = malformed_dhcp_payloads(seed=x)
    rng = random.Random(x)
    frames = [dhcp_frame(p, "02:98:" + ":".join(f"{b:02x}" for b in rng.randbytes(4))) for _, p in junk]
    assert send_frames(n, frames) == len(junk)
    want = before.get("malformed", 0) + len(junk)
    # The sentinel is handled after every malformed datagram: each counted once, none answered.
    after = _answered_sentinel(lab, n, "g4", rng)
    assert after.get("malformed", 0) == want, after
    # the sentinel is the one datagram taken for a request
    assert after.get("received", 0) == before.get("received", 0) + 1, after
    assert after.get("tx_offer", 0) == before.get("tx_offer", 0), after

    # Absurd lengths below DHCP: a UDP length past the datagram, shorter than its header, an IP total
    # length past the frame. None may reach dhcpd as a request.
    good = junk[0][1]  # any payload: the lengths are what is wrong
    discover, _ = well_formed_discover(random.Random(x + 1))
    absurd = [dhcp_frame(discover, "02:97:00:00:00:01", udp_len=60000),
              dhcp_frame(discover, "02:97:00:00:00:02", udp_len=3),
              dhcp_frame(discover, "02:97:00:00:00:03", ip_len=9000),
              dhcp_frame(discover, "02:97:00:00:00:04", ip_len=10),
              dhcp_frame(good, "02:97:00:00:00:05", udp_len=65535)]
    assert send_frames(n, absurd) == len(absurd)
    late = _answered_sentinel(lab, n, "g4", rng)  # through netstack after the absurd frames
    assert late.get("received", 0) == before.get("received", 0) + 2, late  # the two sentinels only
    assert late.get("tx_offer", 0) == before.get("tx_offer", 0), late
    assert late.get("malformed", 0) == want, late

    r = lab.dhclient(n)
    assert r.returncode == 0 and f"DHCPACK of 10.99.{x}.10" in r.stderr + r.stdout, r.stdout + r.stderr
    row = _dhcpd_row(lab)
    assert (row["pid"], row["restarts"], row["state"]) == (pid, restarts, "running"), row
    os.kill(pid, 0)  # still the same process


# -- 5: pool exhaustion ------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_a_two_address_pool_serves_two_clients_and_the_third_hears_nothing(lab, subnets):
    _need(BUSYBOX)
    x = subnets[3]
    g = lab.guest_port("g5", x)
    first, second = f"10.99.{x}.10", f"10.99.{x}.11"
    lab.g.qnet("dhcp", "pool", "g5", f"{first}-{second}")
    a, b, c = (lab.macvlan_netns(g, s) for s in "abc")

    holder = lab.udhcpc_daemon(a, "-R")  # stays bound; releases when told to stop
    wait_for(a.ipv4, 10.0, 0.1, "udhcpc in namespace a to bind")
    r = lab.udhcpc(b)
    assert r.returncode == 0, r.stdout + r.stderr
    got = {a.mac(): a.ipv4(), b.mac(): b.ipv4()}
    assert sorted(v for addrs in got.values() for v in addrs) == [f"{first}/24", f"{second}/24"], got
    rows = lease_rows(lab.leases(), "g5")
    assert {(l["mac"], l["address"] + "/24") for l in rows if l["state"] == "bound"} == \
        {(mac, addrs[0]) for mac, addrs in got.items()}, rows

    before = lab.server_counters("g5")
    r = lab.udhcpc(c, tries=3)
    # RFC 2131 §4.3.1: no address to offer, no OFFER; the client gives up on its own.
    assert r.returncode != 0 and "obtained" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert c.ipv4() == []
    # udhcpc gave up on its own clock; the sentinel, sent after its last DISCOVER over the same
    # wire, shows dhcpd has handled them all before the check that none was offered an address.
    after = _answered_sentinel(lab, g, "g5", random.Random(x))
    assert after.get("rx_discover", 0) - before.get("rx_discover", 0) >= 2, (before, after)
    assert after.get("tx_offer", 0) == before.get("tx_offer", 0), (before, after)
    assert after.get("pool_exhausted", 0) > before.get("pool_exhausted", 0), after
    pools = lab.leases()["pools"]
    assert pools["g5"]["exhausted"] is True, pools
    assert "EXHAUSTED" in lab.g.qnet("dhcp", "leases").stdout

    # a stops and releases its lease (RFC 2131 §4.4.6): the pool has room again.
    stop_process(holder)
    assert "unicasting a release" in holder.stdout.read(), "udhcpc did not release"
    wait_for(lambda: len(lease_rows(lab.leases(), "g5")) == 1, 5.0, 0.1, "a's lease to be released")
    r = lab.udhcpc(c)
    assert r.returncode == 0 and c.ipv4() == got[a.mac()], r.stdout + r.stderr
    assert lab.leases()["pools"]["g5"]["exhausted"] is False


# -- 3: our client against dnsmasq (restarts dhcpd: keep last) ---------------------------------------
T1 = 4  # dnsmasq's shortest lease is 2 min; option 58 brings renewal into a test's reach


@pytest.mark.timeout(90)
def test_our_client_binds_renews_and_keeps_its_dnsmasq_lease_across_a_dhcpd_restart(lab, subnets, tmp_path):
    _need(DNSMASQ)
    x = subnets[4]
    up = lab.uplink_port("u3", x)
    peer = f"10.99.{x}.1"
    log = lab.dnsmasq(up, f"10.99.{x}.50", f"10.99.{x}.60",
                      f"--dhcp-option=option:T1,{T1}", "--dhcp-option=option:T2,100")
    lab.link_up(up, "u3")
    mac = lab.g.port_row("u3")["mac"].lower()

    def client_row():
        rows = lease_rows(lab.leases(), "u3", role="client")
        return rows[0] if rows and rows[0]["state"] == "BOUND" else None

    lease = wait_for(client_row, 10.0, 0.2, "our client to bind a lease from dnsmasq")
    pcap = str(tmp_path / "u3.pcap")
    cap = capture_in_background(lab.g, "u3", pcap, 60.0)  # stopped below, once the restart is over
    lab.procs.append(cap)
    addr = lease["address"]
    assert lease["mac"] == mac
    assert f"10.99.{x}.50" <= addr <= f"10.99.{x}.60" and len(addr) == len(f"10.99.{x}.50"), lease
    kinds = [e.kind for e in dnsmasq_events(log) if e.mac == mac]
    assert kinds[:4] == ["DHCPDISCOVER", "DHCPOFFER", "DHCPREQUEST", "DHCPACK"], kinds
    assert {"port": "u3", "address": f"{addr}/24"} in lab.g.qnet_json("addr", "list")
    default = {"prefix": "0.0.0.0/0", "gateway": peer, "device": "u3"}
    routes = lab.g.qnet_json("route", "list")
    assert any(default.items() <= r.items() for r in routes), routes
    assert " 0% packet loss" in _ns_ping(up, addr)  # the address works from dnsmasq's side

    # Renewal at T1: a REQUEST with a new xid, ACKed, and the lease runs for 2 min again.
    wait_for(lambda: sum(e.kind == "DHCPACK" for e in dnsmasq_events(log)) >= 2, T1 + 5.0, 0.05,
             "a renewal ACK from dnsmasq")
    renewed = wait_for(lambda: (r := client_row()) and r["expires_in"] >= 115 and r, 2.0, 0.05,
                       "the renewed lease in qnet dhcp leases")
    assert renewed["address"] == addr
    renew_xid = [e for e in dnsmasq_events(log) if e.kind == "DHCPREQUEST"][1].xid

    # dhcpd restart: INIT-REBOOT (REQUEST for the old address), no DISCOVER; the address stays.
    seen = len(dnsmasq_events(log))
    pid = _dhcpd_row(lab)["pid"]
    lab.g.qnet("restart", "dhcpd", timeout=30)
    lab.g.remember_pids()
    assert _dhcpd_row(lab)["pid"] != pid
    wait_for(lambda: any(e.kind == "DHCPACK" for e in dnsmasq_events(log)[seen:]), 5.0, 0.05,
             "an ACK after the restart")
    after = dnsmasq_events(log)[seen:]
    assert [e.kind for e in after][:2] == ["DHCPREQUEST", "DHCPACK"], after
    assert all(e.kind != "DHCPDISCOVER" and e.address in ("", addr) for e in after), after
    reboot_xid = after[0].xid
    assert client_row()["address"] == addr
    assert {"port": "u3", "address": f"{addr}/24"} in lab.g.qnet_json("addr", "list")
    assert any(default.items() <= r.items() for r in lab.g.qnet_json("route", "list"))

    # What went on the wire, read by tshark: renewal unicast with ciaddr (RFC 2131 §4.4.5),
    # INIT-REBOOT broadcast with 'requested IP' and ciaddr zero (§4.4.2).
    time.sleep(0.2)
    cap.send_signal(signal.SIGTERM)  # `qnet capture` stops and closes the file on SIGTERM
    cap.wait(10.0)
    rows = tshark_fields(pcap, "dhcp.id", "ip.dst", "dhcp.ip.client", "dhcp.option.requested_ip_address",
                         "dhcp.option.dhcp_server_id", display_filter="dhcp.option.dhcp == 3")
    by_xid = {int(r[0], 16): r for r in rows}
    assert renew_xid in by_xid and reboot_xid in by_xid, (renew_xid, reboot_xid, rows)
    assert by_xid[renew_xid][1:] == [peer, addr, "", ""], by_xid[renew_xid]
    assert by_xid[reboot_xid][1:] == ["255.255.255.255", "0.0.0.0", addr, ""], by_xid[reboot_xid]


# -- 6: a NAK after a dhcpd restart (found by these tests; fixed in components/dhcpd/process.py) -------
@pytest.mark.timeout(90)
def test_after_a_dhcpd_restart_a_nak_of_the_old_lease_takes_its_address_out_of_netstack(lab, subnets):
    """The successor must undo what its predecessor installed when the server refuses the old
    lease (RFC 2131 §4.4.2: on DHCPNAK the client MUST NOT use the address)."""
    _need(DNSMASQ)
    x = subnets[5]
    up = lab.uplink_port("u6", x)
    lab.dnsmasq(up, f"10.99.{x}.50", f"10.99.{x}.60")
    lab.link_up(up, "u6")

    def client_row():
        rows = lease_rows(lab.leases(), "u6", role="client")
        return rows[0] if rows and rows[0]["state"] == "BOUND" else None

    old = wait_for(client_row, 10.0, 0.2, "our client to bind a lease from dnsmasq")["address"]
    # The network changes under the uplink: a new authoritative server with another range.
    lab.stop_dnsmasq(up)
    log = lab.dnsmasq(up, f"10.99.{x}.70", f"10.99.{x}.80", "--dhcp-authoritative", tag="new")
    lab.g.qnet("restart", "dhcpd", timeout=30)
    lab.g.remember_pids()

    new = wait_for(lambda: (r := client_row()) and r["address"] != old and r, 20.0, 0.2,
                   "a new lease from the new server")["address"]
    kinds = [(e.kind, e.address) for e in dnsmasq_events(log)]
    assert kinds[:2] == [("DHCPREQUEST", old), ("DHCPNAK", old)], kinds
    assert f"10.99.{x}.70" <= new <= f"10.99.{x}.80" and len(new) == len(f"10.99.{x}.70"), new
    # dhcpd removes what the NAKed lease installed before it installs the new lease, each a call
    # netstack has answered before the next is made: once the new address is in netstack (the
    # sentinel), the old one must be gone for good.
    def u6_addrs():
        return [a["address"] for a in lab.g.qnet_json("addr", "list", "-4") if a["port"] == "u6"]
    addrs = wait_for(lambda: (a := u6_addrs()) and f"{new}/24" in a and a, 5.0, 0.1,
                     f"{new}/24 on u6 in netstack")
    assert addrs == [f"{new}/24"], addrs
    defaults = [r for r in lab.g.qnet_json("route", "list") if r["prefix"] == "0.0.0.0/0"]
    assert [(r["gateway"], r["device"]) for r in defaults] == [(f"10.99.{x}.1", "u6")], defaults
    assert lab.dhcpd_status()["apply_errors"] == 0
