"""The caller's webhook signing secret: show it, and rotate it with a window in which both secrets sign."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from gateway.domain import accounts
from gateway.domain.accounts import Account, utc_now
from gateway.errors import NotFound
from gateway.http.appkeys import SESSIONS, SETTINGS, account_of
from gateway.http.handlers.envelope import ok
from gateway.schemas import EmptyMeta, WebhookSecret, WebhookSecretEnvelope, iso

# A secret must not linger in a browser's or a proxy's cache.
_NO_STORE = {"Cache-Control": "no-store"}


def webhook_secret(account: Account) -> WebhookSecret:
    """The secret, when it was last rotated and until when the previous one still signs (null: it does not)."""
    previous_until = account.previous_webhook_secret_expires_at
    if previous_until is not None and previous_until <= utc_now():
        previous_until = None
    return WebhookSecret(
        secret=account.webhook_secret, rotated_at=iso(account.webhook_secret_rotated_at),
        previous_secret_expires_at=iso(previous_until),
    )


def _answer(account: Account) -> web.Response:
    response = ok(WebhookSecretEnvelope(success=True, data=webhook_secret(account), meta=EmptyMeta()))
    response.headers.update(_NO_STORE)
    return response


async def get_webhook_secret(request: web.Request) -> web.Response:
    """GET /v1/account/webhook-secret: the caller's own current signing secret (never another account's)."""
    return _answer(account_of(request))


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """POST /v1/account/webhook-secret/rotate: a new secret; the old one keeps signing for the overlap window."""
    overlap = dt.timedelta(seconds=request.app[SETTINGS].webhook_secret_overlap_s)
    account = await accounts.rotate_webhook_secret(request.app[SESSIONS], account_of(request).id, overlap)
    if account is None:  # deleted between authentication and now
        raise NotFound("no such account")
    return _answer(account)
