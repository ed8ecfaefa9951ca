"""The operator's business commands on real SQLite and PostgreSQL beside a real gateway: plan changes, disabling
and enabling, deleting an account with its images and stored objects (local disk and an S3-protocol server),
issuing, listing and revoking keys, and the usage report.

Most runs call the command's own entry (`gateway.admin.run`, what `main` runs) in this process, with its own
variables, folder and input: a child process per run costs seconds on a loaded machine, and test_admin.py and
the deletion's confirmation below run it as a real process."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from gateway import admin as admin_command
from gateway.domain import accounts, images, quota
from gateway.domain.accounts import DISABLED_MESSAGE, LAST_USE_PRECISION, matching_keys
from gateway.store.database import Sessions, create_database_engine, create_sessions, upgrade_schema
from gateway.store.storage import OutputStorage, create_storage
from gateway.store.tables import Account, ApiKey, Image, Usage, utc_now
from tests.gateway.harness import Gateway, gateway, postgres_database
from tests.gateway.test_admin import _API_KEY, Finished, admin, created_account

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The gateway's database: an SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'removai.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty folder to run the command in (never the gateway's)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


async def account_answer(running: Gateway, api_key: str) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """GET /v1/account with this key: status, JSON body and headers."""
    response = await running.client.get("/v1/account", headers={"X-API-Key": api_key})
    assert response.headers["Content-Type"].startswith("application/json")
    return response.status, await response.json(), response.headers


async def run_admin(*arguments: str, cwd: Path, env: dict[str, str], stdin: str = "") -> Finished:
    """Runs the admin command in this process as `admin` runs it in a child: in `cwd`, with no REMOVAI_*
    variable but those in `env`, `stdin` as its input; stdout and stderr captured."""
    saved_environment, saved_cwd, saved_stdin = dict(os.environ), Path.cwd(), sys.stdin
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        for name in [name for name in os.environ if name.upper().startswith("REMOVAI_")]:
            del os.environ[name]
        os.environ.update(env)
        os.chdir(cwd)
        sys.stdin = io.StringIO(stdin)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = await admin_command.run(list(arguments))
    finally:
        sys.stdin = saved_stdin
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environment)
    return Finished(status, stdout.getvalue(), stderr.getvalue())


def succeeded(finished: Finished) -> Finished:
    assert finished.status == 0, finished.stderr
    return finished


async def test_plan_change_disable_and_enable_reach_the_running_gateway(
    database_url: str, tmp_path: Path, elsewhere: Path
) -> None:
    """set-plan changes the limits the gateway applies; a disabled account's key gets 403 forbidden in the
    spec's envelope (with the rate-limit headers) until `enable`; each says when replicas see the change."""
    env = {"REMOVAI_GATEWAY_DATABASE_URL": database_url}
    async with gateway(database_url=database_url, auth_cache_ttl_s=0, data_dir=tmp_path / "data") as running:
        account_id, api_key = created_account(
            await run_admin("accounts", "create", "--name", "Acme", "--plan", "pro", cwd=elsewhere, env=env)
        )
        status, body, _ = await account_answer(running, api_key)
        assert status == HTTPStatus.OK and body["data"]["plan"] == "pro" and body["data"]["monthly_images"] == 500

        moved = succeeded(await run_admin("accounts", "set-plan", account_id, "basic", cwd=elsewhere, env=env))
        assert moved.stdout == f"account_id: {account_id}\nplan: basic (was pro)\n"
        assert "within its auth_cache_ttl_s (5 s unless REMOVAI_GATEWAY_AUTH_CACHE_TTL_S" in moved.stderr
        status, body, _ = await account_answer(running, api_key)
        assert status == HTTPStatus.OK and body["data"]["plan"] == "basic" and body["data"]["monthly_images"] == 50

        disabled = succeeded(await run_admin("accounts", "disable", account_id, cwd=elsewhere, env=env))
        assert re.fullmatch(rf"account_id: {account_id}\nstatus: disabled since {STAMP}\n", disabled.stdout)
        assert "Its keys are refused (403 forbidden)" in disabled.stderr
        status, body, headers = await account_answer(running, api_key)
        assert status == HTTPStatus.FORBIDDEN
        assert body == {"success": False, "error": {"code": "forbidden", "message": DISABLED_MESSAGE, "status": 403}}
        assert headers["X-RateLimit-Limit"] == "10" and "X-Request-Id" in headers
        upload = await running.client.post(
            "/v1/remove-background", headers={"X-API-Key": api_key}, json={"url": "http://127.0.0.1:9/a.png"}
        )
        assert upload.status == HTTPStatus.FORBIDDEN
        assert (await upload.json())["error"]["code"] == "forbidden"

        shown = succeeded(await run_admin("accounts", "show", account_id, cwd=elsewhere, env=env))
        assert re.search(rf"^status: disabled since {STAMP}$", shown.stdout, re.MULTILINE)
        listed = succeeded(await run_admin("accounts", "list", cwd=elsewhere, env=env))
        assert listed.stdout.splitlines()[1].endswith("\tdisabled")

        enabled = succeeded(await run_admin("accounts", "enable", account_id, cwd=elsewhere, env=env))
        assert enabled.stdout == f"account_id: {account_id}\nstatus: active\n"
        status, body, _ = await account_answer(running, api_key)
        assert status == HTTPStatus.OK and body["data"]["id"] == account_id

    for command in (("set-plan", "acct_nope", "pro"), ("disable", "acct_nope"), ("enable", "acct_nope"),
                    ("delete", "acct_nope", "--yes")):
        missing = await run_admin("accounts", *command, cwd=elsewhere, env=env)
        assert missing.status == 1 and missing.stdout == ""
        assert "removai-admin: no account 'acct_nope'" in missing.stderr
    wrong_plan = await run_admin("accounts", "set-plan", account_id, "gold", cwd=elsewhere, env=env)
    assert wrong_plan.status == 2 and "invalid choice: 'gold'" in wrong_plan.stderr


