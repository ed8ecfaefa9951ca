"""Turning one source into cut-out bytes: through the gateway over HTTP, or straight to the gRPC service,
with bounded retries (tenacity: 429 waits for the rate-limit window; 5xx, lost connections and the gRPC
statuses the contract calls retryable back off exponentially; anything else fails at once)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import grpc
import tenacity
from aiohttp.abc import AbstractResolver, ResolveResult

from contract.client import remove_background
from contract.errors import is_retryable, reason_of
from contract.options import RemovalOptions
from removai.v1 import inference_pb2_grpc as pb_grpc
from removai_cli.inputs import Source, UsageError

_LOGGER = logging.getLogger(__name__)


class RemovalError(Exception):
    """One source failed for good: the API's error code, its message and the HTTP status or gRPC code."""

    def __init__(self, code: str, message: str, status: int | str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def describe(self) -> str:
        status = f" ({self.status})" if self.status is not None else ""
        return f"{self.code}{status}: {self.message}"


@dataclass(frozen=True)
class Removal:
    """What the CLI asks for every image: the contract's options, plus a local background image's bytes."""

    options: RemovalOptions = field(default_factory=RemovalOptions)
    bg_image: bytes | None = None  # a local --bg-image file

    @property
    def bg_image_url(self) -> str | None:
        return self.options.bg_image_url

    def json_fields(self) -> dict[str, str | bool]:
        """The options as the API's JSON fields; output_format and output_size are always sent."""
        return {
            "output_format": self.options.output_format.value, "output_size": self.options.output_size.value,
            **self.options.fields(),
        }

    def form_fields(self) -> dict[str, str]:
        """The options as the API's text fields (a multipart form; bg_image, a file, is not one)."""
        return {name: (str(value).lower() if isinstance(value, bool) else str(value))
                for name, value in self.json_fields().items()}


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries one request gets (429 waits included) and how long the waits between them are."""

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    # A 429 asking for a longer wait (e.g. a monthly quota used up) fails at once instead of hanging the run.
    max_wait_s: float = 120.0

    def backoff(self) -> tenacity.wait.wait_base:
        """base, 2 x base, 4 x base ... up to max_delay_s, each drawn at random below that bound ("full
        jitter"), so concurrent retries do not arrive together."""
        return tenacity.wait_random_exponential(multiplier=self.base_delay_s, max=self.max_delay_s)


class _Again(Exception):
    """One attempt failed in a way worth another try; `wait_s` is the wait the server asked for, if any."""

    def __init__(self, error: RemovalError, wait_s: float | None) -> None:
        super().__init__(error.describe())
        self.error = error
        self.wait_s = wait_s


def _retrying(policy: RetryPolicy, retry: tenacity.retry_base) -> tenacity.AsyncRetrying:
    """At most policy.max_attempts tries; between them the wait the server asked for, else the backoff."""
    backoff = policy.backoff()

    def wait(state: tenacity.RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, _Again) and failure.wait_s is not None:
            return failure.wait_s
        return float(backoff(state))

    def log(state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        _LOGGER.info("%s; retrying in %.1f s", failure, delay)

    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts), wait=wait, retry=retry, before_sleep=log,
        reraise=True,
    )


def requested_wait_s(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds a 429/503 asks us to wait: Retry-After (seconds or HTTP date), else X-RateLimit-Reset (epoch)."""
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(retry_after).timestamp() - now)
            except (TypeError, ValueError):
                pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            pass
    return None


def _api_error(status: int, body: bytes) -> RemovalError:
    """The API's error envelope as a RemovalError; anything else (a proxy's HTML page) by its status."""
    try:
        error = json.loads(body)["error"]
        return RemovalError(str(error["code"]), str(error["message"]), status)
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()[:200]
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "unexpected status"
        return RemovalError(f"http_{status}", text or phrase, status)


def api_base(url: str) -> str:
    """The gateway's base URL without a trailing `/` or `/v1` (the stack's banner prints it with `/v1`)."""
    base = url.strip().rstrip("/")
    if base.lower().endswith("/v1"):
        base = base[: -len("/v1")]
    return base


def origin(url: str) -> str:
    """scheme://host:port of a URL: where a connection error happened, without the signed query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


