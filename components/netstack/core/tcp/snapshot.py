"""A Connection's whole TCB as plain msgpack types, and back (a netstack hand-over).

`take(conn)` returns a dict of str/int/float/bool/bytes/None/list/dict only. `restore(cls, d,
clock_shift)` rebuilds an identical Connection. Deadlines and send times are absolute in the
old process's monotonic clock: every one of them is moved by `clock_shift` (the successor
passes new_now - old_now), and so is the timestamp clock's offset, so TSvals keep
increasing across the hand-over (RFC 7323 §5.4: a timestamp clock must be monotonic).

Every field is checked on restore; anything malformed raises ValueError and nothing else.
The fields are tables (name -> kind) so that adding a TCB variable is adding one line here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from typing import Any, Callable

FORMAT = 1
_U32 = (1 << 32) - 1

# kinds: "seq" a 32-bit sequence number, "u" an int >= 0, "i" any int, "bool", "f" a finite
# float, "t" an absolute time (shifted), "b" bytes; a trailing "?" allows None.
TCB_FIELDS: dict[str, str] = {
    "passive": "bool",
    "iss": "seq?", "irs": "seq?",
    "snd_una": "seq", "snd_nxt": "seq", "snd_max": "seq",
    "snd_wnd": "u", "max_snd_wnd": "u", "snd_wl1": "seq", "snd_wl2": "seq",
    "rcv_nxt": "seq", "rcv_adv": "seq",
    "send_mss": "u",
    "snd_buf_seq": "seq", "fin_queued": "bool",
    "ooo_bytes": "u",
    "rtx_deadline": "t?", "time_wait_deadline": "t?",
    "retries": "u", "rtt_seq": "seq?", "rtt_time": "t",
    "syn_sent": "bool", "syn_retransmitted": "bool",
    "cwnd": "u", "ssthresh": "u",
    "_ack_pending": "bool", "_writable_wanted": "bool",
    "_now": "t",
    # RFC 7323
    "ws_ok": "bool", "ts_ok": "bool", "snd_wscale": "u", "rcv_wscale": "u",
    "ts_recent": "seq", "ts_recent_time": "t", "last_ack_sent": "seq", "ts_offset": "seq",
    # buffer auto-tuning
    "rcvbuf_limit": "u", "sndbuf_limit": "u", "rcv_space": "u", "rcv_space_copied": "u",
    "rcv_space_time": "t", "rcv_rtt": "f?",
    # delayed ACKs, Nagle
    "delack_deadline": "t?", "quickack": "u", "rcv_mss": "u", "nodelay": "bool",
    # loss recovery and congestion (the algorithm's own state is under "congestion")
    "sack_ok": "bool", "recovery": "u", "recover": "seq", "high_rxt": "seq", "dupacks": "u",
    "reno_sacked": "u", "_force_rtx": "bool", "rto_backoff": "u",
    # the persist timer
    "persist_deadline": "t?", "persist_backoff": "u", "probes_out": "u",
    # keepalive, orphans
    "keepalive": "bool", "keepalive_idle": "f", "keepalive_interval": "f",
    "keepalive_count": "u", "orphaned": "bool", "last_heard": "t", "keepalive_deadline": "t?",
    "keepalive_probes": "u", "_keepalive_sent": "t", "fin_wait_2_deadline": "t?",
    "delivery_rate": "f", "_rate_time": "t", "_rate_bytes": "u",
}
RTO_FIELDS: dict[str, str] = {"srtt": "f?", "rttvar": "f?", "rto": "f", "samples": "u"}


def _check(kind: str, v: Any, name: str, shift: float) -> Any:
    if kind.endswith("?"):
        if v is None:
            return None
        kind = kind[:-1]
    if kind == "bool":
        if isinstance(v, bool):
            return v
    elif kind in ("seq", "u", "i"):
        if isinstance(v, int) and not isinstance(v, bool):
            if kind == "i" or (kind == "u" and v >= 0) or (kind == "seq" and 0 <= v <= _U32):
                return v
    elif kind in ("f", "t"):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v) + (shift if kind == "t" else 0.0)
    elif kind == "b":
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
    raise ValueError(f"tcp snapshot: {name}={v!r} is not a {kind}")


def _get(d: dict, key: str) -> Any:
    if key not in d:
        raise ValueError(f"tcp snapshot: {key} missing")
    return d[key]


def _dict(v: Any, name: str) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"tcp snapshot: {name} is not a map")
    return v


def _list(v: Any, name: str) -> list:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"tcp snapshot: {name} is not a list")
    return list(v)


def take(c) -> dict:
    return {
        "format": FORMAT,
        "local": [str(c.local_ip), c.local_port],
        "remote": [str(c.remote_ip), c.remote_port],
        "isn_key": bytes(c.isn_key),
        "config": dataclasses.asdict(c.cfg),
        "state": c.state.name,
        "tcb": {k: getattr(c, k) for k in TCB_FIELDS},
        "rto": {k: getattr(c.rto, k) for k in RTO_FIELDS},
        "sndbuf": bytes(c.sndbuf),
        "rcvbuf": bytes(c.rcvbuf),
        "ooo": [[s, bytes(data), fin] for s, (data, fin) in c.ooo.items()],
        "stats": dict(c.stats),
        "events": [e.name for e in c._events],
        "out": [[getattr(o, f.name) if f.name != "payload" else bytes(o.payload)
                 for f in dataclasses.fields(o)] for o in c._out],
        **c._snapshot_extra(),
    }


def restore(cls, d: Any, clock_shift: float, *, isn_key: bytes | None = None,
            config=None):
    """The Connection `take` described; ValueError if `d` is not a good snapshot."""
    try:
        return _restore(cls, d, clock_shift, isn_key, config)
    except ValueError:
        raise
    except Exception as e:      # a malformed snapshot must surface as one error type
        raise ValueError(f"tcp snapshot: malformed ({type(e).__name__}: {e})") from None


def _restore(cls, d: Any, clock_shift: float, isn_key: bytes | None, config):
    from .conn import TcpConfig, TcpEvent
    from .segment import OutSegment
    from .state import State

    d = _dict(d, "snapshot")
    if d.get("format") != FORMAT:
        raise ValueError(f"tcp snapshot: format {d.get('format')!r}, expected {FORMAT}")
    if not (isinstance(clock_shift, (int, float)) and math.isfinite(clock_shift)):
        raise ValueError(f"tcp snapshot: clock_shift {clock_shift!r}")
    ends = []
    for side in ("local", "remote"):
        ip, port = _list(_get(d, side), side)
        if not isinstance(ip, str) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ValueError(f"tcp snapshot: {side} {ip!r}:{port!r}")
        ends.append((ipaddress.ip_address(ip), port))
    (lip, lport), (rip, rport) = ends
    if lip.version != rip.version:
        raise ValueError("tcp snapshot: local and remote addresses of different versions")
    key = _check("b", _get(d, "isn_key"), "isn_key", 0) if isn_key is None else isn_key
    if not 16 <= len(key) <= 64:
        raise ValueError(f"tcp snapshot: ISN key of {len(key)} bytes")
    if config is None:
        raw = _dict(_get(d, "config"), "config")
        names = {f.name: f for f in dataclasses.fields(TcpConfig)}
        unknown = set(raw) - set(names)
        if unknown:
            raise ValueError(f"tcp snapshot: unknown config fields {sorted(unknown)}")
        config = TcpConfig(**raw)
        for f in dataclasses.fields(config):
            default = getattr(TcpConfig, f.name, None)
            v = getattr(config, f.name)
            if default is not None and type(v) is not type(default) and not (
                    isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool)):
                raise ValueError(f"tcp snapshot: config {f.name}={v!r}")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (
                    0 <= v < 1 << 40 and math.isfinite(v)):
                raise ValueError(f"tcp snapshot: config {f.name}={v!r}")
    c = cls(lip, lport, rip, rport, isn_key=key, config=config)

    state = _get(d, "state")
    if not isinstance(state, str) or state not in State.__members__:
        raise ValueError(f"tcp snapshot: state {state!r}")
    c.state = State[state]
    tcb = _dict(_get(d, "tcb"), "tcb")
    for k, kind in TCB_FIELDS.items():
        setattr(c, k, _check(kind, _get(tcb, k), k, clock_shift))
    rto = _dict(_get(d, "rto"), "rto")
    for k, kind in RTO_FIELDS.items():
        setattr(c.rto, k, _check(kind, _get(rto, k), "rto." + k, 0))
    if (c.rto.srtt is None) != (c.rto.rttvar is None) or c.rto.rto <= 0:
        raise ValueError("tcp snapshot: inconsistent RTO estimator")

    c.sndbuf = bytearray(_check("b", _get(d, "sndbuf"), "sndbuf", 0))
    c.rcvbuf = bytearray(_check("b", _get(d, "rcvbuf"), "rcvbuf", 0))
    c.ooo = {}
    for item in _list(_get(d, "ooo"), "ooo"):
        s, data, fin = _list(item, "ooo entry")
        c.ooo[_check("seq", s, "ooo seq", 0)] = (_check("b", data, "ooo data", 0),
                                                 _check("bool", fin, "ooo fin", 0))
    if sum(len(v[0]) for v in c.ooo.values()) != c.ooo_bytes:
        raise ValueError("tcp snapshot: ooo_bytes does not match the queue")
    stats = _dict(_get(d, "stats"), "stats")
    for k, v in stats.items():
        if not isinstance(k, str):
            raise ValueError(f"tcp snapshot: counter name {k!r}")
        c.stats[k] = _check("i", v, "stats." + k, 0)
    events = _list(_get(d, "events"), "events")
    for e in events:
        if not isinstance(e, str) or e not in TcpEvent.__members__:
            raise ValueError(f"tcp snapshot: event {e!r}")
    c._events = [TcpEvent[e] for e in events]
    out_fields = dataclasses.fields(OutSegment)
    c._out = []
    for o in _list(_get(d, "out"), "out"):
        vals = _list(o, "out segment")
        if len(vals) != len(out_fields):
            raise ValueError("tcp snapshot: out segment of the wrong shape")
        c._out.append(_out_segment(OutSegment, out_fields, vals))
    c._restore_extra(d, clock_shift, _check)
    c._check_invariants()
    return c


def _out_segment(OutSegment, fields, vals) -> Any:
    kw = {}
    for f, v in zip(fields, vals):
        if isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        kw[f.name] = v
    seg = OutSegment(**kw)
    for name in ("src_port", "dst_port", "seq", "ack", "flags", "window"):
        _check("u", getattr(seg, name), "out." + name, 0)
    if not isinstance(seg.payload, bytes):
        raise ValueError("tcp snapshot: out payload is not bytes")
    return seg


Checker = Callable[[str, Any, str, float], Any]
