"""How a caller opens its channel to the inference service: channel options and balanced replica targets."""

from __future__ import annotations

import ipaddress
import json

# Large images travel as many small messages, so the default 4 MiB message limit never needs raising. A
# channel that lost the service reconnects within a second instead of backing off for minutes.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

# Several replicas behind one channel: gRPC's client-side round_robin keeps a connection to every address the
# target resolves to and sends each call to the next one that is READY. healthCheckConfig makes the channel
# watch each replica's grpc.health.v1 status (service "" follows Triton's readiness in the inference service),
# so a replica whose Triton is down is skipped instead of answering UNAVAILABLE. With every replica down a
# call fails at once with UNAVAILABLE (no wait_for_ready), which the gateway turns into 503 + Retry-After.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
}
BALANCED_CHANNEL_OPTIONS = (
    *CHANNEL_OPTIONS,
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    # A DNS name is re-resolved when a connection drops; this only bounds how often (pods come and go).
    ("grpc.dns_min_time_between_resolutions_ms", 1000),
)


class TargetError(ValueError):
    """An inference address list that gRPC cannot balance over; the message says what to write instead."""


def _ip_and_port(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TargetError(f"{address!r} is not host:port with a port between 1 and 65535")
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")), int(port_text)
    except ValueError:
        raise TargetError(
            f"{address!r}: a list of replicas must name IP addresses (gRPC's ipv4:/ipv6: targets); for host "
            f"names use one DNS name with one A record per replica, dns:///name:port"
        ) from None


def balanced_target(value: str) -> str:
    """The gRPC target for `value`: one host:port or any gRPC target URI (dns:///name:port, ipv4:...) as it
    is, a comma-separated list of IP:port as the `ipv4:a:p,b:p` (or `ipv6:[a]:p,...`) form round_robin
    spreads over. Raises TargetError for a list gRPC could not resolve."""
    addresses = [item.strip() for item in value.split(",")]
    if any(not item for item in addresses):
        raise TargetError(f"{value!r} has an empty address; write host:port or a comma-separated list of IP:port")
    if len(addresses) == 1:
        address = addresses[0]
        if "://" in address or address.startswith(("ipv4:", "ipv6:", "unix:")):
            return address
        host, sep, port_text = address.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TargetError(f"{address!r} is not host:port with a port between 1 and 65535")
        return address
    parsed = [_ip_and_port(address) for address in addresses]
    versions = {ip.version for ip, _ in parsed}
    if len(versions) > 1:
        raise TargetError(f"{value!r} mixes IPv4 and IPv6 addresses; gRPC balances over one family per target")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in parsed)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in parsed)
