"""The operator command (`removai-admin`, `python -m gateway.admin`) run as a real process on
real SQLite and PostgreSQL: it finds the gateway's database as the gateway does, never creates one unless
asked, says which one it used, and shows an account without ever printing a key or a secret."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest

from gateway.admin import choose_database
from gateway.domain import quota
from gateway.settings import GatewaySettings
from gateway.store.database import (
    create_database_engine,
    create_sessions,
    default_database_url,
    upgrade_schema,
)
from tests.gateway.harness import gateway, postgres_database
from tools.triton_launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
# The password of the PostgreSQL URLs the admin is given: the test server trusts local connections and
# ignores it, so it is there only to prove the admin never prints it. In-process code (the gateway, the
# fixtures) gets the URL without it: the session's log scan rightly flags any URL with a password, masked too.
PASSWORD = "s3cr3t-pw"
_ACCOUNT_ID = re.compile(r"^account_id: (acct_[a-z0-9]+)$", re.MULTILINE)
_API_KEY = re.compile(r"^api_key: (rmv_\S+)$", re.MULTILINE)
_WEBHOOK_SECRET = re.compile(r"^webhook_secret: (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Finished:
    """How one run of the command ended."""

    status: int
    stdout: str
    stderr: str


async def admin(
    *arguments: str, cwd: Path, env: dict[str, str] | None = None, command: tuple[str, ...] = ("-m", "gateway.admin"),
    stdin: str | None = None,
) -> Finished:
    """Runs the admin command as a child process in `cwd`, with no REMOVAI_* variable but those in `env`, and
    `stdin` as its input (none: an empty input, so a question is never left waiting)."""
    environment = {key: value for key, value in os.environ.items() if not key.upper().startswith("REMOVAI_")}
    # The working tree's code whatever `cwd` is (the editable install may point at another checkout).
    environment |= {"PYTHONPATH": str(REPO_ROOT), **(env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, *arguments, cwd=cwd, env=environment,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate((stdin or "").encode()), timeout=120)
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


def created_account(finished: Finished) -> tuple[str, str]:
    """The account id and API key `accounts create` printed."""
    assert finished.status == 0, finished.stderr
    account_id, api_key = _ACCOUNT_ID.search(finished.stdout), _API_KEY.search(finished.stdout)
    assert account_id is not None and api_key is not None, finished.stdout
    return account_id[1], api_key[1]


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty folder that is not the gateway's: where an operator might happen to run the command."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def with_password(url: str) -> str:
    """The same database's URL with PASSWORD in it (SQLite URLs have no user and stay as they are)."""
    return url.replace("postgresql+asyncpg://postgres@", f"postgresql+asyncpg://postgres:{PASSWORD}@")


def masked(url: str) -> str:
    """How the admin prints `url`: the password as ***."""
    return url.replace(f":{PASSWORD}@", ":***@")


async def test_refuses_to_create_a_database_where_there_is_none(elsewhere: Path) -> None:
    """Run from a folder without the gateway's database: exit 2 naming the path it looked at; nothing created."""
    finished = await admin("accounts", "create", "--name", "Acme", "--plan", "pro", cwd=elsewhere)

    expected = (elsewhere / "var" / "removai.db").resolve()
    assert finished.status == 2
    assert finished.stdout == ""
    assert f"removai-admin: database sqlite+aiosqlite:///{expected} (removai.db in the default data dir var under " \
           f"{elsewhere.resolve()}" in finished.stderr
    assert f"removai-admin: error: no database at {expected}:" in finished.stderr
    assert "REMOVAI_GATEWAY_DATA_DIR" in finished.stderr and "--create" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert not (elsewhere / "var").exists()


