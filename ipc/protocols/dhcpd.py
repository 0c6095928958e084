"""dhcpd's control interface: DHCPv4 servers for guest-facing ports, clients for uplinks."""
from ..decl import Method, Protocol, Version
from ..types import ANY, BOOL, IPV4, IPV4_IFACE, NAME, Field, Int, List, Optional, Str, struct

DHCP_ERRORS = ("not_found", "bad_argument", "failed")

LEASE = struct(
    "DhcpLease",
    Field("port", NAME),
    Field("role", Str(max_len=8), doc="server | client"),
    Field("mac", Str(max_len=17)),
    Field("address", IPV4),
    Field("state", Str(max_len=16)),
    Field("expires_in", Optional(Int(-(1 << 40), 1 << 40)), doc="seconds; None for infinite"),
    Field("hostname", Optional(Str(max_len=255))),
    Field("dns", List(IPV4, max_len=8), default=[], doc="1.1: a client lease's DNS servers (option 6)"),
    Field("domain", Optional(Str(max_len=255)), default=None, doc="1.1: a client lease's domain (option 15)"),
)

DHCPD = Protocol(
    "qnet.dhcpd", Version(1, 1),
    doc="DHCPv4: a server per guest-facing port, a client per uplink port.",
    methods=(
        Method("server_add",
               args=(Field("port", NAME), Field("interface", IPV4_IFACE, doc="our address on the port, e.g. 10.77.1.1/24"),
                     Field("pool_start", Optional(IPV4), default=None), Field("pool_end", Optional(IPV4), default=None),
                     Field("router", Optional(IPV4), default=None, doc="default: our address"),
                     Field("dns", List(IPV4, max_len=8), default=[]),
                     Field("domain", Optional(Str(max_len=255)), default=None),
                     Field("mtu", Optional(Int(576, 65535)), default=None),
                     Field("lease_time", Int(10, 1 << 30), default=3600),
                     Field("reservations", ANY, default={}, doc="{mac: address}")),
               result=BOOL, errors=DHCP_ERRORS, idempotent=True,
               doc="Serve DHCP on a port (replaces the settings of an existing server, keeps its leases)."),
        Method("server_del", args=(Field("port", NAME),), result=BOOL, errors=DHCP_ERRORS, idempotent=True),
        Method("pool", args=(Field("port", NAME), Field("pool_start", IPV4), Field("pool_end", IPV4)),
               result=BOOL, errors=DHCP_ERRORS, idempotent=True, doc="Change a server's address pool."),
        Method("client_add", args=(Field("port", NAME), Field("mac", Str(max_len=17)),
                                   Field("hostname", Optional(Str(max_len=63)), default=None)),
               result=BOOL, errors=DHCP_ERRORS, idempotent=True,
               doc="Run a DHCP client on an uplink port; it configures the port's address and routes."),
        Method("client_del", args=(Field("port", NAME),), result=BOOL, errors=DHCP_ERRORS, idempotent=True),
        Method("leases", result=List(LEASE, max_len=65536), idempotent=True),
        Method("status", result=ANY, idempotent=True, doc="Servers, clients, pools, counters."),
        Method("link", args=(Field("port", NAME), Field("up", BOOL)), result=BOOL, errors=DHCP_ERRORS,
               doc="A port's link changed (clients restart with INIT-REBOOT on link up)."),
    ),
)
