"""`qnet ss` writes endpoints as iproute2's ss does: IPv6 in brackets, wildcards as * or [::]."""
from launcher.cli_net import _endpoint


def test_endpoints_of_both_versions_and_wildcards():
    assert _endpoint("10.0.0.1", 80) == "10.0.0.1:80"
    assert _endpoint(None, 80) == "*:80" and _endpoint("0.0.0.0", 80, 4) == "*:80"
    assert _endpoint("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert _endpoint("::", 22) == "[::]:22" and _endpoint(None, 22, 6) == "[::]:22"
    assert _endpoint("::ffff:10.0.0.2", 5) == "[::ffff:10.0.0.2]:5"