async def test_uses_the_running_gateways_sqlite_database_from_another_folder(
    tmp_path: Path, elsewhere: Path
) -> None:
    """With the gateway's REMOVAI_GATEWAY_DATA_DIR the admin reaches its database from anywhere, and the key it
    prints works on the running gateway (the issue's 401)."""
    data_dir = tmp_path / "gateway-data"
    async with gateway(data_dir=data_dir) as running:
        finished = await admin(
            "accounts", "create", "--name", "Acme", "--plan", "pro", cwd=elsewhere,
            env={"REMOVAI_GATEWAY_DATA_DIR": str(data_dir)},
        )
        account_id, api_key = created_account(finished)
        expected_url = default_database_url(data_dir)
        assert f"removai-admin: database {expected_url} (removai.db in REMOVAI_GATEWAY_DATA_DIR={data_dir})" \
               in finished.stderr
        assert "created the RemovAI tables" not in finished.stderr

        response = await running.client.get("/v1/account", headers={"X-API-Key": api_key})
        assert response.status == HTTPStatus.OK
        assert response.headers["Content-Type"].startswith("application/json")
        body = await response.json()
        assert body["success"] is True
        assert body["data"]["id"] == account_id and body["data"]["plan"] == "pro"
    assert not (elsewhere / "var").exists()


async def test_uses_the_running_gateways_postgresql_database(postgres_url: str, elsewhere: Path) -> None:
    """REMOVAI_GATEWAY_DATABASE_URL, the gateway's own variable, points the admin at the gateway's PostgreSQL;
    the URL is printed with its password masked and the key works on the gateway."""
    async with gateway(database_url=postgres_url) as running:
        finished = await admin(
            "accounts", "create", "--name", "Acme", "--plan", "basic", cwd=elsewhere,
            env={"REMOVAI_GATEWAY_DATABASE_URL": with_password(postgres_url)},
        )
        account_id, api_key = created_account(finished)
        shown = masked(with_password(postgres_url))
        assert ":***@" in shown
        assert f"removai-admin: database {shown} (from REMOVAI_GATEWAY_DATABASE_URL)" in finished.stderr
        assert PASSWORD not in finished.stderr + finished.stdout

        response = await running.client.get("/v1/account", headers={"X-API-Key": api_key})
        assert response.status == HTTPStatus.OK
        body = await response.json()
        assert body["data"]["id"] == account_id and body["data"]["plan"] == "basic"


async def test_refuses_a_postgresql_database_without_removai_tables_unless_create(
    postgres_url: str, elsewhere: Path
) -> None:
    """An empty PostgreSQL database is not the gateway's: exit 2 naming the (masked) URL; --create makes the tables."""
    url = with_password(postgres_url)
    refused = await admin("--database-url", url, "accounts", "list", cwd=elsewhere)
    assert refused.status == 2
    assert refused.stdout == ""
    assert f"removai-admin: error: {masked(url)} holds no RemovAI tables" in refused.stderr
    assert PASSWORD not in refused.stderr

    # --create after the command reads as well as before it.
    created = await admin("--database-url", url, "accounts", "list", "--create", cwd=elsewhere)
    assert created.status == 0, created.stderr
    assert created.stdout == "id\tplan\tname\temail\tcreated_at\tstatus\n"
    assert f"removai-admin: created the RemovAI tables in {masked(url)} (--create)" in created.stderr
    again = await admin("--database-url", url, "accounts", "list", cwd=elsewhere)
    assert again.status == 0 and "created" not in again.stderr


async def test_an_unreachable_database_is_one_clear_line(elsewhere: Path) -> None:
    """A PostgreSQL server that is not there: exit 2, the masked URL and the reason, no traceback."""
    url = f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:{free_port()}/removai"
    finished = await admin("--database-url", url, "accounts", "list", cwd=elsewhere)
    assert finished.status == 2
    assert finished.stdout == ""
    assert f"removai-admin: error: cannot connect to {masked(url)}:" in finished.stderr
    assert PASSWORD not in finished.stderr and "Traceback" not in finished.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database that does not exist yet: an SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'removai.db'}"
        return
    async with postgres_database() as url:
        yield url


