"""Names for qnet.socket: numeric hosts of either IP version, a hosts file, then DNS queries
(A and AAAA) sent through qnet's own UDP to the servers the socket provider names (the
manifest's, or an uplink lease's).

Nothing here asks the host's resolver: a name the host could resolve but qnet cannot is
gaierror, as it would be on a machine whose only network is qnet. Zones of link-local
addresses (fe80::1%p0) name qnet's ports, numbered as netstack numbers them (the provider's
`resolver` answer carries the table); a numeric zone is taken as it is.
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
_TYPE_A, _TYPE_AAAA = 1, 28
_cache: dict[tuple[str, int], tuple[float, list[tuple[int, str]]]] = {}
_FAMILY_NOT_SUPPORTED = "Address family for hostname not supported"


def _gai(code: int, text: str) -> _std.gaierror:
    return _std.gaierror(code, text)


def _numeric(host: str) -> str | None:
    """A dotted-quad IPv4 address in its canonical text, or None."""
    try:
        return _std.inet_ntoa(_std.inet_aton(host)) if host and host.replace(".", "").isdigit() else None
    except OSError:
        return None


def _numeric6(host: str) -> tuple[str, str | None] | None:
    """(canonical text, zone or None) of an IPv6 literal ("fe80::1%p0"), or None."""
    if not host or ":" not in host:
        return None
    addr, _, zone = host.partition("%")
    try:
        return _std.inet_ntop(_std.AF_INET6, _std.inet_pton(_std.AF_INET6, addr)), (zone or None)
    except (OSError, ValueError):
        return None


def _is_link_local(addr: str) -> bool:
    b = _std.inet_pton(_std.AF_INET6, addr)
    return b[0] == 0xFE and b[1] & 0xC0 == 0x80


def hosts_path() -> str:
    """QNET_HOSTS, read at each look-up (as /etc/hosts is read at each one): a program may set it
    after importing the module."""
    return os.environ.get("QNET_HOSTS") or DEFAULT_HOSTS


def _hosts() -> list[tuple[int, str, list[str]]]:
    """(family, address, names) of every line of the hosts file."""
    out = []
    try:
        with open(hosts_path()) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) < 2:
                    continue
                if _numeric(fields[0]):
                    out.append((_std.AF_INET, fields[0], fields[1:]))
                elif (n6 := _numeric6(fields[0])) is not None and n6[1] is None:
                    out.append((_std.AF_INET6, n6[0], fields[1:]))
    except OSError:
        pass
    return out


def _from_hosts(name: str) -> list[tuple[int, str]]:
    name = name.lower().rstrip(".")
    return [(fam, a) for fam, a, names in _hosts() if name in (n.lower() for n in names)]


def _resolver_config() -> dict:
    from qnet._session import session
    try:
        r, _ = session().call("resolver", {})
        return r if isinstance(r, dict) else {}
    except OSError:
        return {}


def interfaces() -> dict[str, int]:
    """netstack's interface numbering (lo is 1): the scopes of link-local addresses."""
    table = _resolver_config().get("interfaces") or {}
    return {str(k): int(v) for k, v in table.items()} or {"lo": 1}


def scope_of(zone: str | None) -> int:
    """The scope id a zone names: a number as it is, else a port's index; EAI_NONAME if
    there is no such port (as glibc)."""
    if not zone:
        return 0
    if zone.isdigit():
        return int(zone)
    idx = interfaces().get(zone)
    if idx is None:
        raise _gai(_std.EAI_NONAME, "Name or service not known")
    return idx


def zone_of(scope: int) -> str:
    """The zone text of a scope id: its port's name, or the number."""
    for name, idx in interfaces().items():
        if idx == scope:
            return name
    return str(scope)


def _query(name: str, qid: int, qtype: int = _TYPE_A) -> bytes:
    q = b"".join(bytes([len(p)]) + p for p in name.encode("idna").split(b".") if p) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def _skip_name(msg: bytes, i: int) -> int:
    while True:
        n = msg[i]
        if n & 0xC0 == 0xC0:
            return i + 2
        if n == 0:
            return i + 1
        i += n + 1


