"""The launcher's control interface: the `qnet` CLI is an ordinary client of it."""
from ..decl import Method, Protocol, Version
from ..types import (ANY, BOOL, IPV4, IPV4_IFACE, IPV4_PREFIX, IPV6, IPV6_IFACE, IPV6_PREFIX, MAC, NAME, Enum,
                     Field, Int, List, Optional, Str, U16, U32, struct)
from .netstack import RA_CONFIG, ROUTE_TABLE

PORT_ERRORS = ("not_found", "exists", "bad_argument", "failed", "no_route", "no_device", "address_in_use")

PORT_CONFIG = struct(
    "PortConfig",
    Field("name", NAME),
    Field("backend", Str(max_len=16)),
    Field("tap", Optional(Str(max_len=64))),
    Field("mtu", Int(68, 65535)),
    Field("forwarding", BOOL),
    Field("addresses", List(Str(max_len=64), max_len=64), doc="IPv4 and (1.4) IPv6 addresses with their length"),
    Field("dhcp", Optional(Str(max_len=16))),
)

COMPONENT_STATUS = struct(
    "ComponentStatus",
    Field("name", NAME),
    Field("pid", Int(0, 1 << 32)),
    Field("state", Str(max_len=32), doc="starting | running | frozen | stopping | backoff | failed | stopped"),
    Field("restarts", U32),
    Field("last_exit", Str(max_len=128)),
    Field("incarnation", U32),
    Field("since", Str(max_len=64), doc="UTC time of the last state change"),
    Field("details", ANY, doc="the component's own figures from its last heartbeat: queues, drops"),
)

RESTART_RESULT = struct(
    "RestartResult",
    Field("name", NAME),
    Field("old_pid", Int(0, 1 << 32)),
    Field("new_pid", Int(0, 1 << 32)),
    Field("handed_over", BOOL, doc="the successor received its predecessor's state"),
    Field("seconds", ANY),
)

LOG_CHUNK = struct(
    "LogChunk",
    Field("text", Str(max_len=1 << 20)),
    Field("offset", Int(0, 1 << 62)),
)

