"""Names for qnet.socket: numeric hosts, a hosts file, then DNS queries sent through qnet's
own UDP to the servers the socket provider names (the manifest's, or an uplink lease's).

Nothing here asks the host's resolver: a name the host could resolve but qnet cannot is
gaierror, as it would be on a machine whose only network is qnet.
"""
from __future__ import annotations

import os
import secrets
import socket as _std
import struct
import time

DEFAULT_HOSTS = "/etc/hosts"
DNS_TIMEOUT = 2.0           # seconds per server and attempt
DNS_ATTEMPTS = 2
_CACHE_MAX = 256
_cache: dict[str, tuple[float, list[str]]] = {}


def _gai(code: int, text: str) -> _std.gaierror:
    return _std.gaierror(code, text)


def _numeric(host: str) -> str | None:
    try:
        return _std.inet_ntoa(_std.inet_aton(host)) if host and host.replace(".", "").isdigit() else None
    except OSError:
        return None


def hosts_path() -> str:
    """QNET_HOSTS, read at each look-up (as /etc/hosts is read at each one): a program may set it
    after importing the module."""
    return os.environ.get("QNET_HOSTS") or DEFAULT_HOSTS


def _hosts() -> list[tuple[str, list[str]]]:
    out = []
    try:
        with open(hosts_path()) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and _numeric(fields[0]):
                    out.append((fields[0], fields[1:]))
    except OSError:
        pass
    return out


def _from_hosts(name: str) -> list[str]:
    name = name.lower().rstrip(".")
    return [a for a, names in _hosts() if name in (n.lower() for n in names)]


def _resolver_config() -> dict:
    from qnet._session import session
    try:
        r, _ = session().call("resolver", {})
        return r if isinstance(r, dict) else {}
    except OSError:
        return {}


def _query(name: str, qid: int) -> bytes:
    q = b"".join(bytes([len(p)]) + p for p in name.encode("idna").split(b".") if p) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def _skip_name(msg: bytes, i: int) -> int:
    while True:
        n = msg[i]
        if n & 0xC0 == 0xC0:
            return i + 2
        if n == 0:
            return i + 1
        i += n + 1


def _answers(msg: bytes, qid: int) -> tuple[int, list[str]]:
    """(rcode, IPv4 addresses) of a DNS answer; ValueError if it is not ours or malformed."""
    if len(msg) < 12:
        raise ValueError("short")
    rid, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", msg)
    if rid != qid or not flags & 0x8000:
        raise ValueError("not our answer")
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    out = []
    for _ in range(an):
        i = _skip_name(msg, i)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, i)
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(_std.inet_ntoa(msg[i:i + 4]))
        i += rdlen
    return flags & 0xF, out


def _dns(name: str) -> list[str]:
    now = time.monotonic()
    hit = _cache.get(name)
    if hit and hit[0] > now:
        return hit[1]
    cfg = _resolver_config()
    servers = [s for s in cfg.get("nameservers", []) if _numeric(s)]
    if not servers:
        raise _gai(_std.EAI_NONAME, f"Name or service not known (qnet: {name!r} is not numeric, not in "
                                    f"{hosts_path()}, and no DNS server is configured for qnet)")
    candidates = [name] if "." in name else [f"{name}.{d}" for d in cfg.get("search", [])] + [name]
    from qnet import socket as qsocket
    for cand in candidates:
        for _attempt in range(DNS_ATTEMPTS):
            for server in servers:
                qid = secrets.randbelow(65536)
                with qsocket.socket(qsocket.AF_INET, qsocket.SOCK_DGRAM) as s:
                    s.settimeout(DNS_TIMEOUT)
                    s.sendto(_query(cand, qid), (server, 53))
                    deadline = time.monotonic() + DNS_TIMEOUT
                    while time.monotonic() < deadline:
                        try:
                            data, src = s.recvfrom(4096)
                        except (TimeoutError, OSError):
                            break
                        if src[0] != server:
                            continue
                        try:
                            rcode, addrs = _answers(data, qid)
                        except (ValueError, IndexError, struct.error):
                            continue
                        if rcode == 3:          # NXDOMAIN: the next candidate
                            break
                        if addrs:
                            if len(_cache) >= _CACHE_MAX:
                                _cache.clear()
                            _cache[name] = (time.monotonic() + 60.0, addrs)
                            return addrs
                        break
    raise _gai(_std.EAI_NONAME, "Name or service not known")


def addresses(host: str) -> list[str]:
    """Every IPv4 address of host (numeric, hosts file, DNS); gaierror when there is none."""
    if host in ("", None):
        return ["0.0.0.0"]
    if host == "<broadcast>":
        return ["255.255.255.255"]
    n = _numeric(host)
    if n:
        return [n]
    if ":" in host:
        raise _gai(_std.EAI_ADDRFAMILY, "Address family for hostname not supported (qnet: no IPv6 yet)")
    if host.lower().rstrip(".") == "localhost":
        return ["127.0.0.1"]
    return _from_hosts(host) or _dns(host)


def address_of(host: str) -> str:
    return addresses(host)[0]


def _port(port, socktype: int) -> int:
    if port is None:
        return 0
    if isinstance(port, int):
        return port
    if isinstance(port, bytes):
        port = port.decode()
    if isinstance(port, str):
        if port.isdigit():
            return int(port)
        try:
            return _std.getservbyname(port, "udp" if socktype == _std.SOCK_DGRAM else "tcp")
        except OSError:
            raise _gai(_std.EAI_SERVICE, "Servname not supported for ai_socktype") from None
    raise TypeError("getaddrinfo() argument 2 must be integer or string")


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    if family not in (0, _std.AF_UNSPEC, _std.AF_INET):
        raise _gai(_std.EAI_FAMILY, "ai_family not supported (qnet: IPv4 only for now)")
    if isinstance(host, bytes):
        host = host.decode("idna")
    if host is None:
        addrs = ["0.0.0.0" if flags & _std.AI_PASSIVE else "127.0.0.1"]
    elif flags & _std.AI_NUMERICHOST:
        n = _numeric(host)
        if n is None:
            raise _gai(_std.EAI_NONAME, "Name or service not known")
        addrs = [n]
    else:
        addrs = addresses(host)
    types = [type] if type else [_std.SOCK_STREAM, _std.SOCK_DGRAM, _std.SOCK_RAW]
    out = []
    for a in addrs:
        for t in types:
            p = proto or {_std.SOCK_STREAM: _std.IPPROTO_TCP, _std.SOCK_DGRAM: _std.IPPROTO_UDP}.get(t, 0)
            canon = host if flags & _std.AI_CANONNAME and host else ""
            out.append((_std.AF_INET, _std.SocketKind(t), p, canon, (a, _port(port, t))))
    return out


def gethostbyname(host):
    return address_of(host)


def gethostbyname_ex(host):
    return host, [], addresses(host)


def gethostbyaddr(ip):
    a = address_of(ip)
    for addr, names in _hosts():
        if addr == a:
            return names[0], names[1:], [a]
    raise _std.herror(1, "Unknown host")


def getnameinfo(sockaddr, flags):
    host, port = sockaddr[:2]
    a = address_of(host)
    name = a
    if not flags & _std.NI_NUMERICHOST:
        try:
            name = gethostbyaddr(a)[0]
        except _std.herror:
            if flags & _std.NI_NAMEREQD:
                raise _gai(_std.EAI_NONAME, "Name or service not known") from None
    serv = str(port)
    if not flags & _std.NI_NUMERICSERV:
        try:
            serv = _std.getservbyport(port, "udp" if flags & _std.NI_DGRAM else "tcp")
        except OSError:
            pass
    return name, serv
