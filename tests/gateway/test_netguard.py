"""SSRF address-check tests: pure address logic, no connection is ever attempted."""

import ipaddress

import pytest

from gateway.net.netguard import (
    AddressPolicy,
    DestinationRefused,
    embedded_ipv4,
    is_public_address,
    normalize_host,
    parse_host_literal,
)

NON_PUBLIC = [
    # loopback, unspecified, "this network"
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "::1",
    "::",
    # private and carrier-grade NAT
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.254",
    # link-local and cloud metadata endpoints
    "169.254.0.1",
    "169.254.169.254",
    "192.0.0.192",
    "fe80::1",
    "fe80::1%eth0",
    "fd00:ec2::254",
    # multicast, broadcast, reserved
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "ff02::1",
    "ff0e::1",
    # documentation and benchmarking
    "192.0.2.10",
    "198.51.100.7",
    "203.0.113.99",
    "198.18.0.1",
    "198.19.255.255",
    "2001:db8::1",
    "3fff::1",
    "2001:2::1",
    # IPv6 special ranges
    "fc00::1",
    "fd12:3456:789a::1",
    "fec0::1",
    "100::1",
    "2001::1",  # Teredo
    "64:ff9b:1::1",  # local-use NAT64
    "5f00::1",
    "192.88.99.1",
    # IPv6 forms embedding a non-public IPv4
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::ffff:0.0.0.0",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "::8.8.8.8",  # IPv4-compatible is refused even with a public IPv4 inside
    "64:ff9b::127.0.0.1",  # NAT64
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::",  # 6to4 of 192.168.1.1
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "151.101.1.69",
    "100.128.0.1",  # just past CGNAT
    "172.32.0.1",  # just past 172.16/12
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # mapped public
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses_are_refused(address: str) -> None:
    """Loopback, private, link-local/metadata, multicast, reserved, documentation and embedded forms are not public."""
    assert is_public_address(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_accepted(address: str) -> None:
    """Globally routable unicast addresses, including IPv6 forms embedding a public IPv4, are public."""
    assert is_public_address(ipaddress.ip_address(address)) is True


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("2852039166", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("[::1]", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("134744072", "8.8.8.8"),
    ],
)
def test_host_literals_parse_like_inet_aton(host: str, expected: str) -> None:
    """Legacy IPv4 spellings (127.1, decimal, hex, octal) and bracketed IPv6 parse to the address they denote."""
    assert parse_host_literal(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["example.com", "localhost", "cafe.be", "images.internal", "1e100.net", "a.b.c"])
def test_host_names_are_not_literals(host: str) -> None:
    """Ordinary names, even hex-looking ones, are left for DNS resolution."""
    assert parse_host_literal(host) is None


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "0", "[::ffff:127.0.0.1]", "2852039166"])
def test_parsed_legacy_literals_are_refused_by_default(host: str) -> None:
    """Once parsed, the decimal/hex/short forms of loopback and metadata addresses are refused."""
    ip = parse_host_literal(host)
    assert ip is not None
    with pytest.raises(DestinationRefused):
        AddressPolicy().check(host, [ip])


def test_embedded_ipv4_extraction() -> None:
    """Mapped, NAT64 and 6to4 addresses yield their IPv4; a native IPv6 address yields None."""
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:1.2.3.4")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::102:304")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(ipaddress.IPv6Address("2002:102:304::")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) is None


def test_default_policy_accepts_public_and_refuses_any_private_address() -> None:
    """A host is refused if ANY of its resolved addresses is non-public (mixed answers cannot sneak through)."""
    policy = AddressPolicy()
    policy.check("example.com", [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("2606:2800::1")])
    with pytest.raises(DestinationRefused) as refused:
        policy.check("example.com", [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.5")])
    assert "10.0.0.5" not in str(refused.value)


def test_empty_resolution_is_refused() -> None:
    """A host that resolved to nothing is refused rather than waved through."""
    with pytest.raises(DestinationRefused):
        AddressPolicy().check("example.com", [])


def test_allow_hosts_matches_names_case_insensitively() -> None:
    """An allowed host name may resolve privately; other names resolving to the same address may not."""
    policy = AddressPolicy.from_config(allow_hosts=["Images.Internal."])
    private = [ipaddress.ip_address("10.20.0.5")]
    policy.check("images.internal", private)
    policy.check("IMAGES.INTERNAL.", private)
    with pytest.raises(DestinationRefused):
        policy.check("evil.example", private)
    with pytest.raises(DestinationRefused):
        policy.check("10.20.0.5", private)


def test_allow_networks_admits_only_those_ranges() -> None:
    """An allowed network admits its addresses (and their IPv4-mapped forms) and nothing next to it."""
    policy = AddressPolicy.from_config(allow_networks=["10.20.0.0/16", "fd00:1::/64"])
    policy.check("store", [ipaddress.ip_address("10.20.3.4")])
    policy.check("store", [ipaddress.ip_address("::ffff:10.20.3.4")])
    policy.check("store", [ipaddress.ip_address("fd00:1::9")])
    for address in ["10.21.0.1", "127.0.0.1", "169.254.169.254", "fd00:2::1"]:
        with pytest.raises(DestinationRefused):
            policy.check("store", [ipaddress.ip_address(address)])


def test_normalize_host() -> None:
    """Brackets, trailing dots and case do not change a host's identity."""
    assert normalize_host("[::1]") == "::1"
    assert normalize_host("LocalHost.") == "localhost"
