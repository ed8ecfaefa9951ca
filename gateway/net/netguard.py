"""SSRF guard: which resolved addresses the gateway may connect to on a client's behalf (no I/O here)."""

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

_LOGGER = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Special-purpose ranges (IANA registries, RFC 6890 and successors) that are not globally reachable.
# Listed explicitly because the stdlib's is_global/is_private flags differ between Python patch releases
# and miss some (multicast, 192.88.99.0/24, fec0::/10, 3fff::/20); we refuse if either source says so.
_NON_PUBLIC_V4: tuple[IPv4Network, ...] = tuple(
    IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network", includes the unspecified 0.0.0.0
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT shared space
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, includes cloud metadata 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (incl. 192.0.0.192 Oracle metadata)
        "192.0.2.0/24",  # TEST-NET-1 documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2 documentation
        "203.0.113.0/24",  # TEST-NET-3 documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    )
)
_NON_PUBLIC_V6: tuple[IPv6Network, ...] = tuple(
    IPv6Network(cidr)
    for cidr in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form (refused outright)
        "::ffff:0:0/96",  # IPv4-mapped: only reached if the embedded check is bypassed
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, incl. Teredo 2001::/32 and benchmarking 2001:2::/48
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")

# Characters of the legacy IPv4 spellings inet_aton accepts: 127.1, 2130706433, 0x7f.1, 0177.0.0.1.
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


class DestinationRefused(Exception):
    """A URL's host resolves to an address the gateway must not contact; becomes 400 invalid_request."""


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries (mapped, NAT64 well-known prefix, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64_WELL_KNOWN:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True only for a globally routable unicast address, judging IPv6 forms by the IPv4 they embed."""
    if isinstance(ip, IPv6Address):
        # A scope id ("fe80::1%eth0") does not change which range the address is in.
        ip = IPv6Address(int(ip))
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public_address(inner)
        if any(ip in network for network in _NON_PUBLIC_V6) or ip.is_site_local:
            return False
    elif any(ip in network for network in _NON_PUBLIC_V4):
        return False
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or not ip.is_global
    )


def parse_host_literal(host: str) -> IPAddress | None:
    """Return the address a URL host spells literally, including legacy IPv4 forms; None for a name."""
    candidate = host.strip("[]")
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        pass
    if not _LEGACY_IPV4.fullmatch(candidate):
        return None
    # The forms inet_aton (and so getaddrinfo and curl) accept: 127.1, 2130706433, 0x7f000001, 0177.0.0.1.
    try:
        return IPv4Address(socket.inet_aton(candidate))
    except OSError:
        return None


def normalize_host(host: str) -> str:
    """Lower-case a host and drop brackets and a trailing dot, so allow-list matching is exact."""
    return host.strip("[]").rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Public addresses only, plus the hosts and networks ops explicitly allow (an internal image store)."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_config(cls, allow_hosts: Iterable[str] = (), allow_networks: Iterable[str] = ()) -> "AddressPolicy":
        """Build a policy from settings strings, e.g. ["images.internal"] and ["10.20.0.0/16"]."""
        return cls(
            allow_hosts=frozenset(normalize_host(host) for host in allow_hosts),
            allow_networks=tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow_networks),
        )

    def allows(self, host: str, ip: IPAddress) -> bool:
        """True if connecting to `ip` for `host` is permitted."""
        if is_public_address(ip) or normalize_host(host) in self.allow_hosts:
            return True
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, IPv6Address):
            candidates[0] = IPv6Address(int(ip))
            if ip.ipv4_mapped is not None:
                candidates.append(ip.ipv4_mapped)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allow_networks
        )

    def check(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Raise DestinationRefused unless every resolved address of `host` is allowed."""
        if not addresses:
            raise DestinationRefused(f"{host!r} did not resolve to any address")
        for ip in addresses:
            if not self.allows(host, ip):
                # The address stays in the log: echoing internal topology to clients would help an attacker.
                _LOGGER.warning("refused destination %r resolving to %s", host, ip)
                raise DestinationRefused(f"destination host {host!r} is not allowed")