async def test_keys_are_issued_listed_with_last_use_and_revoked_one_at_a_time(
    database_url: str, tmp_path: Path, elsewhere: Path
) -> None:
    """`keys create` adds a key beside the others; `keys list` shows each key's number, prefix, dates and last
    use; `keys revoke` (by number, prefix or whole key) refuses that key only, issuing none; `keys rotate` says
    how long an old key keeps working (the gateway's auth cache)."""
    env = {"REMOVAI_GATEWAY_DATABASE_URL": database_url}
    async with gateway(database_url=database_url, auth_cache_ttl_s=0, data_dir=tmp_path / "data") as running:
        account_id, first_key = created_account(
            await run_admin("accounts", "create", "--name", "Acme", "--plan", "pro", cwd=elsewhere, env=env)
        )
        issued = succeeded(await run_admin("keys", "create", account_id, cwd=elsewhere, env=env))
        second = _API_KEY.search(issued.stdout)
        assert second is not None
        second_key = second[1]
        assert "The account's other keys keep working" in issued.stderr
        assert (await account_answer(running, second_key))[0] == HTTPStatus.OK
        assert (await account_answer(running, first_key))[0] == HTTPStatus.OK

        listed = succeeded(await run_admin("keys", "list", account_id, cwd=elsewhere, env=env)).stdout.splitlines()
        assert listed[0] == "key\tprefix\tcreated_at\tlast_used_at\trevoked_at"
        assert len(listed) == 3
        first_row = re.fullmatch(rf"(\d+)\t{re.escape(first_key[:8])}…\t{STAMP}\t{STAMP}\tactive", listed[1])
        second_row = re.fullmatch(rf"(\d+)\t{re.escape(second_key[:8])}…\t{STAMP}\t{STAMP}\tactive", listed[2])
        assert first_row is not None and second_row is not None, listed
        for key in (first_key, second_key):
            assert key not in "\n".join(listed)

        by_prefix = succeeded(await run_admin("keys", "revoke", account_id, first_key[:8], cwd=elsewhere, env=env))
        assert re.fullmatch(rf"revoked: {first_row[1]}\t{re.escape(first_key[:8])}…\t{STAMP}\nactive_keys_left: 1\n",
                            by_prefix.stdout)
        assert "no new key was issued" in by_prefix.stderr and "rmv_" not in by_prefix.stderr
        status, body, _ = await account_answer(running, first_key)
        assert status == HTTPStatus.UNAUTHORIZED and body["error"]["code"] == "invalid_api_key"
        assert (await account_answer(running, second_key))[0] == HTTPStatus.OK

        again = succeeded(await run_admin("keys", "revoke", account_id, first_row[1], cwd=elsewhere, env=env))
        assert "already revoked; nothing changed" in again.stderr
        unknown = await run_admin("keys", "revoke", account_id, "rmv_zzzz", cwd=elsewhere, env=env)
        assert unknown.status == 1 and unknown.stdout == ""
        assert f"account {account_id} has no key 'rmv_zzzz'" in unknown.stderr

        whole = succeeded(await run_admin("keys", "revoke", account_id, second_key, cwd=elsewhere, env=env))
        assert whole.stdout.endswith("active_keys_left: 0\n")
        assert second_key not in whole.stdout + whole.stderr
        assert (await account_answer(running, second_key))[0] == HTTPStatus.UNAUTHORIZED

        rotated = succeeded(await run_admin(
            "keys", "rotate", account_id, cwd=elsewhere, env={**env, "REMOVAI_GATEWAY_AUTH_CACHE_TTL_S": "2.5"}
        ))
        assert "The old keys are refused on each running gateway replica within its auth_cache_ttl_s (2.5 s" \
               in rotated.stderr
        assert "an old key keeps working until then" in rotated.stderr
        third = _API_KEY.search(rotated.stdout)
        assert third is not None and (await account_answer(running, third[1]))[0] == HTTPStatus.OK

    missing = await run_admin("keys", "list", "acct_nope", cwd=elsewhere, env=env)
    assert missing.status == 1 and "no account 'acct_nope'" in missing.stderr