async def test_accounts_show_gives_plan_usage_and_key_dates_but_no_secret(any_database_url: str, elsewhere: Path) -> None:
    """`accounts show` prints plan, this month's usage, the webhook secret's rotation date and each key's prefix
    and dates; neither a key nor a webhook secret appears anywhere in its output."""
    url = any_database_url
    env = {"REMOVAI_GATEWAY_DATABASE_URL": with_password(url)}
    account_id, first_key = created_account(
        await admin("--create", "accounts", "create", "--name", "Acme", "--plan", "pro", cwd=elsewhere, env=env)
    )
    rotated = await admin("keys", "rotate", account_id, cwd=elsewhere, env=env)
    assert rotated.status == 0, rotated.stderr
    second_key = _API_KEY.search(rotated.stdout)
    assert second_key is not None
    secret = await admin("webhook-secret", "rotate", account_id, "--overlap-s", "3600", cwd=elsewhere, env=env)
    assert secret.status == 0, secret.stderr
    webhook_secret = _WEBHOOK_SECRET.search(secret.stdout)
    assert webhook_secret is not None
    engine = create_database_engine(url)
    try:
        await upgrade_schema(engine)
        assert await quota.reserve_images(create_sessions(engine), account_id, 7, 500)
    finally:
        await engine.dispose()

    shown = await admin("accounts", "show", account_id, cwd=elsewhere, env=env)

    assert shown.status == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:6] == [f"account_id: {account_id}", "name: Acme", "email: ", "plan: pro", "status: active", lines[5]]
    assert re.fullmatch(r"created_at: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", lines[5])
    assert lines[6] == f"images_this_month: 7 of 500 ({quota.current_month()}, UTC)"
    assert re.fullmatch(r"webhook_secret_rotated_at: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", lines[7])
    assert lines[8].startswith("previous_webhook_secret_signs_until: ")
    assert lines[9:11] == ["api_keys: 1 active, 2 in all", "key\tprefix\tcreated_at\tlast_used_at\trevoked_at"]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
    assert re.fullmatch(rf"\d+\t{re.escape(first_key[:8])}…\t{stamp}\tnever\t{stamp}", lines[11])
    assert re.fullmatch(rf"\d+\t{re.escape(second_key[1][:8])}…\t{stamp}\tnever\tactive", lines[12])
    assert len(lines) == 13
    everything = shown.stdout + shown.stderr
    for never_shown in (first_key, second_key[1], webhook_secret[1], "whsec_", PASSWORD):
        assert never_shown not in everything

    missing = await admin("accounts", "show", "acct_nope", cwd=elsewhere, env=env)
    assert missing.status == 1
    assert missing.stdout == ""
    assert "removai-admin: no account 'acct_nope'" in missing.stderr


async def test_removai_admin_console_script_runs_the_gateways_admin(tmp_path: Path) -> None:
    """pyproject declares `removai-admin = gateway.admin:main`; run as pip's generated script runs it, it works
    (and refuses a missing database with exit 2)."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["removai-admin"] == "gateway.admin:main"
    as_installed = ("-c", "import sys; from gateway.admin import main; sys.exit(main())")

    refused = await admin("accounts", "list", cwd=tmp_path, command=as_installed)
    assert refused.status == 2
    assert "removai-admin: error: no database at" in refused.stderr

    usage = await admin("accounts", "show", cwd=tmp_path, command=as_installed)
    assert usage.status == 2
    assert "the following arguments are required: account_id" in usage.stderr


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"REMOVAI_GATEWAY_DATA_DIR": "/srv/removai"},
        {"removai_gateway_data_dir": "relative/data"},
        {"REMOVAI_GATEWAY_DATABASE_URL": "postgresql+asyncpg://removai@db.internal/removai",
         "REMOVAI_GATEWAY_DATA_DIR": "/srv/removai"},
    ],
)
def test_the_admin_chooses_the_database_the_gateway_opens(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Whatever the gateway's variables say (case as pydantic-settings reads them), the admin's URL is the
    gateway's: the same settings fields, the same default_database_url, from the same folder."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("REMOVAI_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    arguments = argparse.Namespace(database_url=None, data_dir=None, prog="removai-admin")

    chosen = choose_database(arguments)

    assert chosen.url == (settings.database_url or default_database_url(settings.data_dir))