def _answers(msg: bytes, qid: int) -> tuple[int, list[tuple[int, str]]]:
    """(rcode, [(family, address)]) of a DNS answer (A and AAAA records); ValueError if it is
    not ours or malformed."""
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
        if rtype == _TYPE_A and rdlen == 4:
            out.append((_std.AF_INET, _std.inet_ntoa(msg[i:i + 4])))
        elif rtype == _TYPE_AAAA and rdlen == 16:
            out.append((_std.AF_INET6, _std.inet_ntop(_std.AF_INET6, msg[i:i + 16])))
        i += rdlen
    return flags & 0xF, out


def _ask(server: str, name: str, qtype: int) -> tuple[int, list[tuple[int, str]]] | None:
    """One query to one server through qnet's UDP: (rcode, addresses), or None (no answer)."""
    from qnet import socket as qsocket
    fam = qsocket.AF_INET6 if ":" in server else qsocket.AF_INET
    qid = secrets.randbelow(65536)
    with qsocket.socket(fam, qsocket.SOCK_DGRAM) as s:
        s.settimeout(DNS_TIMEOUT)
        s.sendto(_query(name, qid, qtype), (server, 53))
        deadline = time.monotonic() + DNS_TIMEOUT
        while time.monotonic() < deadline:
            try:
                data, src = s.recvfrom(4096)
            except (TimeoutError, OSError):
                return None
            if src[0] != server:
                continue
            try:
                return _answers(data, qid)
            except (ValueError, IndexError, struct.error):
                continue
    return None


def _dns(name: str, family: int) -> list[tuple[int, str]]:
    now = time.monotonic()
    hit = _cache.get((name, family))
    if hit and hit[0] > now:
        return hit[1]
    cfg = _resolver_config()
    servers = [str(s) for s in cfg.get("nameservers", []) if _numeric(str(s)) or _numeric6(str(s))]
    if not servers:
        raise _gai(_std.EAI_NONAME, f"Name or service not known (qnet: {name!r} is not numeric, not in "
                                    f"{hosts_path()}, and no DNS server is configured for qnet)")
    # AAAA first: getaddrinfo answers IPv6 first (RFC 6724's default policy), and Happy
    # Eyeballs (create_connection) interleaves from there.
    qtypes = {_std.AF_INET: (_TYPE_A,), _std.AF_INET6: (_TYPE_AAAA,)}.get(family, (_TYPE_AAAA, _TYPE_A))
    candidates = [name] if "." in name else [f"{name}.{d}" for d in cfg.get("search", [])] + [name]
    for cand in candidates:
        found: list[tuple[int, str]] = []
        for qtype in qtypes:
            for _attempt in range(DNS_ATTEMPTS):
                answer = None
                for server in servers:
                    answer = _ask(server, cand, qtype)
                    if answer is not None:
                        break
                if answer is not None:
                    found += answer[1] if answer[0] == 0 else []
                    break
        if found:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[(name, family)] = (time.monotonic() + 60.0, found)
            return found
    raise _gai(_std.EAI_NONAME, "Name or service not known")


def resolve(host: str, family: int = 0) -> list[tuple[int, str, int]]:
    """Every address of host as (family, address, scope id): numeric of either version (a
    zone in an IPv6 literal is its scope), the hosts file, DNS; gaierror when there is none,
    EAI_ADDRFAMILY (as glibc) for a literal of the other family."""
    family = family or _std.AF_UNSPEC
    if host in ("", None):
        return [(_std.AF_INET6, "::", 0)] if family == _std.AF_INET6 else [(_std.AF_INET, "0.0.0.0", 0)]
    if host == "<broadcast>" and family != _std.AF_INET6:
        return [(_std.AF_INET, "255.255.255.255", 0)]
    n = _numeric(host)
    if n:
        if family == _std.AF_INET6:
            raise _gai(_std.EAI_ADDRFAMILY, _FAMILY_NOT_SUPPORTED)
        return [(_std.AF_INET, n, 0)]
    n6 = _numeric6(host)
    if n6 is not None:
        if family == _std.AF_INET:
            raise _gai(_std.EAI_ADDRFAMILY, _FAMILY_NOT_SUPPORTED)
        addr, zone = n6
        if zone is not None and not _is_link_local(addr):
            raise _gai(_std.EAI_NONAME, "Name or service not known")
        return [(_std.AF_INET6, addr, scope_of(zone))]
    if ":" in host or "%" in host:
        raise _gai(_std.EAI_NONAME, "Name or service not known")
    wanted = (lambda f: True) if family == _std.AF_UNSPEC else (lambda f: f == family)
    found = [(f, a) for f, a in _from_hosts(host) if wanted(f)]
    if not found and host.lower().rstrip(".") == "localhost" and family != _std.AF_INET6:
        found = [(_std.AF_INET, "127.0.0.1")]
    if not found:
        found = [(f, a) for f, a in _dns(host, family) if wanted(f)]
    if not found:
        raise _gai(_std.EAI_NONAME, "Name or service not known")
    return [(f, a, 0) for f, a in found]


