"""Signed webhook delivery: HMAC-SHA256 signatures and background POSTs with bounded, backed-off retries."""

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

import aiohttp

from gateway.netguard import AddressPolicy, DestinationRefused
from gateway.urlfetch import FetchError, check_url, create_guarded_connector

_LOGGER = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-RemovAI-Timestamp"
SIGNATURE_HEADER = "X-RemovAI-Signature"
DELIVERY_HEADER = "X-RemovAI-Delivery"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300
_USER_AGENT = "RemovAI-Webhooks/1.0"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of f"{timestamp}." + body under `secret`; binding the timestamp defeats replays."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The X-RemovAI-Timestamp and X-RemovAI-Signature headers for `body`, signed now unless told otherwise."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    return {
        TIMESTAMP_HEADER: str(signed_at),
        SIGNATURE_HEADER: f"{SIGNATURE_VERSION}={sign(secret, signed_at, body)}",
    }


def verify(
    secret: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver runs: True if `signature` (the header, "v1=<hex>"; several may be comma-separated)
    signs `body` at `timestamp` under `secret` and the timestamp is within `tolerance_s` of `now`."""
    try:
        signed_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - signed_at) > tolerance_s:
        return False
    expected = sign(secret, signed_at, body)
    matched = False
    for candidate in signature.split(","):
        version, _, digest = candidate.strip().partition("=")
        # Compare every candidate, in constant time, so timing reveals neither position nor prefix.
        if version == SIGNATURE_VERSION and hmac.compare_digest(digest.encode(), expected.encode()):
            matched = True
    return matched


def _is_retryable(status: int) -> bool:
    """5xx and 429 may succeed later; any other non-2xx is the receiver's final word."""
    return status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR


class WebhookSender:
    """Delivers webhooks in the background over one ClientSession; submit() never blocks or raises.

    Deliveries live only in memory: ones still pending when close() runs out of grace are dropped (logged).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        max_attempts: int = 5,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        attempt_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._policy = policy
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._timeout = aiohttp.ClientTimeout(
            total=attempt_timeout_s, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Open the HTTP session; call once, inside the running loop (e.g. from a cleanup_ctx)."""
        if self._session is not None:
            raise RuntimeError("WebhookSender already started")
        self._session = aiohttp.ClientSession(
            connector=create_guarded_connector(self._policy),
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={aiohttp.hdrs.USER_AGENT: _USER_AGENT},
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Deliveries not yet finished (in flight or waiting to retry)."""
        return len(self._tasks)

    def submit(self, url: str, payload: Mapping[str, Any], secret: str) -> None:
        """Schedule signed delivery of `payload` as JSON to `url` and return at once; failures are only logged."""
        if self._session is None or self._closing:
            _LOGGER.error("webhook to %s dropped: sender is not running", url)
            return
        try:
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError):
            _LOGGER.exception("webhook to %s dropped: payload is not JSON-serialisable", url)
            return
        delivery_id = f"whd_{uuid.uuid4().hex}"
        task = asyncio.create_task(self._deliver(url, body, secret, delivery_id), name=f"webhook {delivery_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self) -> None:
        """Wait until every delivery submitted so far has succeeded or been given up on."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting, give in-flight deliveries `grace_s` to finish, cancel the rest, close the session."""
        self._closing = True
        if self._tasks:
            _done, still_pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            if still_pending:
                _LOGGER.warning("cancelling %d undelivered webhooks at shutdown", len(still_pending))
                for task in still_pending:
                    task.cancel()
                await asyncio.gather(*still_pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _backoff_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Exponential backoff with jitter (half fixed, half random) so failing receivers are not stampeded;
        a receiver's numeric Retry-After is honoured up to max_delay_s."""
        ceiling = min(self._max_delay_s, self._base_delay_s * 2.0 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), self._max_delay_s))
        return delay

    async def _deliver(self, url: str, body: bytes, secret: str, delivery_id: str) -> None:
        """Attempt delivery up to max_attempts times; never raises (a background task has no caller)."""
        try:
            await self._attempt_all(url, body, secret, delivery_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("webhook %s to %s failed unexpectedly", delivery_id, url)

    async def _attempt_all(self, url: str, body: bytes, secret: str, delivery_id: str) -> None:
        try:
            target = check_url(url, self._policy)
        except FetchError as error:
            _LOGGER.warning("webhook %s not sent: %s", delivery_id, error)
            return
        session = self._session
        assert session is not None, "deliveries are only scheduled while the session is open"
        for attempt in range(1, self._max_attempts + 1):
            retry_after: str | None = None
            headers = {
                aiohttp.hdrs.CONTENT_TYPE: "application/json",
                DELIVERY_HEADER: delivery_id,
                **signature_headers(secret, body),
            }
            try:
                # Redirects are not followed: a receiver must not bounce our signed POST elsewhere.
                async with session.post(target, data=body, headers=headers, allow_redirects=False) as response:
                    status = response.status
                    retry_after = response.headers.get(aiohttp.hdrs.RETRY_AFTER)
            except DestinationRefused as error:
                _LOGGER.warning("webhook %s not sent: %s", delivery_id, error)
                return
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.__cause__, DestinationRefused):
                    _LOGGER.warning("webhook %s not sent: %s", delivery_id, error.__cause__)
                    return
                outcome = f"connection failed: {error}"
            except (aiohttp.ClientError, TimeoutError) as error:
                outcome = f"request failed: {error!r}"
            else:
                if HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
                    _LOGGER.info("webhook %s delivered to %s (attempt %d)", delivery_id, url, attempt)
                    return
                if not _is_retryable(status):
                    _LOGGER.warning(
                        "webhook %s refused by %s with HTTP %d; not retrying", delivery_id, url, status
                    )
                    return
                outcome = f"HTTP {status}"
            if attempt < self._max_attempts:
                delay = self._backoff_s(attempt, retry_after)
                _LOGGER.info(
                    "webhook %s attempt %d/%d: %s; retrying in %.2fs",
                    delivery_id, attempt, self._max_attempts, outcome, delay,
                )
                await asyncio.sleep(delay)
            else:
                _LOGGER.error(
                    "webhook %s to %s given up after %d attempts; last: %s",
                    delivery_id, url, self._max_attempts, outcome,
                )
