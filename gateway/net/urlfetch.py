"""Fetching a client's image URL safely: policy-checked resolution, manual redirects, a streamed size cap."""

import asyncio
import logging
import re
import socket
from dataclasses import dataclass
from http import HTTPStatus
from ipaddress import ip_address
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from gateway.net.netguard import AddressPolicy, DestinationRefused, IPAddress, parse_host_literal

_LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 25 * 1024 * 1024  # the spec's 25 MB upload limit, applied to URLs too
ALLOWED_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset(
    {
        HTTPStatus.MOVED_PERMANENTLY,
        HTTPStatus.FOUND,
        HTTPStatus.SEE_OTHER,
        HTTPStatus.TEMPORARY_REDIRECT,
        HTTPStatus.PERMANENT_REDIRECT,
    }
)
_CHUNK_BYTES = 64 * 1024
_USER_AGENT = "RemovAI-ImageFetcher/1.0"


class FetchError(Exception):
    """Base of every failure to fetch a client-supplied URL; each subclass becomes 400 invalid_request."""


class InvalidImageURL(FetchError):
    """The URL is malformed or has no host; becomes 400 invalid_request."""


class FetchRefused(FetchError):
    """The URL's scheme is not http/https, or a hop's destination is refused by the AddressPolicy (SSRF);
    becomes 400 invalid_request."""


class TooManyRedirects(FetchError):
    """The origin redirected more than max_redirects times; becomes 400 invalid_request."""


class UpstreamError(FetchError):
    """The origin answered with a non-2xx status (or a redirect without Location); becomes 400 invalid_request."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UpstreamUnreachable(FetchError):
    """The origin's name did not resolve, the connection failed or broke mid-response; becomes 400
    invalid_request."""


class FetchTimeout(FetchError):
    """Connecting to or downloading from the origin exceeded its deadline; becomes 400 invalid_request."""


class ImageTooLarge(FetchError):
    """The image exceeds max_bytes (declared or while streaming); becomes 400 invalid_request, the same
    status an oversized upload gets, since the 25 MB limit is a documented request constraint rather than
    a property of the image that processing discovered (422)."""


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """The downloaded bytes (Content-Type deliberately ignored: the caller sniffs) and the URL they came from."""

    content: bytes
    final_url: str


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that checks every address it returns, so the connection goes to a checked address.

    aiohttp connects to exactly the addresses a resolver returns, so checking here (rather than resolving
    once to check and letting the connector resolve again) leaves no window for DNS rebinding.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host` with the system resolver and raise DestinationRefused if any address is refused."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        results: list[ResolveResult] = []
        addresses: list[IPAddress] = []
        for info_family, _type, proto, _canonname, sockaddr in infos:
            address = str(sockaddr[0])
            addresses.append(ip_address(address))
            if info_family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
                # Link-local answers need their zone to be connectable.
                address = f"{address}%{sockaddr[3]}"
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=int(sockaddr[1]),
                    family=info_family,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        self._policy.check(host, addresses)
        return results

    async def close(self) -> None:
        """Nothing to release: resolution uses the event loop's executor."""


def create_guarded_connector(policy: AddressPolicy, **connector_options: Any) -> aiohttp.TCPConnector:
    """A TCPConnector whose every name resolution is checked against `policy` and never cached."""
    return aiohttp.TCPConnector(resolver=PolicyResolver(policy), use_dns_cache=False, **connector_options)


