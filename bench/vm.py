"""QEMU guests on qnet beside the same guest on QEMU's own networking: `python -m bench.vm`.

Kinds of guest, all booting the same image (images/out) with the same QEMU command line
(launcher.console.qemu_command: q35, TCG, 256 MB, 1 vCPU, two spare pcie-root-ports,
virtio-net without option ROM), differing only in the netdev:

  qnet-stream, qnet-dgram, qnet-tap  `qnet vm start --no-wait` on a private `qnet up`;
                                     qnet's dhcpd gives the lease, netstack answers ping
  slirp (anchor)                     `-netdev user` (libslirp), started here
  kernel (anchor)                    `-netdev tap` on a TAP in a private network namespace
                                     whose kernel side has 10.99.0.1/24; static guest address

Figures, every kind timed by the same code in the same run, kinds interleaved round by round:

  boot to lease  QEMU process start (/proc/PID/stat starttime) to the moment the guest's
                 "QNET-GUEST: lease" line is seen in its console log (polled every 10 ms)
  DHCP exchange  the guest's "deconfig eth0" line (udhcpc started) to its "lease" line
  start to lease `qnet vm start` invoked (port creation included) to the lease line;
                 anchor: slirp's Popen to its lease line
  ping RTT       `ping -c N -i 0.05 GATEWAY` in the guest over the serial console; the median
                 of the per-reply times and busybox's min/avg/max
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.common import Table, arg_parser, fmt_ratio, log, machine_info, ratio, write_json
from launcher.console import ConsoleClosed, ConsoleLogTail, SerialConsole, qemu_command, tail_text

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "images" / "out"
QEMU = "qemu-system-x86_64"
QNET_KINDS = ("qnet-stream", "qnet-dgram", "qnet-tap")
ANCHOR_KINDS = ("slirp", "kernel")
BOOT_TIMEOUT = 40.0          # QEMU start to lease (or ready); a TCG boot takes 5-8 s here
POLL = 0.01                  # console log polling interval: the resolution of boot figures
PING_INTERVAL = 0.05
KERNEL_HOST, KERNEL_GUEST = "10.99.0.1", "10.99.0.2"   # inside the private namespace only
SLIRP_GATEWAY = "10.0.2.2"
_REPLY = re.compile(r"seq=(\d+) ttl=\d+ time=([\d.]+) ms")
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) packets received")
_SUMMARY = re.compile(r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms")


def boottime() -> float:
    """CLOCK_BOOTTIME, the clock /proc/PID/stat's starttime counts on."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def qemu_processes() -> int:
    """QEMUs running on the machine (other work's too): each takes a CPU under TCG."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry.name}/comm", encoding="ascii", errors="replace") as f:
                    count += f.read().startswith("qemu-system")
    return count


def process_start(pid: int) -> float:
    """When process `pid` was forked, in CLOCK_BOOTTIME seconds (clock-tick resolution, 10 ms)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        text = f.read()
    # Field 2 (comm) may hold spaces and parentheses: count from the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


# -- one booted guest ----------------------------------------------------------------------
@dataclass
class Boot:
    """A running guest of one kind: where its console is and how to stop it."""
    kind: str
    pid: int
    console_log: str
    serial: str
    invoked: float                      # boottime just before the start command / Popen
    stop: Callable[[], None]
    events: dict[str, float] = field(default_factory=dict)   # first time each event was seen
    lease: str | None = None
    router: str | None = None
    alive: Callable[[], bool] = lambda: True
    qemu_log: str | None = None


def follow_console(boot: Boot, want: str, timeout: float) -> None:
    """Poll the console log, stamping each guest event when first seen, until `want` appears."""
    deadline = time.monotonic() + timeout
    log = ConsoleLogTail(boot.console_log)
    while True:
        events = log.events()
        now = boottime()
        for event, text in events:
            rest = text.split()
            key = f"{event} {rest[0]}" if event != "ready" and rest else event
            boot.events.setdefault(key, now)
            if event == "lease" and boot.lease is None and len(rest) >= 4:
                boot.lease, boot.router = rest[1], rest[3]
            if key == want or (want == "lease" and event == "lease"):
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{boot.kind}: no {want!r} on the guest console within {timeout:g} s"
                               f" (events: {sorted(boot.events)})")
        if not boot.alive():
            raise RuntimeError(f"{boot.kind}: QEMU exited before {want!r}: {tail_text(boot.qemu_log)}")
        time.sleep(POLL)


