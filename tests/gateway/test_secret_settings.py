"""The gateway's secrets stay out of argv, output and logs: settings from REMOVAI_GATEWAY_<SETTING>_FILE,
`python -m gateway` and `removai-admin` run as real processes with passwords in every URL they are given."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from http import HTTPStatus
from pathlib import Path

import aiohttp
import pytest

from common.credentials import SecretFileError
from gateway.domain import accounts
from gateway.settings import GatewaySettings
from gateway.store.database import open_database
from tests.gateway.harness import postgres_database
from tests.gateway.s3server import REGION, S3Server
from tests.waiting import eventually
from tools.triton_launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
# Distinctive, so that finding one anywhere is a leak and nothing else: PostgreSQL (trust auth) ignores the
# password, moto takes any key, and Redis' default user (nopass) accepts any password.
DATABASE_PASSWORD = "pg-Pw-7c41e09b"
STORAGE_SECRET = "s3-Sk-52d8aa31"
REDIS_PASSWORD = "rd-Pw-e6103f7c"
SECRETS = (DATABASE_PASSWORD, STORAGE_SECRET, REDIS_PASSWORD)


def _clean_environment(**variables: str) -> dict[str, str]:
    """This environment without any REMOVAI_* variable, plus `variables`, and this checkout's code first."""
    environment = {key: value for key, value in os.environ.items() if not key.upper().startswith("REMOVAI_")}
    return {**environment, "PYTHONPATH": str(REPO_ROOT), **variables}


def test_settings_come_from_file_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """REMOVAI_GATEWAY_<SETTING>_FILE names a file holding the setting (trailing newline dropped; any case, as
    the variables themselves); the variable itself wins over its file; an unreadable file stops the start
    naming the variable."""
    for name in list(os.environ):
        if name.upper().startswith("REMOVAI_GATEWAY_"):
            monkeypatch.delenv(name)
    secret = tmp_path / "database_url"
    secret.write_text("postgresql+asyncpg://app:pw@db.example/removai\n")
    monkeypatch.setenv("removai_gateway_database_url_file", str(secret))
    monkeypatch.setenv("REMOVAI_GATEWAY_REDIS_URL_FILE", str(tmp_path / "absent"))
    with pytest.raises(SecretFileError, match=r"REMOVAI_GATEWAY_REDIS_URL_FILE=.*absent: cannot read it"):
        GatewaySettings()
    monkeypatch.delenv("REMOVAI_GATEWAY_REDIS_URL_FILE")
    assert GatewaySettings().database_url == "postgresql+asyncpg://app:pw@db.example/removai"
    monkeypatch.setenv("REMOVAI_GATEWAY_DATABASE_URL", "sqlite+aiosqlite:///elsewhere.db")
    assert GatewaySettings().database_url == "sqlite+aiosqlite:///elsewhere.db"
    assert GatewaySettings(database_url="").database_url == ""


async def _answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == HTTPStatus.OK
    except aiohttp.ClientConnectionError:
        return False


