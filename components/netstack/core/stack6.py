"""The Stack's IPv6 control calls: addresses, routes, neighbors, ping and UDP sends.

A mixin of `Stack` (stack.py), which builds the layers these calls reach (ip6, ndp, icmp6,
udp6, tcp6) and holds their tables; here are only the argument checks and the calls, as
stack.py has them for IPv4.
"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Interface, IPv6Network

from ..wire import build_udp
from ..wire.icmpv6 import ICMPV6_ECHO_REQUEST, build_echo6
from ..wire.ipv6 import NEXT_HEADER_ICMPV6, NEXT_HEADER_UDP
from .device import ETHERNET, Device
from .errors import StackError
from .events import DuplicateAddress
from .ipv6 import LINK_LOCAL, Ipv6AddressInfo
from .radv import RaConfig
from .neighbor import NeighborInfo
from .route import STATIC, RouteInfo

UDP6_MAX_PAYLOAD = 65527    # 65535 - 8 (UDP header): the IPv6 payload length bounds it


class Ipv6Api:
    # -- argument checks ---------------------------------------------------------------------
    @staticmethod
    def _addr6(a, what: str = "address") -> IPv6Address:
        try:
            return a if isinstance(a, IPv6Address) else IPv6Address(a)
        except (ValueError, TypeError):
            raise StackError("bad_argument", f"not an IPv6 {what}: {a!r}") from None

    @staticmethod
    def _ipv6_iface(iface) -> IPv6Interface:
        try:
            return IPv6Interface(iface)
        except (ValueError, TypeError):
            raise StackError("bad_argument", f"not an IPv6 interface address: {iface!r}") from None

    def _need_ipv6(self) -> None:
        if not self.cfg.ipv6:
            raise StackError("bad_argument", "IPv6 is off (StackConfig.ipv6)")

    def is_local6(self, addr: IPv6Address) -> bool:
        return addr.is_loopback or self.ip6_addresses.is_preferred(int(addr))

    # -- addresses ---------------------------------------------------------------------------
    def _add_ipv6(self, dev: Device, iface: IPv6Interface, now: float,
                  connected: bool = True) -> None:
        a = self.ip6.add_address(dev, iface, connected=connected)
        self.ip6_neighbors.flush_address(dev.name, int(iface.ip))
        self.ndp.start_dad(dev, a, now)

    def _add_slaac_address(self, dev: Device, iface: IPv6Interface, now: float) -> None:
        # RFC 5942: an autoconfigured address does not make its prefix on-link.
        self._add_ipv6(dev, iface, now, connected=False)

    def _remove_ipv6(self, dev: Device, iface: IPv6Interface) -> None:
        self.ip6.remove_address(dev, iface)
        self.ndp.forget(dev.name, int(iface.ip))

    def _ndp_event(self, event) -> None:
        self.emit(event)
        if type(event) is DuplicateAddress:
            # RFC 7217 §6, RFC 8981 §3.4: SLAAC tries another interface identifier.
            self.routers6.dad_failed(event.device, event.address)

    def add_address6(self, name: str, iface: IPv6Interface, now: float = 0.0) -> None:
        """An IPv6 address on an Ethernet device, tentative until DAD (RFC 4862 §5.4) passes;
        a DuplicateAddress event says when it does not."""
        dev = self._dev(name)
        iface = self._ipv6_iface(iface)
        self._need_ipv6()
        if dev.kind != ETHERNET:
            raise StackError("bad_argument", f"IPv6 needs an Ethernet device; {name} is {dev.kind}")
        ip = iface.ip
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.ipv4_mapped is not None:
            raise StackError("bad_argument", f"{ip} cannot be an interface address")
        self._add_ipv6(dev, iface, now)

    def del_address6(self, name: str, iface: IPv6Interface) -> None:
        dev = self._dev(name)
        iface = self._ipv6_iface(iface)
        a = self.ip6_addresses.get(name, int(iface.ip))
        if a is None or a.iface != iface:
            raise StackError("not_found", f"{iface} is not on {name}")
        self._remove_ipv6(dev, iface)

    def addresses6(self) -> list[Ipv6AddressInfo]:
        """Every IPv6 address with its state (TENTATIVE, PREFERRED, DEPRECATED, DUPLICATE),
        lo's ::1 left out."""
        return [a for a in self.ip6_addresses.info() if a.device != "lo"]

    def neighbors6(self) -> list[NeighborInfo]:
        return self.ip6_neighbors.info()

    # -- router discovery --------------------------------------------------------------------
    def set_router_advertisements(self, name: str, cfg: RaConfig | None, now: float) -> None:
        """Make a device the router of its link, advertising cfg (prefixes, MTU, DNS; RFC
        4861 §6.2), or (None) a host on it again, doing SLAAC from others' advertisements."""
        self._need_ipv6()
        dev = self._dev(name)
        if dev.kind != ETHERNET:
            raise StackError("bad_argument", f"router advertisements need an Ethernet device; "
                                             f"{name} is {dev.kind}")
        try:
            self.routers6.configure(dev, cfg, now)
        except ValueError as e:
            raise StackError("bad_argument", str(e)) from None

    def router_advertisements(self, name: str) -> RaConfig | None:
        return self.routers6.config_of(name)

    def advertising(self, name: str) -> bool:
        """Whether a router device's advertisements have started (its link-local address
        is preferred; before that, the configuration waits)."""
        return self.routers6.advertising(name)

    def dns6(self, name: str) -> tuple[list[IPv6Address], list[str]]:
        """DNS servers and search domains that RAs (RFC 8106) gave a host device."""
        return self.routers6.dns(name)

    # -- routes ------------------------------------------------------------------------------
    def add_route6(self, prefix: IPv6Network, gateway: IPv6Address | None = None,
                   device: str | None = None, metric: int = 0) -> None:
        self._need_ipv6()
        prefix = self._prefix6(prefix)
        gw = None if gateway is None else self._addr6(gateway, "gateway")
        if gw is None and device is None:
            raise StackError("bad_argument", "a route needs a gateway or a device")
        if gw is not None and (gw.is_multicast or gw.is_unspecified or gw.is_loopback):
            raise StackError("bad_argument", f"{gw} cannot be a gateway")
        if device is not None and self._dev(device).kind != ETHERNET:
            raise StackError("bad_argument", f"IPv6 needs an Ethernet device; {device} is not")
        if not isinstance(metric, int) or not 0 <= metric <= 0xFFFFFFFF:
            raise StackError("bad_argument", f"bad metric {metric!r}")
        self.ip6.add_route(prefix, gw, device, metric)

    def del_route6(self, prefix: IPv6Network, gateway: IPv6Address | None = None,
                   device: str | None = None) -> None:
        prefix = self._prefix6(prefix)
        gw = None if gateway is None else self._addr6(gateway, "gateway")
        self.ip6.remove_route(prefix, gw, device, STATIC)

    def routes6(self) -> list[RouteInfo]:
        return self.ip6.routes.info(self.ip6.usable)

    @staticmethod
    def _prefix6(prefix) -> IPv6Network:
        try:
            return prefix if isinstance(prefix, IPv6Network) else IPv6Network(prefix, strict=True)
        except (ValueError, TypeError):
            raise StackError("bad_argument", f"not an IPv6 prefix: {prefix!r}") from None

    # -- ICMPv6 echo -------------------------------------------------------------------------
    def ping6(self, dst: IPv6Address, ident: int, seq: int, payload: bytes, now: float,
              hop_limit: int = 64, device: str | None = None) -> None:
        """An echo request from us; a link-local destination needs its device. The reply
        comes back as an EchoReply event, an error about it as a PingError."""
        self._need_ipv6()
        dst = self._addr6(dst)
        if not (0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF and 1 <= hop_limit <= 255):
            raise StackError("bad_argument", "ident/seq must be 16-bit, hop limit 1..255")
        if dst.is_unspecified:
            raise StackError("bad_argument", "cannot ping ::")
        if device is not None:
            self._dev(device)
        out, _ = self.ip6.resolve(dst, device)
        src = self.source6(out.name, dst)
        self.ip6.send(dst, NEXT_HEADER_ICMPV6, build_echo6(src, dst, ICMPV6_ECHO_REQUEST, ident,
                                                           seq, payload),
                      now, src=src, device=out.name if dst.is_multicast or dst in LINK_LOCAL
                      else device, hop_limit=hop_limit)
        self.ctr.inc("icmpv6", "tx_echo_request")
        self._drain_loopback(now)

    def source6(self, device: str, dst: IPv6Address) -> IPv6Address:
        """The source of our datagrams to dst leaving through device (RFC 6724, cut down)."""
        if dst.is_loopback or self.ip6_addresses.is_preferred(int(dst)):
            return dst
        src = self.ip6_addresses.source_for(device, dst)
        if src is None:
            raise StackError("no_address", f"no usable IPv6 address to reach {dst} from")
        return src

    # -- UDP ---------------------------------------------------------------------------------
    def _udp6_sendto(self, sid: int, payload: bytes, addr, port: int | None, now: float,
                     device: str | None) -> None:
        s = self.udp6.get(sid)
        if addr is None:
            if s.remote_addr is None:
                raise StackError("destination_required", f"socket {sid} is not connected")
            addr, port = s.remote_addr, s.remote_port
        addr = self._addr6(IPv6Address(addr) if isinstance(addr, int) else addr)
        port = self._port6(port)
        if len(payload) > UDP6_MAX_PAYLOAD:
            raise StackError("message_too_long", f"{len(payload)} bytes exceed {UDP6_MAX_PAYLOAD}")
        if addr.is_unspecified:
            raise StackError("bad_argument", "cannot send to ::")
        device = device if device is not None else s.device
        if not s.local_port:
            self.udp_bind(sid, None, 0, s.device)
        out, _ = self.ip6.resolve(addr, device, s.local_addr)
        src = s.local_addr or self.source6(out.name, addr)
        self.ip6.send(addr, NEXT_HEADER_UDP, build_udp(src, addr, s.local_port, port, payload),
                      now, src=src, device=out.name if addr.is_multicast or addr in LINK_LOCAL
                      else device)
        self.ctr.inc("udp6", "tx_datagrams")
        self._drain_loopback(now)

    @staticmethod
    def _port6(p) -> int:
        if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 0xFFFF:
            raise StackError("bad_argument", f"bad port {p!r}")
        return p