# -- qnet ------------------------------------------------------------------------------------
class QnetStack:
    """A private `qnet up --detach` (default graph: netstack + dhcpd), `qnet down` on close."""

    def __init__(self) -> None:
        # Short: QEMU's unix socket paths live in it (108 bytes).
        self.run_dir = tempfile.mkdtemp(prefix="qbvm-", dir="/tmp")
        self.env = dict(os.environ, QNET_RUNTIME_DIR=self.run_dir)
        self.up = False

    def qnet(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", "import sys; from launcher.cli import main; sys.exit(main())", *args]
        proc = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"qnet {' '.join(args)}: exit {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout).strip()[-400:]}")
        return proc

    def start(self) -> None:
        self.qnet("up", "--detach", timeout=90.0)
        self.up = True

    def boot(self, kind: str, name: str) -> Boot:
        backend = kind.split("-", 1)[1]
        invoked = boottime()
        info = json.loads(self.qnet("vm", "start", name, "--backend", backend, "--no-wait", "--json").stdout)
        pid = int(info["pid"])

        def alive() -> bool:
            return os.path.exists(f"/proc/{pid}")

        def stop() -> None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.qnet("vm", "stop", name, "--timeout", "3", timeout=30.0)

        return Boot(kind, pid, info["console_log"], info["serial"], invoked, stop, alive=alive,
                    qemu_log=info.get("log"))

    def close(self) -> None:
        try:
            if self.up:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.qnet("down", timeout=60.0)
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)