async def test_gateway_process_shows_no_password_it_was_given(tmp_path: Path, s3_server: S3Server) -> None:
    """`python -m gateway` with a database password in --database-url, a Redis password in its variable and the
    storage secret in a _FILE: it serves with all three (an account read through PostgreSQL and Redis), warns
    that the flag puts a secret in `ps`, shows the database URL masked, and none of the three secrets is in any
    line of its output. Its metrics are on the metrics port only: /metrics on the API port is the 404."""
    storage_file = tmp_path / "storage_url"
    storage_file.write_text(
        f"s3://{s3_server.create_bucket()}?endpoint={s3_server.endpoint}&region={REGION}"
        f"&access_key_id=AKIDTEST&secret_access_key={STORAGE_SECRET}\n"
    )
    storage_file.chmod(0o600)
    port, metrics_port = free_port(), free_port()
    async with postgres_database() as database_url:
        # In this process, the URL without a password: the session's log scan flags any URL that has one.
        async with open_database(database_url) as sessions:
            _, api_key = await accounts.create_account(sessions, name="secrets", plan="pro")
        with_password = database_url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@")
        output_path = tmp_path / "gateway.out"
        with output_path.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "--host=127.0.0.1", f"--port={port}", f"--metrics-port={metrics_port}",
                f"--data-dir={tmp_path / 'data'}", f"--inference-url=127.0.0.1:{free_port()}",
                "--database-url", with_password,
                cwd=REPO_ROOT, stdout=output, stderr=asyncio.subprocess.STDOUT,
                env=_clean_environment(
                    REMOVAI_GATEWAY_REDIS_URL=f"redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0",
                    REMOVAI_GATEWAY_STORAGE_URL_FILE=str(storage_file),
                ),
            )
        try:
            base = f"http://127.0.0.1:{port}"
            await eventually(lambda: _answers(f"{base}/healthz"), message="the gateway answers /healthz")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/v1/account", headers={"X-API-Key": api_key}) as response:
                    assert response.status == HTTPStatus.OK
                    assert (await response.json())["data"]["name"] == "secrets"
                    assert response.headers["X-RateLimit-Limit"] == "60"
                async with session.get(f"{base}/metrics") as response:
                    assert response.status == HTTPStatus.NOT_FOUND
                    assert response.content_type == "application/json"
                    body = await response.json()
                    assert (body["success"], body["error"]["code"]) == (False, "not_found")
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                    assert response.status == HTTPStatus.OK
                    text = await response.text()
                    assert 'removai_gateway_requests_total{method="GET",route="/v1/account",status="200"}' in text
                    assert 'removai_gateway_requests_total{method="GET",route="unmatched",status="404"}' in text
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(process.wait(), 90)
    output_text = output_path.read_text(errors="replace")
    assert status == 0, output_text
    masked = database_url.replace("postgres@", "postgres:***@")
    assert f"migrating database {masked} to head" in output_text
    assert "--database-url puts a secret on the command line" in output_text
    assert "REMOVAI_GATEWAY_DATABASE_URL_FILE naming a file" in output_text
    assert "storing files in bucket" in output_text and "rate limiting through Redis" in output_text
    assert f"Prometheus metrics on 127.0.0.1 port {metrics_port}" in output_text
    leaked = [line for line in output_text.splitlines() if any(secret in line for secret in SECRETS)]
    assert leaked == []


async def test_admin_reads_the_database_url_from_its_file_and_masks_it(tmp_path: Path) -> None:
    """removai-admin finds the database through REMOVAI_GATEWAY_DATABASE_URL_FILE as the gateway does, says so
    with the URL masked; given the URL as --database-url it warns that `ps` shows it; the password is printed
    nowhere."""
    async with postgres_database() as database_url:
        with_password = database_url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@")
        masked = database_url.replace("postgres@", "postgres:***@")
        url_file = tmp_path / "database_url"
        url_file.write_text(with_password + "\n")

        async def admin(*arguments: str, **variables: str) -> tuple[int, str, str]:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.admin", *arguments, cwd=tmp_path, env=_clean_environment(**variables),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 120)
            assert process.returncode is not None
            return process.returncode, out.decode(), err.decode()

        status, out, err = await admin("accounts", "list", "--create", REMOVAI_GATEWAY_DATABASE_URL_FILE=str(url_file))
        assert status == 0, err
        assert out == "id\tplan\tname\temail\tcreated_at\tstatus\n"
        assert f"removai-admin: database {masked} (from the file REMOVAI_GATEWAY_DATABASE_URL_FILE names)" in err
        assert "warning" not in err

        status, out, err = await admin("--database-url", with_password, "accounts", "list")
        assert status == 0, err
        assert f"removai-admin: database {masked} (from --database-url)" in err
        assert ("removai-admin: warning: --database-url puts the database password on the command line, which every"
                " user of this machine can read (ps)") in err
        assert DATABASE_PASSWORD not in out + err

