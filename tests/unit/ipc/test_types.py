"""The declaration language: every type accepts what it declares and refuses the rest."""
import ipaddress

import msgspec
import pytest

from ipc import errors, registry
from ipc.decl import Event, Method, Protocol, Stream, Version, encode, to_plain
from ipc.types import (ANY, BOOL, FLOAT, IP, IPV4, IPV4_IFACE, IPV4_PREFIX, IPV6, IPV6_IFACE, IPV6_PREFIX, MAC,
                       NAME, U8, U16, U32, U64, Bytes, Enum, Field, Int, List, Map, Optional, Str, dec_hook,
                       is_mac, struct)
from tests.components.decls import COUNTER


def decode(t, value):
    """Validate one value against a declared type, as a peer's decoder does."""
    return msgspec.msgpack.Decoder(t.annotation(), dec_hook=dec_hook).decode(encode(value))


def accepts(t, value) -> bool:
    try:
        decode(t, value)
    except msgspec.ValidationError:
        return False
    return True


# -- scalar types -----------------------------------------------------------------------------
@pytest.mark.parametrize("t, good, bad", [
    (U8, [0, 1, 255], [-1, 256, 1.5, "1", True, None]),
    (U16, [0, 65535], [-1, 65536]),
    (U32, [0, 0xFFFFFFFF], [-1, 1 << 32]),
    (U64, [0, (1 << 64) - 1], [-1]),
    (Int(-1000, 1000), [-1000, 0, 1000], [-1001, 1001, 2 ** 40]),
    (Int(), [-(1 << 63), 0, (1 << 64) - 1], ["0", 0.5]),
    (FLOAT, [0.0, -1.5, 1e300, 3], ["1.0", None]),
    (BOOL, [True, False], [0, 1, "true", None]),
    (Str(max_len=3), ["", "abc"], ["abcd", 3, b"ab", None]),
    (Str(max_len=8, min_len=2), ["ab"], ["a"]),
    (Str(pattern=r"^[a-z]+$"), ["abc"], ["ABC", "a1", ""]),
    (NAME, ["p0", "eth-0", "a.b_c"], ["", "-x", "a b", "x" * 65, "é"]),
    (Bytes(max_len=4), [b"", b"abcd"], [b"abcde", "abcd", 4]),
    (Enum("Mode", ("handover", "cold")), ["handover", "cold"], ["warm", "", 1, None]),
    (Optional(U8), [None, 0, 255], [256, "x"]),
    (List(U8, max_len=3), [[], [1, 2, 3]], [[1, 2, 3, 4], [256], "abc", None]),
    (Map(U8, max_len=2), [{}, {"a": 1, "b": 2}], [{"a": 1, "b": 2, "c": 3}, {"a": 300}, {1: 1}, [1]]),
    (ANY, [None, 1, "x", [1, {"a": b"b"}]], []),
])
def test_scalar_and_container_types_accept_declared_values_and_refuse_the_rest(t, good, bad):
    for v in good:
        assert accepts(t, v), f"{t.describe()} refused {v!r}"
    for v in bad:
        assert not accepts(t, v), f"{t.describe()} accepted {v!r}"


def test_map_refuses_keys_longer_than_256_characters():
    assert accepts(Map(U8), {"k" * 256: 1})
    assert not accepts(Map(U8), {"k" * 257: 1})


def test_default_bounds_keep_unbounded_declarations_bounded():
    assert not accepts(Str(), "x" * 4097)
    assert not accepts(List(U8), [0] * 4097)
    assert not accepts(Bytes(), b"x" * ((1 << 20) + 1))


def test_int_bounds_that_cannot_be_enforced_are_refused_at_declaration():
    for lo, hi in ((0, 1 << 63), (0, (1 << 64) - 2), (5, 4), (-(1 << 63) - 1, 0), (0, 1 << 64)):
        with pytest.raises(ValueError):
            Int(lo, hi)
    assert accepts(Int(0, (1 << 63) - 1), (1 << 63) - 1)
    assert not accepts(Int(0, (1 << 63) - 1), 1 << 63)