def unreachable(where: str, error: aiohttp.ClientConnectorError) -> str:
    """What went wrong connecting to `where`, in words a user can act on: nothing listens there, the name does
    not resolve, the server does not speak TLS (or its certificate is not trusted), or the system's own reason."""
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return (f"cannot reach the gateway at {where}: the name {error.host} does not resolve (check the spelling, "
                "or this machine's DNS)")
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        reason = getattr(error.certificate_error, "verify_message", None) or error.certificate_error
        return (f"cannot reach the gateway at {where}: its TLS certificate is not trusted ({reason}); a private "
                "CA's certificate goes in SSL_CERT_FILE")
    if isinstance(error, aiohttp.ClientSSLError):
        reason = getattr(error.os_error, "reason", None) or error.os_error
        hint = f": try http://{urlsplit(where).netloc}" if where.startswith("https://") else ""
        return (f"cannot reach the gateway at {where}: the TLS handshake failed ({reason}); the server there does "
                f"not speak HTTPS{hint}")
    if isinstance(error.os_error, ConnectionRefusedError):
        return f"cannot reach the gateway at {where}: connection refused, nothing listens there (is it running?)"
    reason = error.os_error.strerror or str(error.os_error) or type(error.os_error).__name__
    return f"cannot reach the gateway at {where}: {reason}"


class SpecialUseNames(AbstractResolver):
    """The system's resolver, except that names under `.invalid` are answered "does not resolve" at once, as
    RFC 6761 asks resolvers to: no DNS query leaves the machine for a name that can never exist."""

    def __init__(self) -> None:
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        name = host.rstrip(".").lower()
        if name == "invalid" or name.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await self._resolver.resolve(host, port, family)

    async def close(self) -> None:
        await self._resolver.close()


def url_problem(url: str) -> str | None:
    """Why `url` cannot be the gateway's base URL (no scheme, not HTTP), or None: said before anything is
    sent, since aiohttp's own words for it ("non-HTTP URL") do not say what to type."""
    if "://" not in url:
        return f"the gateway URL {url!r} has no scheme: add http:// (http://{url}) or https://"
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        return f"the gateway URL {url!r} must start with http:// or https://, not {scheme}://"
    if not urlsplit(url).hostname:
        return f"the gateway URL {url!r} names no host: e.g. http://127.0.0.1:8080"
    return None


class Remover(Protocol):
    async def remove(self, source: Source) -> bytes:
        """The encoded cut-out; raises RemovalError."""
        ...

    def waiting_s(self) -> float:
        """Seconds every request still holds back for the rate-limit window (0 when not waiting)."""
        ...


