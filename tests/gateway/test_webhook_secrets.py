"""Webhook secrets are the account's to see and rotate: the endpoints, `removai-admin`, two signatures during the
rotation window (checked with the `standardwebhooks` library and with gateway.jobs.webhook_signing.verify), and the SQLite
file's 0600 mode. No Triton: the gateway's inference address is an unused port."""

import asyncio
import base64
import contextlib
import datetime as dt
import io
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from sqlalchemy import update
from standardwebhooks import Webhook, WebhookVerificationError

from gateway import admin as admin_command
from gateway.domain import accounts
from gateway.http.appkeys import SESSIONS
from gateway.jobs.webhook_outbox import WebhookSender
from gateway.jobs.webhook_signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    STANDARD_ID_HEADER,
    STANDARD_SIGNATURE_HEADER,
    STANDARD_TIMESTAMP_HEADER,
    TIMESTAMP_HEADER,
    delivery_headers,
    verify,
)
from gateway.net.netguard import AddressPolicy
from gateway.store.database import Sessions, create_database_engine, upgrade_schema
from gateway.store.tables import Account, utc_now
from tests.gateway.harness import Gateway, gateway
from tests.gateway.test_openapi import Contract
from tools.triton_launcher import free_port

LOOPBACK_POLICY = AddressPolicy.from_config(allow_networks=["127.0.0.0/8"])
PAYLOAD = {"event": "image.completed", "data": {"id": "img_12345abcde", "status": "completed"}}
SECRET_PATH = "/v1/account/webhook-secret"
ROTATE_PATH = "/v1/account/webhook-secret/rotate"
OVERLAP_S = 3600


# --- helpers ---------------------------------------------------------------------------------------------


def standard_verifies(secret: str, headers: CIMultiDictProxy[str] | dict[str, str], body: bytes) -> bool:
    """What a receiver using the `standardwebhooks` library concludes."""
    try:
        Webhook(secret).verify(body, {name: headers[name] for name in headers}, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


def removai_verifies(secret: str, headers: CIMultiDictProxy[str] | dict[str, str], body: bytes) -> bool:
    """What an existing receiver checking X-RemovAI-Signature concludes."""
    return verify(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])


@dataclass
class Attempt:
    """One request the receiver saw."""

    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class HeldReceiver:
    """A receiver whose first request is answered 503 only once `release` is set; later ones get 200."""

    port: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    first_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts.append(Attempt(request.headers, await request.read()))
        if len(self.attempts) == 1:
            self.first_arrived.set()
            await self.release.wait()
            return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE)
        return web.Response(text="thanks")


@pytest.fixture
async def held_receiver() -> AsyncIterator[HeldReceiver]:
    receiver = HeldReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.port = int(runner.addresses[0][1])
    yield receiver
    receiver.release.set()
    await runner.cleanup()


@contextlib.asynccontextmanager
async def gateway_without_triton(tmp_path: Path) -> AsyncIterator[Gateway]:
    """The real gateway on SQLite; nothing listens at its inference address, and these routes never call it."""
    async with gateway(
        inference_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path / "data", webhook_secret_overlap_s=OVERLAP_S
    ) as running:
        yield running