def addresses(host: str) -> list[str]:
    """Every IPv4 address of host (numeric, hosts file, DNS); gaierror when there is none."""
    return [a for _f, a, _s in resolve(host, _std.AF_INET)]


def address_of(host: str, family: int = _std.AF_INET) -> str:
    """The first address of host in family, as a socket call resolves its argument."""
    return resolve(host, family)[0][1]


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
    if family not in (0, _std.AF_UNSPEC, _std.AF_INET, _std.AF_INET6):
        raise _gai(_std.EAI_FAMILY, "ai_family not supported")
    if isinstance(host, bytes):
        host = host.decode("idna")
    if host is None:
        # glibc: the wildcard addresses when passive (IPv4's first), else the loopbacks
        # (IPv6's first).
        if flags & _std.AI_PASSIVE:
            both = [(_std.AF_INET, "0.0.0.0", 0), (_std.AF_INET6, "::", 0)]
        else:
            both = [(_std.AF_INET6, "::1", 0), (_std.AF_INET, "127.0.0.1", 0)]
        addrs = [x for x in both if family in (0, _std.AF_UNSPEC, x[0])]
    elif flags & _std.AI_NUMERICHOST:
        if _numeric(host) is None and _numeric6(host) is None:
            raise _gai(_std.EAI_NONAME, "Name or service not known")
        addrs = resolve(host, family)
    else:
        addrs = resolve(host, family)
    types = [type] if type else [_std.SOCK_STREAM, _std.SOCK_DGRAM, _std.SOCK_RAW]
    out = []
    for fam, a, scope in addrs:
        for t in types:
            p = proto or {_std.SOCK_STREAM: _std.IPPROTO_TCP, _std.SOCK_DGRAM: _std.IPPROTO_UDP}.get(t, 0)
            canon = host if flags & _std.AI_CANONNAME and host else ""
            sa = (a, _port(port, t)) if fam == _std.AF_INET else (a, _port(port, t), 0, scope)
            out.append((_std.AddressFamily(fam), _std.SocketKind(t), p, canon, sa))
    return out


def gethostbyname(host):
    return address_of(host)


def gethostbyname_ex(host):
    return host, [], addresses(host)


def gethostbyaddr(ip):
    fam, a, _scope = resolve(ip)[0]
    for f, addr, names in _hosts():
        if f == fam and addr == a:
            return names[0], names[1:], [a]
    raise _std.herror(1, "Unknown host")


def getnameinfo(sockaddr, flags):
    host, port = sockaddr[:2]
    fam, a, _scope = resolve(host)[0]
    scope = sockaddr[3] if fam == _std.AF_INET6 and len(sockaddr) >= 4 else 0
    name = a
    if not flags & _std.NI_NUMERICHOST:
        try:
            name = gethostbyaddr(a)[0]
        except _std.herror:
            if flags & _std.NI_NAMEREQD:
                raise _gai(_std.EAI_NONAME, "Name or service not known") from None
    if name == a and scope and _is_link_local(a):
        name = f"{a}%{zone_of(scope)}"
    serv = str(port)
    if not flags & _std.NI_NUMERICSERV:
        try:
            serv = _std.getservbyport(port, "udp" if flags & _std.NI_DGRAM else "tcp")
        except OSError:
            pass
    return name, serv