LAUNCHER = Protocol(
    "qnet.launcher", Version(1, 5),
    doc="Control of the component graph: status, restarts, logs, shutdown; the configuration it owns "
        "(ports, addresses, routes), re-asserted to every netstack incarnation. 1.4: IPv6 addresses "
        "and routes (addr6_*, route6_*, port_add's addresses6). 1.5: router mode (ra_set, ra_del).",
    methods=(
        Method("status", result=List(COMPONENT_STATUS), idempotent=True),
        Method("graph", result=ANY, idempotent=True, doc="The graph as loaded: file, components, endpoints."),
        Method("restart", args=(Field("name", NAME),
                                Field("mode", Enum("RestartMode", ("handover", "cold")), default="handover")),
               result=RESTART_RESULT, errors=("not_found", "failed"),
               doc="Make-before-break: start the successor, hand state and handles over, stop the predecessor."),
        Method("logs", args=(Field("name", NAME), Field("offset", Int(-1, 1 << 62), default=-1),
                             Field("max_bytes", Int(1, 1 << 20), default=65536)),
               result=LOG_CHUNK, errors=("not_found",), idempotent=True,
               doc="Readable log lines of a component from byte offset (-1: the tail)."),
        Method("shutdown", result=BOOL, doc="Stop every component, then the launcher."),
        Method("endpoints", result=ANY, idempotent=True, doc="The stable endpoints of every component."),
        Method("port_add", args=(Field("name", NAME), Field("backend", Enum("Backend", ("tap", "stream", "dgram")), default="tap"),
                                 Field("tap", Optional(NAME), default=None), Field("create", BOOL, default=True),
                                 Field("mac", Optional(MAC), default=None), Field("mtu", Int(576, 65535), default=1500),
                                 Field("forwarding", BOOL, default=True),
                                 Field("path", Optional(Str(max_len=107)), default=None),
                                 Field("peer_path", Optional(Str(max_len=107)), default=None),
                                 Field("dhcp", Optional(Enum("DhcpRole", ("client", "server"))), default=None),
                                 Field("addresses", List(IPV4_IFACE, max_len=64), default=[]),
                                 Field("offloads", BOOL, default=False,
                                       doc="1.1: TAP with IFF_VNET_HDR, checksum and TSO/GSO offloads"),
                                 Field("fault", Optional(Str(max_len=512)), default=None,
                                       doc="1.2: the driver's fault injector, KEY=VALUE,... "
                                           "(docs/fault-injection.md)"),
                                 Field("addresses6", List(IPV6_IFACE, max_len=64), default=[],
                                       doc="1.4: IPv6 addresses for the port (beside its link-local one)")),
               result=PORT_CONFIG, errors=PORT_ERRORS,
               doc="Open the backend handle, start ethdriver.NAME, create the port in netstack."),
        Method("port_del", args=(Field("name", NAME),), result=BOOL, errors=PORT_ERRORS),
        Method("port_set", args=(Field("name", NAME), Field("forwarding", Optional(BOOL), default=None),
                                 Field("mtu", Optional(Int(576, 65535)), default=None)),
               result=PORT_CONFIG, errors=PORT_ERRORS, idempotent=True),
        Method("addr_add", args=(Field("port", NAME), Field("address", IPV4_IFACE)), result=BOOL,
               errors=PORT_ERRORS, idempotent=True),
        Method("addr_del", args=(Field("port", NAME), Field("address", IPV4_IFACE)), result=BOOL,
               errors=PORT_ERRORS, idempotent=True),
        Method("route_add", args=(Field("prefix", IPV4_PREFIX), Field("via", Optional(IPV4), default=None),
                                  Field("dev", Optional(NAME), default=None), Field("metric", U32, default=0),
                                  Field("table", Optional(ROUTE_TABLE), default=None,
                                        doc="1.3: a numbered routing table; absent: main")),
               result=BOOL, errors=PORT_ERRORS, idempotent=True),
        Method("addr6_add", args=(Field("port", NAME), Field("address", IPV6_IFACE)), result=BOOL,
               errors=PORT_ERRORS, idempotent=True,
               doc="1.4: an IPv6 address, kept and re-asserted like IPv4's; DAD runs in netstack "
                   "(`qnet addr` shows its state)."),
        Method("addr6_del", args=(Field("port", NAME), Field("address", IPV6_IFACE)), result=BOOL,
               errors=PORT_ERRORS, idempotent=True, doc="1.4"),
        Method("route6_add", args=(Field("prefix", IPV6_PREFIX), Field("via", Optional(IPV6), default=None),
                                   Field("dev", Optional(NAME), default=None, doc="needed with a link-local via"),
                                   Field("metric", U32, default=0)),
               result=BOOL, errors=PORT_ERRORS, idempotent=True, doc="1.4: an IPv6 route (main table)."),
        Method("route6_del", args=(Field("prefix", IPV6_PREFIX), Field("via", Optional(IPV6), default=None),
                                   Field("dev", Optional(NAME), default=None)),
               result=BOOL, errors=PORT_ERRORS, idempotent=True, doc="1.4"),
        Method("ra_set", args=(Field("port", NAME),
                               Field("prefixes", List(IPV6_PREFIX, max_len=16), default=[],
                                     doc="/64s; empty: the /64s of the port's global IPv6 addresses "
                                         "whenever it is (re-)asserted"),
                               Field("mtu", Optional(Int(1280, 65535)), default=None),
                               Field("rdnss", List(IPV6, max_len=8), default=[]),
                               Field("dnssl", List(Str(max_len=253), max_len=8), default=[]),
                               Field("managed", BOOL, default=False), Field("other", BOOL, default=False),
                               Field("router_lifetime", U16, default=1800)),
               result=RA_CONFIG, errors=PORT_ERRORS, idempotent=True,
               doc="1.5: router mode on a port (netstack's ra_set), kept and re-asserted like its "
                   "addresses; answers what netstack applied."),
        Method("ra_del", args=(Field("port", NAME),), result=BOOL, errors=PORT_ERRORS, idempotent=True,
               doc="1.5: the port stops advertising (a final RA with router lifetime 0); false when "
                   "it was not."),
        Method("dhcp_pool", args=(Field("port", NAME), Field("start", IPV4), Field("end", IPV4)),
               result=BOOL, errors=PORT_ERRORS, idempotent=True, doc="Set the DHCP server's pool on a port."),
        Method("route_del", args=(Field("prefix", IPV4_PREFIX), Field("via", Optional(IPV4), default=None),
                                  Field("dev", Optional(NAME), default=None),
                                  Field("table", Optional(ROUTE_TABLE), default=None, doc="1.3: absent: main")),
               result=BOOL, errors=PORT_ERRORS, idempotent=True),
    ),
)