# -- addresses ---------------------------------------------------------------------------------
@pytest.mark.parametrize("t, good, bad", [
    (IPV4, ["10.0.0.1", "0.0.0.0", "255.255.255.255"],
     ["10.0.0.256", "010.0.0.1", "10.0.0", "::1", "10.0.0.1/32", "", 167772161, b"\n\0\0\1", "1" * 100]),
    (IPV6, ["::1", "fe80::1", "2001:db8::ff00:42:8329"], ["1.2.3.4", "2001:db8:::1", "::1/128", "g::1", 1]),
    (IP, ["10.0.0.1", "::1", "::ffff:10.0.0.1", "fe80::1"],
     ["10.0.0.256", "2001:db8:::1", "fe80::1%eth0", "10.0.0.0/8", "", 1, "1" * 100]),
    (IPV4_PREFIX, ["10.0.0.0/24", "0.0.0.0/0", "10.0.0.1/32", "10.0.0.1"],
     ["10.0.0.1/24", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/", "::/0", 24]),
    (IPV6_PREFIX, ["2001:db8::/64", "::/0", "fe80::1/128"], ["2001:db8::1/64", "2001:db8::/129", "10.0.0.0/8"]),
    (IPV4_IFACE, ["10.0.0.1/24", "10.0.0.0/24"], ["10.0.0.1/33", "fe80::1/64", "x"]),
    (IPV6_IFACE, ["fe80::1/64"], ["10.0.0.1/24", "fe80::1/129"]),
    (MAC, ["52:54:00:12:34:56", "ff:ff:ff:ff:ff:ff"],
     ["52:54:00:12:34", "52:54:00:12:34:56:78", "52-54-00-12-34-56", "525400123456", "52:54:00:12:34:5g", 1]),
])
def test_address_types_accept_canonical_text_and_refuse_malformed_values(t, good, bad):
    for v in good:
        assert accepts(t, v), f"{t.describe()} refused {v!r}"
    for v in bad:
        assert not accepts(t, v), f"{t.describe()} accepted {v!r}"


def test_an_address_of_either_version_decodes_into_its_own_class():
    assert decode(IP, "10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    assert decode(IP, "2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert decode(Optional(IP), None) is None


def test_prefixes_are_strict_a_host_address_with_length_is_not_a_prefix():
    assert decode(IPV4_PREFIX, "10.0.0.0/24") == ipaddress.IPv4Network("10.0.0.0/24")
    assert not accepts(IPV4_PREFIX, "10.0.0.1/24")
    assert not accepts(IPV6_PREFIX, "2001:db8::1/64")
    # the interface type is the one that carries a host address with its prefix length
    assert decode(IPV4_IFACE, "10.0.0.1/24") == ipaddress.IPv4Interface("10.0.0.1/24")


def test_addresses_decode_into_checked_ipaddress_objects_and_encode_back_as_text():
    a = decode(IPV4, "192.0.2.7")
    assert isinstance(a, ipaddress.IPv4Address)
    assert msgspec.msgpack.decode(encode(a)) == "192.0.2.7"
    n = decode(IPV6_PREFIX, "2001:db8::/32")
    assert isinstance(n, ipaddress.IPv6Network)
    assert to_plain({"n": n}) == {"n": "2001:db8::/32"}


def test_mac_is_lowercase_colon_separated_text():
    assert is_mac("52:54:00:ab:cd:ef")
    assert not is_mac("52:54:00:AB:CD:EF")
    assert accepts(MAC, "52:54:00:ab:cd:ef")
    assert not accepts(MAC, "52:54:00:AB:CD:EF")


# -- structs: nested, unknown and missing fields --------------------------------------------------
ROUTE = struct("Route", Field("dst", IPV4_PREFIX), Field("via", Optional(IPV4), default=None),
               Field("metric", U16, default=0))
TABLE = struct("Table", Field("name", NAME), Field("routes", List(ROUTE, max_len=2)))


def test_nested_structs_validate_every_level():
    value = decode(TABLE, {"name": "main", "routes": [{"dst": "10.0.0.0/8", "via": "10.0.0.1"}]})
    assert value.routes[0].dst == ipaddress.IPv4Network("10.0.0.0/8")
    assert value.routes[0].metric == 0
    assert to_plain(value) == {"name": "main", "routes": [{"dst": "10.0.0.0/8", "via": "10.0.0.1", "metric": 0}]}
    bad = [
        {"name": "main", "routes": [{"dst": "10.0.0.1/8"}]},               # host bits in a nested prefix
        {"name": "main", "routes": [{"dst": "10.0.0.0/8", "metric": 70000}]},
        {"name": "main", "routes": [{"dst": "10.0.0.0/8"}] * 3},           # list bound
        {"name": "main", "routes": [{"dst": "10.0.0.0/8", "color": "red"}]},  # unknown nested field
        {"name": "main", "routes": [{}]},                                   # missing nested field
        {"routes": []},                                                     # missing top-level field
        {"name": "main", "routes": [], "extra": 1},                         # unknown top-level field
        ["main", []],                                                       # an array is not a struct
    ]
    for v in bad:
        assert not accepts(TABLE, v), v


def test_method_arguments_refuse_missing_unknown_and_wrongly_typed_fields():
    add = COUNTER.method_by_name["add"]
    assert add.decode_args(encode({"n": 5})).n == 5
    for body in ({}, {"n": 5, "m": 1}, {"n": "5"}, {"n": 1001}, {"n": -1001}, {"n": None}):
        with pytest.raises(errors.InvalidArgument):
            add.decode_args(encode(body))
    with pytest.raises(errors.BadMessage):
        add.decode_args(b"\xc1")
    with pytest.raises(errors.BadMessage):
        add.decode_args(b"")


def test_method_result_is_checked_by_the_client():
    pid = COUNTER.method_by_name["pid"]
    assert pid.decode_result(encode(42)) == 42
    with pytest.raises(errors.InvalidResult):
        pid.decode_result(encode(-1))
    with pytest.raises(errors.BadMessage):
        pid.decode_result(b"\xc1")


def test_field_defaults_make_a_field_optional():
    f = Field("metric", U16, default=0)
    assert not f.required and Field("x", U8).required
    assert "= 0" in f.describe()


# -- declarations ----------------------------------------------------------------------------------
def test_describe_names_methods_arguments_errors_and_types():
    text = COUNTER.describe()
    assert text.startswith("protocol test.counter version 1.2")
    for name in ("add(n: int[-1000..1000]) -> int", "get() -> int", "echo(", "fail(", "handle_inode(",
                 "record(items: list[str[..16]; ..8]) -> any", "not_found", "idempotent"):
        assert name in text, name
    launcher = registry.get("qnet.launcher").describe()
    assert "ComponentStatus:" in launcher and "restart(name: name" in launcher
    assert "RestartMode{handover|cold}" in launcher
    device = registry.get("qnet.device").describe()
    assert "streams:" in device and "rx: frame batches, user -> provider" in device
    assert "attach(" in device and "mac: mac?" in device


def test_describe_lists_nested_struct_types_once():
    p = Protocol("test.describe", Version(1, 0), methods=(
        Method("put", args=(Field("t", TABLE),), result=List(ROUTE)),
        Method("get", result=Optional(TABLE)),
    ))
    text = p.describe()
    assert text.count("  Table:") == 1 and text.count("  Route:") == 1
    assert "dst: ipv4-prefix" in text and "via: ipv4? = None" in text


def test_a_method_may_not_declare_a_transport_error_code():
    with pytest.raises(ValueError, match="reserved"):
        Protocol("test.bad", Version(1, 0), methods=(Method("m", errors=("timeout",)),))


def test_a_method_declared_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        Protocol("test.bad", Version(1, 0), methods=(Method("m"), Method("m")))


def test_a_stream_with_a_bad_direction_is_refused():
    with pytest.raises(ValueError, match="direction"):
        Protocol("test.bad", Version(1, 0), streams=(Stream("s", "sideways"),))


def test_events_validate_their_fields():
    p = Protocol("test.ev", Version(1, 0), events=(Event("link", (Field("port", NAME), Field("up", BOOL))),))
    ev = p.event_by_name["link"]
    assert ev.decode(encode({"port": "p0", "up": True})).up is True
    with pytest.raises(errors.InvalidArgument):
        ev.decode(encode({"port": "p0"}))
    with pytest.raises(errors.BadMessage):
        ev.decode(b"\xc1")


# -- registry and versions -------------------------------------------------------------------------
def test_registry_lists_the_builtin_protocols():
    names = [p.name for p in registry.all_protocols()]
    for name in ("qnet.launcher", "qnet.lifecycle", "qnet.supervisor", "qnet.device", "qnet.tcp"):
        assert name in names
    assert names == sorted(names)
    assert registry.get("qnet.launcher").version == Version(1, 5)  # 1.1: port_add offloads; 1.2: fault; 1.3: route tables; 1.4: IPv6; 1.5: router mode
    assert registry.get("no.such") is None


def test_registry_refuses_a_second_protocol_under_a_taken_name():
    with pytest.raises(ValueError, match="declared twice"):
        registry.register(Protocol("qnet.launcher", Version(9, 0)))
    assert registry.get("qnet.launcher").version == Version(1, 5)  # 1.1: port_add offloads; 1.2: fault; 1.3: route tables; 1.4: IPv6; 1.5: router mode


def test_parse_ref_splits_name_and_optional_version():
    assert registry.parse_ref("qnet.device@1.0") == ("qnet.device", Version(1, 0))
    assert registry.parse_ref("qnet.device") == ("qnet.device", None)
    assert registry.parse_ref("x@2") == ("x", Version(2, 0))
    with pytest.raises(ValueError):
        registry.parse_ref("x@one")


@pytest.mark.parametrize("server, wanted, ok", [
    ("1.2", "1.0", True), ("1.2", "1.2", True), ("1.2", "1.3", False),
    ("1.2", "2.0", False), ("2.0", "1.9", False), ("2.1", "2.0", True), ("0.1", "0.1", True),
])
def test_version_serves_same_major_and_equal_or_older_minor(server, wanted, ok):
    assert Version.parse(server).serves(Version.parse(wanted)) is ok


def test_version_parse_and_print():
    assert str(Version.parse("3")) == "3.0"
    assert Version.parse("1.12") == Version(1, 12)
    for bad in ("", "a.b", "1.x", "1.2.3"):
        with pytest.raises(ValueError):
            Version.parse(bad)