# -- QEMU started here: slirp and the kernel through a TAP ------------------------------------
class DirectGuests:
    """QEMUs this benchmark starts itself, and the namespace with the kernel's TAP."""

    def __init__(self) -> None:
        self.work = tempfile.mkdtemp(prefix="qbvmd-", dir="/tmp")
        self.netns = f"qbvm{os.getpid()}"
        self.tap = "qbvmk0"          # inside the private namespace: no clash with the host's
        self.netns_made = False
        self.procs: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def _ip(self, *args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def make_kernel_tap(self) -> None:
        self._ip("netns", "add", self.netns)
        self.netns_made = True
        self._ip("-n", self.netns, "link", "set", "lo", "up")
        self._ip("-n", self.netns, "tuntap", "add", "dev", self.tap, "mode", "tap")
        self._ip("-n", self.netns, "addr", "add", f"{KERNEL_HOST}/24", "dev", self.tap)
        self._ip("-n", self.netns, "link", "set", self.tap, "up")

    def boot(self, kind: str) -> Boot:
        self.count += 1
        tag = f"{kind}{self.count}"
        serial = os.path.join(self.work, f"{tag}.serial")
        console_log = os.path.join(self.work, f"{tag}.console")
        qemu_log = os.path.join(self.work, f"{tag}.log")
        if kind == "slirp":
            netdev, prefix = "user,id=n0", []
        else:
            netdev = f"tap,id=n0,ifname={self.tap},script=no,downscript=no"
            prefix = ["ip", "netns", "exec", self.netns]   # execs QEMU: same pid
        # The same NIC, machine and slots as launcher/vm.py gives a qnet guest.
        device = f"virtio-net-pci,id=nic0,netdev=n0,mac=52:54:00:b7:00:{self.count % 256:02x},romfile="
        argv = prefix + qemu_command(IMAGE / "vmlinuz", IMAGE / "initramfs.gz", serial_path=serial,
                                     netdevs=[netdev], devices=[device], mem_mb=256,
                                     qmp_path=os.path.join(self.work, f"{tag}.qmp"), machine="q35",
                                     hotplug_slots=2, serial_log=console_log, smp=1)
        invoked = boottime()
        with open(qemu_log, "wb") as out:
            # A file, not a pipe: a pipe nobody drains can keep a dead run alive.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)

        def stop() -> None:
            _kill(proc)
            self.procs.remove(proc)

        return Boot(kind, proc.pid, console_log, serial, invoked, stop,
                    alive=lambda: proc.poll() is None, qemu_log=qemu_log)

    def close(self) -> None:
        try:
            for proc in self.procs:
                _kill(proc)
            self.procs.clear()
        finally:
            if self.netns_made:
                # Deleting the namespace deletes the TAP in it.
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._ip("netns", "del", self.netns)
            shutil.rmtree(self.work, ignore_errors=True)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- ping in the guest -------------------------------------------------------------------------
def parse_ping(output: str) -> dict:
    """busybox ping's output: per-reply times, the counts and min/avg/max (ms)."""
    rtts = [float(m.group(2)) for m in _REPLY.finditer(output)]
    counts, summary = _COUNTS.search(output), _SUMMARY.search(output)
    if counts is None or summary is None or not rtts:
        raise RuntimeError(f"no ping summary in the guest's output: {output[-300:]!r}")
    sent, received = int(counts.group(1)), int(counts.group(2))
    return {"rtts_ms": rtts, "sent": sent, "received": received,
            "min_ms": float(summary.group(1)), "avg_ms": float(summary.group(2)),
            "max_ms": float(summary.group(3)), "median_ms": statistics.median(rtts)}


def guest_ping(console: SerialConsole, target: str, count: int) -> dict:
    status, output = console.run(f"ping -c {count} -i {PING_INTERVAL} {target}",
                                 timeout=count * PING_INTERVAL + 30.0)
    result = parse_ping(output)
    if status != 0 and result["received"] == 0:
        raise RuntimeError(f"ping {target} from the guest: exit {status}, nothing received")
    return result


# -- one measurement -----------------------------------------------------------------------------
def measure(boot: Boot, pings: int) -> dict:
    """Wait for the guest's lease (or boot, for the kernel TAP), then ping its gateway."""
    started = process_start(boot.pid)
    want = "ready" if boot.kind == "kernel" else "lease"
    follow_console(boot, want, BOOT_TIMEOUT)
    sample: dict = {"pid": boot.pid, "invoked_to_qemu_s": round(started - boot.invoked, 3)}
    ready = boot.events.get("ready")
    if ready is not None:
        sample["boot_to_ready_s"] = round(ready - started, 3)
    if want == "lease":
        lease_at = boot.events[next(k for k in boot.events if k.startswith("lease "))]
        sample.update(lease=boot.lease, router=boot.router,
                      boot_to_lease_s=round(lease_at - started, 3),
                      invoked_to_lease_s=round(lease_at - boot.invoked, 3))
        deconfig = boot.events.get("deconfig eth0")
        if deconfig is not None:
            sample["dhcp_s"] = round(lease_at - deconfig, 3)
    console = SerialConsole(boot.serial)
    try:
        if boot.kind == "kernel":
            # No DHCP server behind this TAP: stop udhcpc (its deconfig would flush the address).
            status, out = console.run(
                "kill $(cat /run/udhcpc.eth0.pid) 2>/dev/null; ip -4 addr flush dev eth0; "
                f"ip addr add {KERNEL_GUEST}/24 dev eth0 && ip link set eth0 up", timeout=30.0)
            if status != 0:
                raise RuntimeError(f"kernel: configuring the guest address failed: {out.strip()}")
            target = KERNEL_HOST
        else:
            target = boot.router or SLIRP_GATEWAY
        sample["ping"] = guest_ping(console, target, pings)
        sample["ping"]["target"] = target
    finally:
        console.close()
    return sample


# -- summary -------------------------------------------------------------------------------------
def _median(samples: list[dict], key: str) -> float | None:
    xs = [s[key] for s in samples if key in s]
    return round(statistics.median(xs), 3) if xs else None


def summarize(samples: list[dict]) -> dict:
    out: dict = {"runs": len(samples)}
    for key in ("boot_to_lease_s", "dhcp_s", "invoked_to_lease_s", "boot_to_ready_s", "invoked_to_qemu_s"):
        value = _median(samples, key)
        if value is not None:
            out[key] = value
            out[key.removesuffix("_s") + "_samples_s"] = [s[key] for s in samples if key in s]
    pings = [s["ping"] for s in samples if "ping" in s]
    if pings:
        rtts = [r for p in pings for r in p["rtts_ms"]]
        out["ping"] = {
            "median_ms": round(statistics.median(rtts), 3),
            "avg_ms": round(statistics.median([p["avg_ms"] for p in pings]), 3),   # median of busybox's avgs
            "min_ms": min(p["min_ms"] for p in pings),
            "max_ms": max(p["max_ms"] for p in pings),
            "sent": sum(p["sent"] for p in pings), "received": sum(p["received"] for p in pings),
            "target": pings[0]["target"],
        }
    return out


def figures(kinds: dict) -> list[dict]:
    """(figure, ours, anchor, ratio) rows: every qnet backend beside each anchor it is compared with."""
    rows = []

    def value(kind: str, path: tuple[str, ...]):
        node = kinds.get(kind, {})
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, (int, float)) else None

    # Boot to ready involves no network: it is the control that shows how much of a boot-to-lease
    # difference is the machine's load rather than the network.
    specs = [("boot to ready (control)", "s", ("boot_to_ready_s",), "slirp", ("boot_to_ready_s",)),
             ("boot to lease", "s", ("boot_to_lease_s",), "slirp", ("boot_to_lease_s",)),
             ("DHCP exchange", "s", ("dhcp_s",), "slirp", ("dhcp_s",)),
             ("vm start to lease", "s", ("invoked_to_lease_s",), "slirp", ("invoked_to_lease_s",)),
             ("ping gateway median", "ms", ("ping", "median_ms"), "slirp", ("ping", "median_ms")),
             ("ping gateway median", "ms", ("ping", "median_ms"), "kernel", ("ping", "median_ms")),
             ("ping gateway avg", "ms", ("ping", "avg_ms"), "slirp", ("ping", "avg_ms")),
             ("ping gateway avg", "ms", ("ping", "avg_ms"), "kernel", ("ping", "avg_ms"))]
    for label, unit, path, anchor_kind, anchor_path in specs:
        for kind in QNET_KINDS:
            ours, anchor = value(kind, path), value(anchor_kind, anchor_path)
            row = {"figure": f"{label}, {unit}: {kind} vs {anchor_kind}", "kind": kind, "anchor_kind": anchor_kind,
                   "unit": unit, "ours": ours, "anchor": anchor,
                   "ratio": round(ratio(ours, anchor), 3) if ours is not None and anchor is not None else None}
            if ours is None and kinds.get(kind, {}).get("error"):
                row["error"] = kinds[kind]["error"]
            if anchor is None and kinds.get(anchor_kind, {}).get("error"):
                row["anchor_error"] = kinds[anchor_kind]["error"]
            rows.append(row)
    return rows