def test_a_display_prefix_two_keys_share_names_both() -> None:
    """The prefix is four characters of the key: two keys may share it, so it names both (the command then asks
    for the number); a number or a whole key names exactly one."""
    one = ApiKey(id=1, account_id="acct_a", key_hash=accounts.hash_api_key("rmv_abcdONE"), prefix="rmv_abcd")
    two = ApiKey(id=2, account_id="acct_a", key_hash=accounts.hash_api_key("rmv_abcdTWO"), prefix="rmv_abcd")
    keys = [one, two]
    assert matching_keys(keys, "rmv_abcd") == [one, two]
    assert matching_keys(keys, "rmv_abcd…") == [one, two]
    assert matching_keys(keys, "2") == [two]
    assert matching_keys(keys, "rmv_abcdONE") == [one]
    assert matching_keys(keys, "rmv_abcdTHREE") == []
    assert matching_keys(keys, "") == []


async def test_last_use_is_written_at_most_once_a_minute(sessions: Sessions) -> None:
    """Authenticating records the key's last use when none is recorded or the record is a minute old, and
    leaves a fresher record alone (so authentication stays a read)."""
    account, api_key = await accounts.create_account(sessions, name="a", plan="pro")

    async def last_used() -> dt.datetime | None:
        async with sessions() as session:
            return await session.scalar(select(ApiKey.last_used_at).where(ApiKey.account_id == account.id))

    assert await last_used() is None
    assert await accounts.authenticate(sessions, api_key) is not None
    first = await last_used()
    assert first is not None and utc_now() - first < LAST_USE_PRECISION
    assert await accounts.authenticate(sessions, api_key) is not None
    assert await last_used() == first

    stale = first - LAST_USE_PRECISION - dt.timedelta(seconds=1)
    async with sessions.begin() as session:
        await session.execute(update(ApiKey).where(ApiKey.account_id == account.id).values(last_used_at=stale))
    assert await accounts.authenticate(sessions, api_key) is not None
    refreshed = await last_used()
    assert refreshed is not None and refreshed > first


async def _library(sessions: Sessions, storage: OutputStorage, account_id: str, *, processing: bool) -> list[str]:
    """Gives the account a completed image (its output stored, and an earlier attempt's output that no row
    names) and, if `processing`, an uploaded image still waiting (its original and background stored); returns
    every stored key."""
    done = await images.create_image(
        sessions, account_id, images.ImageSource(original_url="https://example.com/a.jpg"),
        output_format="png", output_size="original",
    )
    async with sessions.begin() as session:
        await session.execute(update(Image).where(Image.id == done.id).values(attempt=2))
    stored = [f"outputs/{done.id}-2.png", f"outputs/{done.id}-1.png"]
    await images.mark_image_completed(
        sessions, done.id, storage_key=stored[0], content_type="image/png", width=4, height=4, size_bytes=3,
    )
    if processing:
        source, background = f"sources/src_{account_id[5:]}", f"sources/bg_{account_id[5:]}"
        await images.create_image(
            sessions, account_id, images.ImageSource(original_filename="b.png", source_key=source,
                                                     bg_source_key=background),
            output_format="webp", output_size="preview",
        )
        stored += [source, background]
    for key in stored:
        await storage.put(key, b"png", "image/png")
    return stored