class GatewayRemover:
    """The public API: POST the file or URL, then download `output_url`; one aiohttp session for all."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str, options: Removal,
        policy: RetryPolicy, *, clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._base_url = api_base(base_url)
        self._given_url = base_url
        self._api_key = api_key
        self._options = options
        self._policy = policy
        self._clock = clock
        # After a 429 every worker holds back until the window resets, not only the one that was refused.
        self._paused_until = 0.0
        self.attempts = 0

    @property
    def base_url(self) -> str:
        return self._base_url

    def waiting_s(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def check_access(self, timeout_s: float) -> dict[str, Any]:
        """GET /v1/account once before any upload, so a wrong key, a wrong URL or a gateway that is down stops
        the run with one line instead of one failure per file; returns the account (empty after a 429)."""
        where = self._base_url
        problem = url_problem(self._given_url.strip())
        if problem is not None:
            raise UsageError(problem)
        try:
            async with self._session.get(
                f"{where}/v1/account", headers={"X-API-Key": self._api_key},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                status, body = response.status, await response.read()
        except aiohttp.ClientConnectorError as exc:
            raise UsageError(unreachable(where, exc)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UsageError(f"no usable answer from the gateway at {where} ({str(exc) or type(exc).__name__})") from exc
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            return {}  # the key was accepted; the uploads wait for the window like any other 429
        if status < 300:
            try:
                account = json.loads(body)["data"]
                if isinstance(account, dict):
                    return account
            except (ValueError, KeyError, TypeError):
                pass
            raise UsageError(f"{where} does not look like the RemovAI API (GET /v1/account gave no account)")
        error = _api_error(status, body)
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            raise UsageError(
                f"the gateway at {where} refused the API key ({status} {error.code}: {error.message}); "
                "check --api-key or $REMOVAI_API_KEY"
            )
        if status == HTTPStatus.NOT_FOUND:
            raise UsageError(
                f"{where} has no RemovAI API (GET {where}/v1/account answered 404); give the gateway's base URL, "
                "for example http://127.0.0.1:8080"
            )
        raise UsageError(f"the gateway at {where} cannot take work now: {error.describe()}")

    async def remove(self, source: Source) -> bytes:
        headers = {"X-API-Key": self._api_key}
        if source.path is not None:
            image = await asyncio.to_thread(source.path.read_bytes)

            def post() -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
                form = aiohttp.FormData()
                for name, value in self._options.form_fields().items():
                    form.add_field(name, value)
                form.add_field("file", image, filename=source.path.name if source.path else "image",
                               content_type="application/octet-stream")
                if self._options.bg_image is not None:
                    form.add_field("bg_image", self._options.bg_image, filename="background",
                                   content_type="application/octet-stream")
                return self._session.post(f"{self._base_url}/v1/remove-background/file", data=form, headers=headers)
        else:
            if self._options.bg_image is not None:
                raise RemovalError(
                    "invalid_request", "a local --bg-image goes with local files; for URLs give its URL"
                )
            payload: dict[str, Any] = {"url": source.url, **self._options.json_fields()}

            def post() -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
                return self._session.post(f"{self._base_url}/v1/remove-background/url", json=payload, headers=headers)

        body = await self._send(post, self._base_url)
        try:
            output_url = json.loads(body)["data"]["output_url"]
            if not isinstance(output_url, str) or not output_url:
                raise TypeError("output_url")
        except (ValueError, KeyError, TypeError) as exc:
            raise RemovalError("bad_response", f"the gateway's answer has no output_url ({exc})") from exc
        # The link is signed and public: the API key is not sent with it (it may point at another host).
        return await self._send(lambda: self._session.get(output_url), origin(output_url))

    async def _send(
        self, request: Callable[[], AbstractAsyncContextManager[aiohttp.ClientResponse]], where: str
    ) -> bytes:
        """One request with the policy's retries; the response body on 2xx, else RemovalError."""
        try:
            body: bytes = await _retrying(self._policy, tenacity.retry_if_exception_type(_Again))(
                self._attempt, request, where
            )
        except _Again as again:
            raise again.error from again.__cause__
        return body

    async def _attempt(
        self, request: Callable[[], AbstractAsyncContextManager[aiohttp.ClientResponse]], where: str
    ) -> bytes:
        """One try: the body on 2xx; _Again for what is worth another try; RemovalError for a final answer."""
        pause = self._paused_until - self._clock()
        if pause > 0:
            await asyncio.sleep(pause)
        self.attempts += 1
        try:
            async with request() as response:
                status, headers, body = response.status, response.headers, await response.read()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                message = unreachable(where, exc)
            elif isinstance(exc, TimeoutError):
                message = f"no answer from {where} within the time limit (--timeout)"
            else:
                message = f"the connection to {where} broke: {str(exc) or type(exc).__name__}"
            raise _Again(RemovalError("connection_error", message), None) from exc
        if status < 300:
            return body
        error = _api_error(status, body)
        if status == HTTPStatus.TOO_MANY_REQUESTS and error.code != "quota_exceeded":
            wait = requested_wait_s(headers, self._clock())
            if wait is None:
                raise _Again(error, None)
            if wait > self._policy.max_wait_s:
                raise error
            # Every worker holds back until the window resets, not only this one: the next try of each
            # request waits out the pause, so tenacity itself waits no longer.
            _LOGGER.info("rate limited; waiting %.0f s for the window to reset", wait)
            self._paused_until = max(self._paused_until, self._clock() + wait)
            raise _Again(error, 0.0)
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            wait = requested_wait_s(headers, self._clock())
            raise _Again(error, wait if wait is not None and wait <= self._policy.max_wait_s else None)
        raise error


def _retryable_rpc(failure: BaseException) -> bool:
    """The contract's retryable set: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED unless the image is
    too large; a deterministic failure (bad input, INTERNAL) is never sent again."""
    return isinstance(failure, grpc.aio.AioRpcError) and is_retryable(failure.code(), reason_of(failure))


class DirectRemover:
    """The internal gRPC service, bypassing the gateway (no key, no quota): local files only."""

    def __init__(
        self, stub: pb_grpc.BackgroundRemovalAsyncStub, options: Removal, policy: RetryPolicy, timeout_s: float
    ) -> None:
        if options.bg_image_url:
            raise RemovalError("invalid_request", "--grpc takes a local --bg-image file, not a URL")
        self._stub = stub
        self._background = options.bg_image
        self._options = options.options.message()
        self._policy = policy
        self._timeout_s = timeout_s
        self.attempts = 0

    def waiting_s(self) -> float:
        return 0.0  # the inference service has no rate limit

    async def remove(self, source: Source) -> bytes:
        if source.path is None:
            raise RemovalError("invalid_request", "URLs need the gateway; --grpc takes local files only")
        image = await asyncio.to_thread(source.path.read_bytes)
        try:
            data: bytes = await _retrying(self._policy, tenacity.retry_if_exception(_retryable_rpc))(
                self._call, image
            )
        except grpc.aio.AioRpcError as error:
            raise RemovalError(_error_code(error), error.details() or "", error.code().name) from error
        return data

    async def _call(self, image: bytes) -> bytes:
        self.attempts += 1
        result = await remove_background(
            self._stub, image, self._options, timeout_s=self._timeout_s, background=self._background
        )
        return result.data


def _error_code(error: grpc.aio.AioRpcError) -> str:
    """The failure's ErrorInfo reason (contract.errors), else its gRPC status, in lower case."""
    return (reason_of(error) or error.code().name).lower()