# -- the run ---------------------------------------------------------------------------------------
def _ensure_image() -> None:
    if shutil.which(QEMU) is None:
        raise RuntimeError(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    proc = subprocess.run([str(REPO / "images" / "build")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"images/build failed: {(proc.stderr or proc.stdout).strip()[-400:]}")


def run(quick: bool = False) -> dict:
    """Boot every kind of guest `rounds` times, interleaved; return the figures (see the module doc)."""
    rounds, pings = (1, 20) if quick else (3, 50)
    _ensure_image()
    load_before, qemus_before = os.getloadavg()[0], qemu_processes()
    kinds = (*QNET_KINDS, *ANCHOR_KINDS)
    samples: dict[str, list[dict]] = {k: [] for k in kinds}
    errors: dict[str, str] = {}
    t0 = time.monotonic()
    stack, direct = QnetStack(), DirectGuests()
    try:
        try:
            stack.start()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            for k in QNET_KINDS:
                errors[k] = f"qnet up: {exc}"
        try:
            direct.make_kernel_tap()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            errors["kernel"] = f"kernel TAP: {exc}"
        tag = os.getpid() % 100000
        for r in range(rounds):
            # Rotate the order so drift in the machine's load falls on every kind alike.
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for kind in order:
                if kind in errors:
                    continue
                boot = None
                try:
                    if kind.startswith("qnet-"):
                        boot = stack.boot(kind, f"b{tag}{kind[5]}{r}")
                    else:
                        boot = direct.boot(kind)
                    sample = measure(boot, pings)
                    samples[kind].append(sample)
                    log(f"round {r + 1}/{rounds} {kind:12s} " + " ".join(
                        f"{k}={sample[k]}" for k in ("boot_to_lease_s", "dhcp_s", "boot_to_ready_s") if k in sample)
                        + f" ping median={sample['ping']['median_ms']:.3f} ms"
                        f" avg={sample['ping']['avg_ms']:.3f} ms")
                except (RuntimeError, TimeoutError, OSError, ConsoleClosed, ValueError, KeyError,
                        subprocess.TimeoutExpired) as exc:
                    # A failed kind is reported as failed, never given a figure; later rounds skip it.
                    errors[kind] = f"{type(exc).__name__}: {exc}"[:600]
                    log(f"round {r + 1}/{rounds} {kind:12s} FAILED: {errors[kind]}")
                finally:
                    if boot is not None:
                        boot.stop()
    finally:
        try:
            direct.close()
        finally:
            stack.close()
    summary = {}
    for k in kinds:
        summary[k] = summarize(samples[k]) if samples[k] else {"runs": 0}
        if k in errors:
            summary[k]["error"] = errors[k]
    return {
        "benchmark": "vm",
        "quick": quick,
        "rounds": rounds,
        "pings_per_run": pings,
        "ping_interval_s": PING_INTERVAL,
        "accel": "tcg",
        "elapsed_s": round(time.monotonic() - t0, 1),
        "machine": {**machine_info(), "loadavg_1m_before": round(load_before, 2),
                    "other_qemus_before": qemus_before, "other_qemus_after": qemu_processes()},
        "kinds": summary,
        "samples": samples,
        "figures": figures(summary),
    }


def render(result: dict) -> str:
    table = Table("figure", "ours", "anchor", "ratio")
    notes = []
    for row in result["figures"]:
        ours = "failed" if row.get("error") else ("-" if row["ours"] is None else f"{row['ours']:.3f}")
        anchor = "failed" if row.get("anchor_error") else ("-" if row["anchor"] is None else f"{row['anchor']:.3f}")
        table.add(row["figure"], ours, anchor, "-" if row["ratio"] is None else fmt_ratio(row["ratio"]))
    for kind, info in result["kinds"].items():
        if info.get("error"):
            notes.append(f"{kind} failed: {info['error']}")
    lines = [table.render(), "", "per kind (medians over runs; ping min/max over all replies):"]
    for kind, info in result["kinds"].items():
        p = info.get("ping")
        bits = [f"{kind:12s} runs={info['runs']}"]
        for key in ("boot_to_ready_s", "boot_to_lease_s", "dhcp_s"):
            if key in info:
                bits.append(f"{key.removesuffix('_s')}={info[key]:.2f}s")
        if p:
            bits.append(f"ping {p['target']} min/median/avg/max={p['min_ms']:.3f}/{p['median_ms']:.3f}/"
                        f"{p['avg_ms']:.3f}/{p['max_ms']:.3f} ms, {p['received']}/{p['sent']} replies")
        lines.append("  " + " ".join(bits))
    m = result["machine"]
    lines.append(f"\n{m['cpus']} CPUs, load {m['loadavg_1m_before']} before / {m['loadavg_1m']} after, "
                 f"{m['other_qemus_before']} / {m['other_qemus_after']} other QEMUs running; "
                 f"TCG; {result['rounds']} round(s), {result['pings_per_run']} pings per run; "
                 f"{result['elapsed_s']} s")
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser("Boot-to-lease and guest-to-gateway ping of QEMU guests on qnet, beside "
                        "QEMU's user networking (libslirp) and the Linux kernel through a TAP.",
                        prog="python -m bench.vm")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.vm: needs root (TAPs, a network namespace)", file=sys.stderr)
        return 2
    result = run(quick=args.quick)
    print(render(result))
    if args.json:
        write_json(args.json, result)
    failed = [k for k, v in result["kinds"].items() if v.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