async def _delete_with_confirmation(
    database_url: str, storage: OutputStorage, env: dict[str, str], elsewhere: Path, gateway_settings: dict[str, Any],
    run_command: Callable[..., Awaitable[Finished]],
) -> None:
    engine = create_database_engine(database_url)
    try:
        await upgrade_schema(engine)
        sessions = create_sessions(engine)
        doomed, doomed_key = await accounts.create_account(sessions, name="Doomed", plan="pro")
        kept, kept_key = await accounts.create_account(sessions, name="Kept", plan="pro")
        assert await quota.reserve_images(sessions, doomed.id, 2, 500)
        doomed_objects = await _library(sessions, storage, doomed.id, processing=True)
        kept_objects = await _library(sessions, storage, kept.id, processing=False)

        declined = await run_command("accounts", "delete", doomed.id, cwd=elsewhere, env=env, stdin="yes\n")
        assert declined.status == 3 and declined.stdout == ""
        assert f"This deletes account {doomed.id} (Doomed, plan pro) for good: its keys, 2 image(s) with their " \
               "stored files, 0 batch(es)" in declined.stderr
        assert "Type the account id to confirm: removai-admin: not confirmed: nothing deleted" in declined.stderr
        for key in doomed_objects:
            assert await storage.exists(key), key
        assert await accounts.get_account(sessions, doomed.id) is not None
        unanswered = await run_admin("accounts", "delete", doomed.id, cwd=elsewhere, env=env)
        assert unanswered.status == 3 and await accounts.get_account(sessions, doomed.id) is not None

        deleted = succeeded(await run_command("accounts", "delete", doomed.id, cwd=elsewhere, env=env,
                                              stdin=f"{doomed.id}\n"))
        assert deleted.stdout == f"deleted: {doomed.id}\nimages: 2\nbatches: 0\nstored_objects: 4\n"
        assert "Its keys stop working on each running gateway replica within its auth_cache_ttl_s" in deleted.stderr

        for key in doomed_objects:
            assert not await storage.exists(key), key
        for key in kept_objects:
            assert await storage.exists(key), key
        async with sessions() as session:
            for owner in (Account.id, ApiKey.account_id, Image.account_id, Usage.account_id):
                assert await session.scalar(select(func.count()).where(owner == doomed.id)) == 0, owner
            assert await session.scalar(select(func.count()).select_from(Image)) == 1
    finally:
        await engine.dispose()

    async with gateway(database_url=database_url, auth_cache_ttl_s=0, **gateway_settings) as running:
        status, body, _ = await account_answer(running, doomed_key)
        assert status == HTTPStatus.UNAUTHORIZED and body["error"]["code"] == "invalid_api_key"
        status, body, _ = await account_answer(running, kept_key)
        assert status == HTTPStatus.OK and body["data"]["id"] == kept.id
        listed = await running.client.get("/v1/images", headers={"X-API-Key": kept_key})
        assert listed.status == HTTPStatus.OK
        assert len((await listed.json())["data"]) == 1


async def test_delete_removes_the_account_its_rows_and_its_files_on_local_disk(
    database_url: str, tmp_path: Path, elsewhere: Path
) -> None:
    """`accounts delete` asks for the account id and deletes nothing on any other answer (exit 3); confirmed, it
    removes the account's rows and every file of its images (each attempt's output, uploads) from the gateway's
    data dir, and nothing of another account's."""
    data_dir = tmp_path / "gateway-data"
    data_dir.mkdir()
    env = {"REMOVAI_GATEWAY_DATABASE_URL": database_url, "REMOVAI_GATEWAY_DATA_DIR": str(data_dir)}
    storage = create_storage("", data_dir / "files")
    await _delete_with_confirmation(database_url, storage, env, elsewhere, {"data_dir": data_dir}, admin)


