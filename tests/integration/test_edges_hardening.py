"""Edges found by hostile input (issue 7), each reproduced against the running components.

One default graph (netstack, dhcpd, launcher) serves the whole module; tests that change it
use port names of their own and remove what they add.
"""
import json
import subprocess
import os
import time

import msgpack
import pytest
import zmq

from .conftest import default_graph_up, run_qnet, wait_until

DEEP = b"\x91" * 100_000 + b"\xc0"   # [[[[...nil...]]]] 100,000 levels


@pytest.fixture(scope="module")
def run():
    with default_graph_up("qh") as run:
        yield run


def _status(run) -> dict:
    res = run_qnet(run, "status", "--json")
    assert res.returncode == 0, res.stderr
    return {r["name"]: r for r in json.loads(res.stdout)["components"]}


def _raw_call(run, endpoint: str, parts: list[bytes], timeout: float = 3.0) -> tuple[list, dict]:
    """Send raw parts to RUN/ENDPOINT; the (header, body) of the answer, decoded."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(f"ipc://{run}/{endpoint}")
        s.send_multipart(parts)
        assert s.poll(timeout * 1000), f"{endpoint}: no answer within {timeout} s"
        hdr, body = s.recv_multipart()
        return msgpack.unpackb(hdr), msgpack.unpackb(body)
    finally:
        s.close(0)


# -- 6: deeply nested MessagePack gets the typed bad_message answer ----------------------------
@pytest.mark.parametrize("endpoint,proto,method", [("netstack.rpc", "qnet.netstack", "port_list"),
                                                    ("dhcpd.rpc", "qnet.dhcpd", "leases")])
def test_deeply_nested_header_and_body_get_a_bad_message_reply(run, endpoint, proto, method):
    pid = _status(run)[endpoint.split(".")[0]]["pid"]
    hdr, body = _raw_call(run, endpoint, [DEEP, msgpack.packb({})])
    assert hdr[0] == 3 and body["code"] == "bad_message", (hdr, body)
    good_header = msgpack.packb([1, 77, proto, "1.0", method])
    hdr, body = _raw_call(run, endpoint, [good_header, b"\x81\xa1x" + DEEP])
    assert hdr == [3, 77] and body["code"] in ("bad_message", "invalid_argument"), (hdr, body)
    # and the component is the same process, still answering
    hdr, _ = _raw_call(run, endpoint, [good_header, msgpack.packb({})])
    assert hdr == [2, 77]
    assert _status(run)[endpoint.split(".")[0]]["pid"] == pid


def _ports(run) -> list[str]:
    res = run_qnet(run, "port", "list", "--json")
    assert res.returncode == 0, res.stderr
    return [p["name"] for p in json.loads(res.stdout)]


def _config_ports(run) -> set[str]:
    with open(os.path.join(run, "config.json")) as f:
        return set(json.load(f)["ports"])


def _dgram_port(run, name: str, *extra: str) -> subprocess.CompletedProcess:
    return run_qnet(run, "port", "add", name, "--dgram", os.path.join(run, f"{name}.ours"),
                    "--peer", os.path.join(run, f"{name}.peer"), *extra)


# -- 7: a failed `qnet port add` changes nothing ---------------------------------------------
def test_port_add_with_an_address_another_port_holds_leaves_nothing_behind(run):
    res = _dgram_port(run, "hq1", "--addr", "10.61.7.1/24")
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        res = _dgram_port(run, "hq9", "--addr", "10.61.7.1/24")
        assert res.returncode != 0, res.stdout
        assert "hq9" not in _ports(run)
        assert "hq9" not in _config_ports(run)
        assert not any("hq9" in name for name in _status(run)), "a driver was left for the failed port"
        assert not any("hq9" in f and not f.endswith((".ours", ".peer")) for f in os.listdir(run))
        # nothing for `port del` to find, and nothing comes back with a netstack restart
        assert run_qnet(run, "port", "del", "hq9").returncode != 0
        res = run_qnet(run, "restart", "netstack")
        assert res.returncode == 0, res.stderr
        assert "hq9" not in _ports(run) and "hq1" in _ports(run)
        # the name is free: the same add with a free address now works
        res = _dgram_port(run, "hq9", "--addr", "10.61.9.1/24")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "hq9" in _ports(run)
    finally:
        run_qnet(run, "port", "del", "hq9")
        run_qnet(run, "port", "del", "hq1")


def test_port_add_of_a_dhcp_server_without_an_address_leaves_nothing_behind(run):
    res = _dgram_port(run, "hq8", "--dhcp-server")
    assert res.returncode != 0, res.stdout
    assert "hq8" not in _ports(run) and "hq8" not in _config_ports(run)
    assert not any("hq8" in name for name in _status(run))


# -- 8: CLI and manifest edges -------------------------------------------------------------
@pytest.mark.parametrize("argv", [["ping", "-i", "nan", "127.0.0.1"], ["ping", "-W", "inf", "127.0.0.1"],
                                  ["ping", "-W", "1e308", "127.0.0.1"], ["ping", "-i", "-1", "127.0.0.1"],
                                  ["ping", "-c", "0", "127.0.0.1"], ["capture", "lo", "-w", "/tmp/x.pcap", "-d", "-3"],
                                  ["capture", "lo", "-w", "/tmp/x.pcap", "-d", "nan"]])
def test_out_of_range_numbers_are_refused_with_one_line_and_exit_2(run, argv):
    res = run_qnet(run, *argv)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("qnet"), res.stderr


# -- 5: peer-supplied strings never reach the terminal raw ------------------------------------
def test_a_guest_hostname_with_control_bytes_is_stored_checked_and_printed_escaped(run):
    import socket
    from scapy.all import BOOTP, DHCP, IP, UDP, Ether
    name = "hq5"
    ours, peer = os.path.join(run, f"{name}.ours"), os.path.join(run, f"{name}.peer")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(peer)
    res = _dgram_port(run, name, "--addr", "10.62.5.1/24", "--dhcp-server")
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        mac = "52:54:00:aa:bb:05"
        evil = b"vm\nFORGED  10.0.0.9  line\x1b[2J\x1b]0;title\x07\x00end"
        frame = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                      / UDP(sport=68, dport=67)
                      / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=0x5E5E)
                      / DHCP(options=[("message-type", "discover"), ("hostname", evil), "end"]))

        def leased():
            s.sendto(frame, ours)
            out = run_qnet(run, "dhcp", "leases", "--json")
            return out.returncode == 0 and any(l.get("mac") == mac for l in json.loads(out.stdout)["leases"])
        wait_until(leased, 15, "a lease offered to the guest", interval=0.5)
        rows = [l for l in json.loads(run_qnet(run, "dhcp", "leases", "--json").stdout)["leases"]
                if l.get("mac") == mac]
        stored = rows[0]["hostname"]
        assert stored.isprintable() and stored.isascii(), repr(stored)
        assert stored.startswith("vm\\x0aFORGED") and "\\x1b[2J" in stored, repr(stored)
        text = run_qnet(run, "dhcp", "leases").stdout
        assert not any(c in text for c in "\x1b\x07\x00"), repr(text)
        assert "FORGED" in text and not any(line.startswith("FORGED") for line in text.splitlines())
    finally:
        s.close()
        run_qnet(run, "port", "del", name)


# -- 4: log lines caused by the network are bounded ----------------------------------------
def _conflict_lines(run) -> tuple[list[str], list[str]]:
    def lines(fname):
        try:
            with open(os.path.join(run, "logs", fname), encoding="utf-8", errors="replace") as f:
                return [l for l in f if "address conflict" in l]
        except FileNotFoundError:
            return []
    return lines("netstack.log"), lines("netstack.jsonl")


def test_a_flood_of_conflicting_arp_frames_writes_a_bounded_count_of_log_lines(run):
    import random
    import socket
    from scapy.all import ARP, Ether
    name, addr = "hq4", "10.63.4.1"
    ours, peer = os.path.join(run, f"{name}.ours"), os.path.join(run, f"{name}.peer")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(peer)
    res = _dgram_port(run, name, "--addr", f"{addr}/24")
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        before_text, before_json = _conflict_lines(run)

        def conflicts():
            res = run_qnet(run, "stats", "--json")
            return json.loads(res.stdout)["stack"].get("arp", {}).get("conflicts", 0) \
                if res.returncode == 0 else 0

        def flood(n):
            for _ in range(n):
                mac = "52:54:01:%02x:%02x:%02x" % tuple(random.randrange(256) for _ in range(3))
                frame = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
                              / ARP(op=2, hwsrc=mac, psrc=addr, hwdst="ff:ff:ff:ff:ff:ff", pdst=addr))
                s.sendto(frame, ours)
        before = conflicts()
        flood(3000)
        counted = wait_until(lambda: (lambda c: c if c >= 2000 else 0)(conflicts() - before), 20,
                             "netstack counted the conflicting frames")
        text, js = _conflict_lines(run)
        # a burst (runtime.LOG_BURST = 10 per 10 s window) and nothing like one line per frame
        assert len(text) - len(before_text) <= 12, f"{len(text)} lines for {counted} conflicts"
        assert len(js) - len(before_json) <= 12, f"{len(js)} lines for {counted} conflicts"
        # after the window, the next line says how many were suppressed
        time.sleep(10.5)
        flood(1)
        wait_until(lambda: any("similar suppressed" in l for l in _conflict_lines(run)[1][len(js):]), 10,
                   "a line counting the suppressed ones")
    finally:
        s.close()
        run_qnet(run, "port", "del", name)


def test_a_manifest_that_is_not_utf8_is_a_file_error(tmp_path):
    path = tmp_path / "g.toml"
    path.write_bytes(b'[graph]\nname = "caf\xe9"\n[components.x]\nmodule = "m"\n')
    res = run_qnet(str(tmp_path / "r"), "up", "-f", str(path), "--detach")
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "UTF-8" in res.stderr and "internal error" not in res.stderr, res.stderr


def test_a_manifest_with_thousands_of_components_is_refused_with_its_bound(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("".join(f'[components.c{i}]\nmodule = "tests.components.counter"\n' for i in range(3000)))
    try:
        res = run_qnet(str(tmp_path / "r"), "up", "-f", str(path), "--detach", "--timeout", "20")
    finally:
        run_qnet(str(tmp_path / "r"), "down", "--timeout", "5")
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "at most 64" in res.stderr, res.stderr
    assert not any(f.endswith((".rpc", ".data", ".pub", ".dgram", ".ctl"))
                   for f in os.listdir(tmp_path / "r")) if (tmp_path / "r").exists() else True


def test_down_of_a_launcher_that_will_not_stop_leaves_no_socket_files(tmp_path):
    import signal
    import stat
    run = str(tmp_path / "r")
    res = run_qnet(run, "up", "--detach", "--timeout", "40")
    assert res.returncode == 0, res.stderr
    with open(os.path.join(run, "launcher.pid")) as f:
        pid = int(f.read())
    os.kill(pid, signal.SIGSTOP)   # a launcher that cannot answer `down`
    try:
        res = run_qnet(run, "down", "--timeout", "2")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    left = [f for f in os.listdir(run)
            if stat.S_ISSOCK(os.lstat(os.path.join(run, f)).st_mode) or os.path.islink(os.path.join(run, f))]
    assert left == [], left


# -- 9: one accounting convention: drops from every loss counter, tables, internal errors ---------
def test_status_tables_and_drops_follow_one_convention(run):
    def details():
        return {n: r.get("details") or {} for n, r in _status(run).items()}
    d = wait_until(lambda: (lambda x: x if all("tables" in x[n] for n in ("netstack", "dhcpd")) else None)(details()),
                   5, "a heartbeat with tables")
    for name in ("netstack", "dhcpd"):
        assert isinstance(d[name]["drops"], int) and isinstance(d[name]["internal_errors"], int)
        for tname, t in d[name]["tables"].items():
            assert set(t) == {"size", "limit", "drops"}, (name, tname, t)
    for want in ("neighbors", "reassembly", "udp_sockets", "routes", "icmp_error_rate"):
        assert want in d["netstack"]["tables"], sorted(d["netstack"]["tables"])
    res = run_qnet(run, "status", "--tables")
    assert res.returncode == 0 and "neighbors" in res.stdout and "LIMIT" in res.stdout, res.stdout + res.stderr


def test_a_loss_that_is_not_named_drop_is_counted_in_drops(run):
    # a datagram-channel message that is not a batch is counted as rx_bad, not "drop": it is a loss
    before = (_status(run)["netstack"].get("details") or {}).get("drops", 0)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.connect(f"ipc://{run}/netstack.dgram")
    for _ in range(5):
        s.send_multipart([b"B", b"\xc1", b"", b""])
    s.close(linger=2000)   # delivered before the socket goes
    wait_until(lambda: (_status(run)["netstack"].get("details") or {}).get("drops", 0) >= before + 5, 10,
               "netstack's DROPS counting the refused batches")