def _parse_iso(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


# --- signing ------------------------------------------------------------------------------------------------


def test_two_secrets_give_two_signatures_in_each_header_and_either_secret_verifies() -> None:
    """delivery_headers() with (new, old) puts "v1,<b64> v1,<b64>" in webhook-signature and "v1=<hex>,v1=<hex>"
    in X-RemovAI-Signature; standardwebhooks and verify() accept either secret, and reject a third."""
    new, old, other = (accounts.new_webhook_secret() for _ in range(3))
    body = b'{"event":"image.completed"}'
    headers = delivery_headers([new, old], "whd_0123", body)

    assert headers[STANDARD_ID_HEADER] == headers[DELIVERY_HEADER] == "whd_0123"
    assert headers[STANDARD_TIMESTAMP_HEADER] == headers[TIMESTAMP_HEADER]
    standard = headers[STANDARD_SIGNATURE_HEADER].split(" ")
    assert len(standard) == 2 and all(s.startswith("v1,") and len(base64.b64decode(s[3:])) == 32 for s in standard)
    removai = headers[SIGNATURE_HEADER].split(",")
    assert len(removai) == 2 and all(s.startswith("v1=") and len(s) == 3 + 64 for s in removai)
    for secret in (new, old):
        assert standard_verifies(secret, headers, body)
        assert removai_verifies(secret, headers, body)
    assert not standard_verifies(other, headers, body)
    assert not removai_verifies(other, headers, body)
    assert not standard_verifies(new, headers, body + b" ")


def test_new_secrets_are_standard_webhooks_secrets_and_old_hex_ones_still_sign_both_ways() -> None:
    """A new secret is whsec_ + base64 of 32 bytes; a secret made before (64 hex characters) signs both
    header families, and the standardwebhooks library accepts it as given."""
    fresh = accounts.new_webhook_secret()
    assert fresh.startswith("whsec_") and len(base64.b64decode(fresh.removeprefix("whsec_"))) == 32
    legacy = "ab" * 32
    body = b"{}"
    headers = delivery_headers(legacy, "whd_legacy", body)
    assert len(headers[STANDARD_SIGNATURE_HEADER].split(" ")) == 1
    assert standard_verifies(legacy, headers, body)
    assert removai_verifies(legacy, headers, body)


# --- rotation during deliveries --------------------------------------------------------------------------------


async def test_rotating_while_a_delivery_is_pending_signs_its_retry_with_both_secrets(
    sessions: Sessions, sender: WebhookSender, held_receiver: HeldReceiver, account: Account
) -> None:
    """The first attempt (before the rotation) verifies with the old secret only; its retry, after the rotation,
    carries two signatures, so a receiver holding either the old or the new secret accepts it."""
    old = account.webhook_secret
    await sender.enqueue(account.id, held_receiver.url, PAYLOAD)
    await asyncio.wait_for(held_receiver.first_arrived.wait(), timeout=30)
    rotated = await accounts.rotate_webhook_secret(sessions, account.id, dt.timedelta(seconds=OVERLAP_S))
    assert rotated is not None and rotated.previous_webhook_secret == old
    new = rotated.webhook_secret
    assert new != old
    held_receiver.release.set()
    await asyncio.wait_for(sender.join(), timeout=30)

    first, retry = held_receiver.attempts
    assert first.headers[DELIVERY_HEADER] == retry.headers[DELIVERY_HEADER]
    assert len(first.headers[STANDARD_SIGNATURE_HEADER].split(" ")) == 1
    assert standard_verifies(old, first.headers, first.body)
    assert not standard_verifies(new, first.headers, first.body)

    assert retry.body == first.body
    assert len(retry.headers[STANDARD_SIGNATURE_HEADER].split(" ")) == 2
    assert len(retry.headers[SIGNATURE_HEADER].split(",")) == 2
    for secret in (old, new):
        assert standard_verifies(secret, retry.headers, retry.body)
        assert removai_verifies(secret, retry.headers, retry.body)


async def test_deliveries_recorded_before_a_rotation_and_sent_after_it_verify_with_either_secret(
    sessions: Sessions, held_receiver: HeldReceiver, account: Account
) -> None:
    """A delivery still in the outbox when the secret rotates (the sender stopped) is signed at send time with
    the new and the previous secret."""
    held_receiver.release.set()
    stopped = WebhookSender(LOOPBACK_POLICY, sessions, max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
    delivery_id = await stopped.enqueue(account.id, held_receiver.url, PAYLOAD)
    assert delivery_id is not None
    rotated = await accounts.rotate_webhook_secret(sessions, account.id, dt.timedelta(seconds=OVERLAP_S))
    assert rotated is not None
    async with stopped:
        await asyncio.wait_for(stopped.join(), timeout=30)
    [attempt, *_] = held_receiver.attempts
    assert attempt.headers[STANDARD_ID_HEADER] == delivery_id
    for secret in (account.webhook_secret, rotated.webhook_secret):
        assert standard_verifies(secret, attempt.headers, attempt.body)
        assert removai_verifies(secret, attempt.headers, attempt.body)


async def test_after_the_window_only_the_new_secret_signs(
    sessions: Sessions, sender: WebhookSender, held_receiver: HeldReceiver, account: Account
) -> None:
    """Once previous_webhook_secret_expires_at has passed, one signature per header: the new secret's."""
    held_receiver.release.set()
    rotated = await accounts.rotate_webhook_secret(sessions, account.id, dt.timedelta(seconds=OVERLAP_S))
    assert rotated is not None
    async with sessions.begin() as session:
        await session.execute(
            update(Account)
            .where(Account.id == account.id)
            .values(previous_webhook_secret_expires_at=utc_now() - dt.timedelta(seconds=1))
        )
    await sender.enqueue(account.id, held_receiver.url, PAYLOAD)
    await asyncio.wait_for(sender.join(), timeout=30)

    [attempt, *_] = held_receiver.attempts
    assert len(attempt.headers[STANDARD_SIGNATURE_HEADER].split(" ")) == 1
    assert len(attempt.headers[SIGNATURE_HEADER].split(",")) == 1
    assert standard_verifies(rotated.webhook_secret, attempt.headers, attempt.body)
    assert removai_verifies(rotated.webhook_secret, attempt.headers, attempt.body)
    assert not standard_verifies(account.webhook_secret, attempt.headers, attempt.body)
    assert not removai_verifies(account.webhook_secret, attempt.headers, attempt.body)


async def test_rotating_with_no_overlap_stops_the_old_secret_at_once(sessions: Sessions, account: Account) -> None:
    """overlap 0: only the new secret signs; rotating an unknown account returns None."""
    rotated = await accounts.rotate_webhook_secret(sessions, account.id, dt.timedelta(0))
    assert rotated is not None
    assert accounts.signing_secrets(rotated) == [rotated.webhook_secret]
    assert await accounts.rotate_webhook_secret(sessions, "acct_missing", dt.timedelta(0)) is None


# --- the HTTP endpoints ------------------------------------------------------------------------------------------


async def test_the_endpoints_show_and_rotate_the_callers_secret(tmp_path: Path) -> None:
    """GET shows the secret (no-store, rate-limit headers, spec envelope); POST .../rotate answers a new one and
    when the old stops signing; GET then shows the new one; every answer matches the OpenAPI document."""
    async with gateway_without_triton(tmp_path) as gw:
        contract = Contract(await (await gw.client.get("/v1/openapi.json")).json())
        account_id, key = await gw.account()
        stored = await accounts.get_account(gw.app[SESSIONS], account_id)
        assert stored is not None

        shown = await gw.client.get(SECRET_PATH, headers={"X-API-Key": key})
        assert shown.status == HTTPStatus.OK
        assert shown.headers["Content-Type"].startswith("application/json")
        assert shown.headers["Cache-Control"] == "no-store"
        assert shown.headers["X-RateLimit-Limit"] == "60"
        assert await contract.check(shown, SECRET_PATH, "GET") == {
            "success": True,
            "data": {"secret": stored.webhook_secret, "rotated_at": None, "previous_secret_expires_at": None},
            "meta": {},
        }

        before = utc_now().replace(microsecond=0)
        rotated = await gw.client.post(ROTATE_PATH, headers={"X-API-Key": key})
        assert rotated.status == HTTPStatus.OK
        assert rotated.headers["Cache-Control"] == "no-store"
        body = await contract.check(rotated, ROTATE_PATH, "POST")
        assert body["success"] is True and body["meta"] == {}
        data = body["data"]
        assert set(data) == {"secret", "rotated_at", "previous_secret_expires_at"}
        assert data["secret"].startswith("whsec_") and data["secret"] != stored.webhook_secret
        rotated_at = _parse_iso(data["rotated_at"])
        assert before <= rotated_at <= utc_now()
        assert _parse_iso(data["previous_secret_expires_at"]) - rotated_at == dt.timedelta(seconds=OVERLAP_S)

        again = await gw.client.get(SECRET_PATH, headers={"X-API-Key": key})
        assert again.status == HTTPStatus.OK
        assert (await contract.check(again, SECRET_PATH, "GET"))["data"] == data

        refused = await gw.client.post(ROTATE_PATH)
        assert refused.status == HTTPStatus.UNAUTHORIZED
        assert (await contract.check(refused, ROTATE_PATH, "POST"))["error"]["code"] == "invalid_api_key"


async def test_another_account_can_neither_see_nor_rotate_your_secret(tmp_path: Path) -> None:
    """Each key sees and rotates only its own account's secret; no key or a wrong key is 401 invalid_api_key,
    and the wrong method is 405, all in the spec's error envelope."""
    async with gateway_without_triton(tmp_path) as gw:
        _, key_a = await gw.account(name="a")
        _, key_b = await gw.account(name="b")
        secret_a = (await (await gw.client.get(SECRET_PATH, headers={"X-API-Key": key_a})).json())["data"]["secret"]

        seen_by_b = await gw.client.get(SECRET_PATH, headers={"X-API-Key": key_b})
        assert seen_by_b.status == HTTPStatus.OK
        secret_b = (await seen_by_b.json())["data"]["secret"]
        assert secret_b != secret_a

        rotated_by_b = await gw.client.post(ROTATE_PATH, headers={"X-API-Key": key_b})
        assert rotated_by_b.status == HTTPStatus.OK
        assert (await rotated_by_b.json())["data"]["secret"] not in (secret_a, secret_b)
        still_a = await gw.client.get(SECRET_PATH, headers={"X-API-Key": key_a})
        assert (await still_a.json())["data"] == {
            "secret": secret_a, "rotated_at": None, "previous_secret_expires_at": None,
        }

        for method, path, headers in [
            ("GET", SECRET_PATH, {}),
            ("POST", ROTATE_PATH, {}),
            ("GET", SECRET_PATH, {"X-API-Key": "rmv_not-a-key"}),
            ("POST", ROTATE_PATH, {"X-API-Key": "rmv_not-a-key"}),
        ]:
            refused = await gw.client.request(method, path, headers=headers)
            assert refused.status == HTTPStatus.UNAUTHORIZED, (method, path)
            assert "X-RateLimit-Limit" not in refused.headers
            assert await refused.json() == {
                "success": False,
                "error": {
                    "code": "invalid_api_key", "message": "The API key provided is invalid or missing", "status": 401,
                },
            }

        wrong_method = await gw.client.get(ROTATE_PATH, headers={"X-API-Key": key_a})
        assert wrong_method.status == HTTPStatus.METHOD_NOT_ALLOWED
        assert wrong_method.headers["Allow"] == "POST"
        assert (await wrong_method.json())["error"]["code"] == "invalid_request"
        unchanged = await gw.client.get(SECRET_PATH, headers={"X-API-Key": key_a})
        assert (await unchanged.json())["data"]["secret"] == secret_a


# --- removai-admin ---------------------------------------------------------------------------------------------


async def _admin(*argv: str) -> tuple[int, str, str]:
    """`removai-admin ARGV...`, in process, through the operator command's own parser; (exit status, stdout,
    stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = await admin_command.run(list(argv))
    return status, out.getvalue(), err.getvalue()


async def test_admin_shows_and_rotates_a_webhook_secret(tmp_path: Path) -> None:
    """`removai-admin webhook-secret show` prints the secret; `rotate --overlap-s` prints the new one and until
    when the old one signs; an unknown account is exit status 1, a bad --overlap-s a usage error (2)."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    status, out, _ = await _admin(
        "--database-url", database_url, "--create", "accounts", "create", "--name", "A", "--plan", "pro"
    )
    assert status == 0
    account_id = out.splitlines()[0].removeprefix("account_id: ")

    status, out, _ = await _admin("--database-url", database_url, "webhook-secret", "show", account_id)
    assert status == 0
    [line] = out.splitlines()
    old = line.removeprefix("webhook_secret: ")
    assert old.startswith("whsec_")

    status, out, err = await _admin(
        "--database-url", database_url, "webhook-secret", "rotate", account_id, "--overlap-s", "600"
    )
    assert status == 0 and "new secret" in err
    new_line, until_line = out.splitlines()
    new = new_line.removeprefix("webhook_secret: ")
    assert new.startswith("whsec_") and new != old
    until = dt.datetime.fromisoformat(until_line.removeprefix("previous_secret_signs_until: "))
    assert dt.timedelta(seconds=590) < until - utc_now() <= dt.timedelta(seconds=600)

    status, out, _ = await _admin("--database-url", database_url, "webhook-secret", "show", account_id)
    assert status == 0 and out.splitlines()[0] == f"webhook_secret: {new}"

    status, out, err = await _admin("--database-url", database_url, "webhook-secret", "rotate", "acct_missing")
    assert status == 1 and out == "" and "no account 'acct_missing'" in err

    status, out, err = await _admin(
        "--database-url", database_url, "webhook-secret", "rotate", account_id, "--overlap-s", "²"
    )
    assert status == 2 and out == "" and "whole number of seconds" in err


# --- the SQLite file ------------------------------------------------------------------------------------------------


async def test_sqlite_file_is_created_0600_in_a_directory_only_its_owner_can_read(tmp_path: Path) -> None:
    """A new database file is 0600 (so are its -wal/-shm files) and the directory made for it 0700; an existing
    file open to others is narrowed to 0600."""
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "fresh" / "removai.db"
        engine = create_database_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await upgrade_schema(engine)
            for file in path.parent.iterdir():
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        finally:
            await engine.dispose()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

        loose = tmp_path / "loose.db"
        loose.touch(mode=0o644)
        loose.chmod(0o644)
        create_database_engine(f"sqlite+aiosqlite:///{loose}")
        assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


async def test_the_gateway_makes_its_data_dir_0700_and_database_0600(tmp_path: Path) -> None:
    """The gateway's own data_dir and default SQLite database are not readable by other users."""
    async with gateway_without_triton(tmp_path) as gw:
        data_dir = gw.settings.data_dir
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / "removai.db").stat().st_mode) == 0o600
