"""The two middlewares: the envelope (errors, request id, rate-limit headers) and API-key auth with limits; and
the answer to `Expect: 100-continue`, which runs before them."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from common.logs import REQUEST_ID as LOG_REQUEST_ID
from gateway import metrics
from gateway.domain import idempotency
from gateway.domain.accounts import DISABLED_MESSAGE, Account
from gateway.domain.plans import get_plan
from gateway.domain.ratelimit import RateLimitDecision
from gateway.errors import (
    ApiError,
    Forbidden,
    InvalidApiKey,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RateLimitExceeded,
    ServerError,
    StoreUnavailable,
)
from gateway.http.appkeys import (
    ACCOUNT,
    IDEMPOTENCY_KEY,
    KEY_CACHE,
    RATE_LIMIT,
    RATE_LIMITER,
    REQUEST_ID,
    SETTINGS,
)
from gateway.store.outage import unreachable_store

_LOGGER = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
PUBLIC = "removai_public"
IDEMPOTENT = "removai_idempotent"
ERROR_RENDERER = "removai_error_renderer"
ErrorRenderer = Callable[[ApiError], web.Response]


def public(handler: Handler) -> Handler:
    """Marks a handler that needs no API key (the page, docs, signed file links)."""
    setattr(handler, PUBLIC, True)
    return handler


def idempotent(handler: Handler) -> Handler:
    """Marks a creating handler that honours Idempotency-Key (the middleware checks the key's form)."""
    setattr(handler, IDEMPOTENT, True)
    return handler


def renders_errors(renderer: ErrorRenderer) -> Callable[[Handler], Handler]:
    """Marks the handlers of another API's vocabulary (the remove.bg drop-in): every error of theirs, the
    middlewares' own (401, 429...) included, is written by `renderer` instead of as the spec's envelope."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, ERROR_RENDERER, renderer)
        return handler

    return mark


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.envelope(), status=int(error.status), headers=error.headers)


def _error_answer(request: web.Request, error: ApiError) -> web.Response:
    """The error in the vocabulary of the route it came from (the spec's envelope unless the handler says)."""
    renderer: ErrorRenderer | None = getattr(request.match_info.handler, ERROR_RENDERER, None)
    return renderer(error) if renderer is not None else error_response(error)


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    if exc.status == HTTPStatus.NOT_FOUND:
        return NotFound("no such endpoint")
    if exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = exc.headers.get("Allow", "")
        return MethodNotAllowed(f"method not allowed; use {allowed}", headers={"Allow": allowed})
    if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        return InvalidRequest("the request body is too large")
    if 400 <= exc.status < 500:
        return InvalidRequest(exc.reason)
    return ServerError("an unexpected error occurred")


def rate_limit_headers(decision: RateLimitDecision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_epoch),
    }


def add_api_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The headers every API answer carries: X-Request-Id, nosniff, no-store and, once the caller is
    authenticated, the rate-limit headers. The envelope middleware adds them to every answer not yet sent; a
    handler that streams its answer (and so sends the head itself) calls this before `prepare`."""
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # API answers carry signed output links (capabilities): no shared or on-disk caches.
    response.headers.setdefault("Cache-Control", "no-store")
    decision: RateLimitDecision | None = request.get(RATE_LIMIT)
    if decision is not None:
        response.headers.update(rate_limit_headers(decision))


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as the spec's envelope; every response carries X-Request-Id and, once the
    caller is authenticated, the rate-limit headers (errors and 429s included)."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    LOG_REQUEST_ID.set(request_id)
    response: web.StreamResponse
    try:
        response = await handler(request)
    except ApiError as error:
        response = _error_answer(request, error)
    except web.HTTPException as exc:
        response = _error_answer(request, _from_http_exception(exc))
    except Exception as exc:
        outage = unreachable_store(exc)
        if outage is None:
            _LOGGER.exception("request %s: %s %s failed", request_id, request.method, request.path)
            response = _error_answer(request, ServerError("an unexpected error occurred; it has been logged"))
        else:
            # An outage, not a bug: one line naming the store, no traceback (there would be one per request
            # for as long as it lasts), and the driver's words only (an address at most, never a password).
            _LOGGER.error(
                "request %s: %s %s failed: the %s is unreachable (%s)",
                request_id, request.method, request.path, outage.store, outage.detail,
            )
            metrics.STORE_UNAVAILABLE.labels(outage.store).inc()
            response = _error_answer(
                request, StoreUnavailable(outage.store, retry_after_s=request.app[SETTINGS].retry_after_s)
            )
    if not response.prepared:
        add_api_headers(request, response)
    return response


async def _account_of_key(request: web.Request) -> Account | None:
    """The account the request's X-API-Key names; None when the header is missing or names no active key."""
    api_key = request.headers.get("X-API-Key", "")
    return await request.app[KEY_CACHE].authenticate(api_key) if api_key else None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """X-API-Key -> account; then one hit on the account's per-minute limit. Every request counts: an
    Idempotency-Key repeat too (a replay, a 422 key reuse, one that waits on the first), since each costs the
    gateway work; a replay is only never charged to the monthly quota again."""
    if getattr(handler, PUBLIC, False) or request.match_info.http_exception is not None:
        return await handler(request)
    account = await _account_of_key(request)
    if account is None:
        raise InvalidApiKey("The API key provided is invalid or missing")
    plan = get_plan(account.plan)
    limiter = request.app[RATE_LIMITER]
    key: str | None = None
    malformed_key: InvalidRequest | None = None
    if getattr(handler, IDEMPOTENT, False):
        try:
            key = idempotency.validated_key(request.headers.get(idempotency.HEADER))
        except InvalidRequest as refusal:
            malformed_key = refusal  # refused once counted, like any other bad request
    if key is not None:
        request[IDEMPOTENCY_KEY] = key
    decision = await limiter.hit(account.id, plan.requests_per_minute)
    request[RATE_LIMIT] = decision
    if not decision.allowed:
        metrics.REFUSALS.labels("rate_limit").inc()
        raise RateLimitExceeded(
            f"rate limit of {plan.requests_per_minute} requests per minute exceeded",
            headers={"Retry-After": str(decision.retry_after_s)},
        )
    if account.disabled_at is not None:
        # Counted like any request (a disabled account's client retrying in a loop still meets its limit), and
        # after the limit so the answer carries the rate-limit headers every authenticated answer has.
        raise Forbidden(DISABLED_MESSAGE)
    if malformed_key is not None:
        raise malformed_key
    request[ACCOUNT] = account
    return await handler(request)


async def continue_when_admitted(request: web.Request) -> None:
    """Route expect handler (aiohttp calls it before any middleware): a client that sends `Expect: 100-continue`
    is told to send its body only when the API would read it: a public route, or an API key that names an
    account whose per-minute limit is not used up. Otherwise no interim answer: the middlewares answer 401 or
    429 at once, before the client has sent a byte of its upload (RFC 9110, 10.1.1). Other expectations are
    ignored (RFC 9110 allows it), so that every answer keeps the API's envelope."""
    if request.version != HttpVersion11 or request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return
    if not getattr(request.match_info.handler, PUBLIC, False):
        try:
            account = await _account_of_key(request)
            if account is None or account.disabled_at is not None:
                return
            decision = await request.app[RATE_LIMITER].peek(account.id, get_plan(account.plan).requests_per_minute)
        except Exception:  # noqa: BLE001 - the middlewares ask again and answer the error in the envelope
            return
        if decision.remaining <= 0:
            return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's own handler: the response proper has not begun


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: counts the final status (error envelopes included) per route template, not raw path."""
    started = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.REQUESTS.labels(route, request.method, str(response.status)).inc()
    metrics.LATENCY.labels(route).observe(time.perf_counter() - started)
    return response