def redact_url(url: str | URL) -> str:
    """The URL as it may be logged: scheme, host, port and path only. The query string and userinfo often
    carry credentials (presigned tokens, `?token=`, `user:password@`) and logs outlive them; the fragment
    is dropped with them."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        if not parsed.absolute:
            return parsed.path or "<relative URL>"
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<malformed URL>"


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_urls_in(text: str) -> str:
    """`text` (an exception's message, say) with every URL in it passed through redact_url."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def check_url(url: str | URL, policy: AddressPolicy) -> URL:
    """Validate scheme and host, check a literal-address host now (names are checked at resolution),
    and return the URL with a legacy numeric host (127.1, 2130706433) rewritten to its canonical form."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError) as error:
        raise InvalidImageURL("the URL is malformed") from error
    if not parsed.scheme:
        raise InvalidImageURL("the URL must be absolute, starting with https:// or http://")
    if parsed.scheme.lower() not in ALLOWED_SCHEMES:
        raise FetchRefused(f"URL scheme {parsed.scheme!r} is not allowed; use http or https")
    host = parsed.raw_host
    if not host:
        raise InvalidImageURL("the URL has no host")
    literal = parse_host_literal(host)
    if literal is None:
        if host.replace(".", "").isdigit():
            # All digits and dots but not an address (e.g. 1.2.3.4.5): no resolver should guess.
            raise InvalidImageURL("the URL's host is not a valid address")
        return parsed
    try:
        policy.check(host, [literal])
    except DestinationRefused as error:
        raise FetchRefused(str(error)) from error
    canonical = literal.compressed
    return parsed if canonical == host.strip("[]") else parsed.with_host(canonical)


async def _read_bounded(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Read the body, refusing as soon as it is known to exceed max_bytes; never reads past max_bytes+chunk."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise ImageTooLarge(f"the image is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise ImageTooLarge(f"the image exceeds the {max_bytes}-byte limit")
    return bytes(body)


async def _fetch(
    session: aiohttp.ClientSession, target: URL, policy: AddressPolicy, max_bytes: int, max_redirects: int
) -> FetchedImage:
    """GET `target`, following at most `max_redirects` redirects, each re-checked against the policy."""
    for hop in range(max_redirects + 1):
        async with session.get(target, allow_redirects=False) as response:
            try:
                if response.status in _REDIRECT_STATUSES:
                    location = response.headers.get(aiohttp.hdrs.LOCATION)
                    if not location:
                        raise UpstreamError("the origin redirected without a Location", response.status)
                    if hop == max_redirects:
                        raise TooManyRedirects(f"more than {max_redirects} redirects")
                    try:
                        next_url = response.url.join(URL(location))
                    except ValueError as error:
                        raise UpstreamError("the origin redirected to a malformed URL", response.status) from error
                    target = check_url(next_url, policy)
                    _LOGGER.debug("following redirect %d to %s", hop + 1, redact_url(target))
                    continue
                if not HTTPStatus.OK <= response.status < HTTPStatus.MULTIPLE_CHOICES:
                    raise UpstreamError(f"the origin answered HTTP {response.status}", response.status)
                content = await _read_bounded(response, max_bytes)
            except FetchError:
                # Drop the connection instead of draining a body we refuse to read.
                response.close()
                raise
            return FetchedImage(content=content, final_url=str(response.url))
    raise AssertionError("unreachable: the loop returns or raises on its last hop")


async def fetch_image(
    url: str,
    *,
    policy: AddressPolicy,
    max_bytes: int = DEFAULT_MAX_BYTES,
    connect_timeout: float,
    total_timeout: float,
    max_redirects: int = 5,
) -> FetchedImage:
    """Download a client-supplied image URL, or raise a FetchError subclass saying why not.

    Every hop is checked: a literal-address host before connecting, a name at the moment it is resolved
    for the connection. `total_timeout` bounds the whole fetch, redirects included.
    """
    target = check_url(url, policy)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
    session = aiohttp.ClientSession(
        connector=create_guarded_connector(policy),
        timeout=timeout,
        # Byte counting must be on the wire bytes: no transparent decompression (zip bombs), no cookies.
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={aiohttp.hdrs.USER_AGENT: _USER_AGENT, aiohttp.hdrs.ACCEPT_ENCODING: "identity"},
    )
    deadline = asyncio.timeout(total_timeout)
    try:
        async with session, deadline:
            return await _fetch(session, target, policy, max_bytes, max_redirects)
    except TimeoutError as error:
        if deadline.expired():
            raise FetchTimeout(f"fetching the image took longer than {total_timeout:g}s") from error
        raise FetchTimeout(f"connecting to the image host took longer than {connect_timeout:g}s") from error
    except DestinationRefused as error:
        raise FetchRefused(str(error)) from error
    except aiohttp.ClientConnectorError as error:
        if isinstance(error.__cause__, DestinationRefused):
            raise FetchRefused(str(error.__cause__)) from error
        _LOGGER.info("image host unreachable for %s: %s", redact_url(url), redact_urls_in(str(error)))
        raise UpstreamUnreachable("the image host could not be reached") from error
    except aiohttp.InvalidURL as error:
        raise InvalidImageURL("the URL is malformed") from error
    except aiohttp.ClientError as error:
        _LOGGER.info("image download failed for %s: %s", redact_url(url), redact_urls_in(str(error)))
        raise UpstreamUnreachable("the image download failed") from error