async def test_delete_removes_the_accounts_objects_from_an_s3_bucket(
    s3_storage_url: str, tmp_path: Path, elsewhere: Path
) -> None:
    """With the gateway's files in an S3 bucket (a real S3-protocol server), the admin finds the bucket as the
    gateway does (REMOVAI_GATEWAY_STORAGE_URL) and deletes the account's objects there."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'removai.db'}"
    env = {"REMOVAI_GATEWAY_DATABASE_URL": database_url, "REMOVAI_GATEWAY_STORAGE_URL": s3_storage_url}
    storage = create_storage(s3_storage_url, tmp_path / "unused")
    await _delete_with_confirmation(
        database_url, storage, env, elsewhere, {"storage_url": s3_storage_url, "data_dir": tmp_path / "data"},
        run_admin,
    )


async def test_usage_report_lists_every_account_as_a_table_and_as_json(database_url: str, elsewhere: Path) -> None:
    """`usage report` gives one line per account (none left out for using nothing): plan, status, this month's
    images against the plan's quota, active keys and their last use; --json the same as one document;
    --month another month (zeros) and refuses a malformed one."""
    env = {"REMOVAI_GATEWAY_DATABASE_URL": database_url}
    engine = create_database_engine(database_url)
    try:
        await upgrade_schema(engine)
        sessions = create_sessions(engine)
        basic, basic_key = await accounts.create_account(sessions, name="Basic Co", plan="basic", email="b@example.com")
        pro, _ = await accounts.create_account(sessions, name="Pro Co", plan="pro")
        big, _ = await accounts.create_account(sessions, name="Big Co", plan="enterprise")
        assert await quota.reserve_images(sessions, basic.id, 12, 50)
        assert await quota.reserve_images(sessions, big.id, 900, None)
        assert await accounts.authenticate(sessions, basic_key) is not None
        assert await accounts.issue_key(sessions, big.id) is not None
        assert await accounts.set_disabled(sessions, pro.id, True) is not None
    finally:
        await engine.dispose()
    month = quota.current_month()

    table = succeeded(await run_admin("usage", "report", cwd=elsewhere, env=env))
    lines = table.stdout.splitlines()
    assert lines[:2] == [f"month: {month} (UTC)",
                         "id\tname\tplan\tstatus\timages_used\tmonthly_images\tactive_keys\tlast_used_at"]
    assert re.fullmatch(rf"{basic.id}\tBasic Co\tbasic\tactive\t12\t50\t1\t{STAMP}", lines[2])
    assert lines[3] == f"{pro.id}\tPro Co\tpro\tdisabled\t0\t500\t1\tnever"
    assert lines[4] == f"{big.id}\tBig Co\tenterprise\tactive\t900\tunlimited\t2\tnever"
    assert len(lines) == 5
    assert f"3 account(s), 912 image(s) in {month}" in table.stderr

    as_json = json.loads(succeeded(await run_admin("usage", "report", "--json", cwd=elsewhere, env=env)).stdout)
    assert as_json["month"] == month
    assert [line["account_id"] for line in as_json["accounts"]] == [basic.id, pro.id, big.id]
    first = as_json["accounts"][0]
    assert re.fullmatch(STAMP, first.pop("last_used_at"))
    assert first == {"account_id": basic.id, "name": "Basic Co", "email": "b@example.com", "plan": "basic",
                     "status": "active", "disabled_at": None, "images_used": 12, "monthly_images": 50,
                     "active_keys": 1}
    assert as_json["accounts"][1]["status"] == "disabled" and re.fullmatch(STAMP, as_json["accounts"][1]["disabled_at"])
    assert as_json["accounts"][2]["monthly_images"] is None and as_json["accounts"][2]["images_used"] == 900

    earlier = json.loads(succeeded(await run_admin("usage", "report", "--json", "--month", "2020-01", cwd=elsewhere,
                                               env=env)).stdout)
    assert earlier["month"] == "2020-01"
    assert [line["images_used"] for line in earlier["accounts"]] == [0, 0, 0]
    malformed = await run_admin("usage", "report", "--month", "2026-13", cwd=elsewhere, env=env)
    assert malformed.status == 2 and "must be a month as YYYY-MM" in malformed.stderr
