"""common.credentials: passwords and credential parameters masked in every URL shown, secrets read from the
environment or a `<VARIABLE>_FILE`, flags that put a secret in `ps` found; and the log formatters that mask."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from common.credentials import (
    SecretFileError,
    carries_credential,
    from_environment,
    mask_url,
    mask_urls_in,
    secret_flags,
)
from common.logs import JsonFormatter, MaskingFormatter


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+asyncpg://app:s3cret@db.internal:5432/removai", "postgresql+asyncpg://app:***@db.internal:5432/removai"),
    ("redis://:pw-only@redis:6379/0", "redis://:***@redis:6379/0"),
    ("redis://default:pw@redis:6379/0?ssl_cert_reqs=none", "redis://default:***@redis:6379/0?ssl_cert_reqs=none"),
    # Unescaped / and @ in the password (SQLAlchemy accepts both): masked whole, the host kept.
    ("postgresql://u:pa/ss@w@db/removai", "postgresql://u:***@db/removai"),
    ("s3://files/outputs?endpoint=http://minio:9000&region=eu-west-1&access_key_id=AKIA1&secret_access_key=wJalr",
     "s3://files/outputs?endpoint=http://minio:9000&region=eu-west-1&access_key_id=***&secret_access_key=***"),
    ("s3://b?session_token=t0k&virtual_hosted_style_request=true",
     "s3://b?session_token=***&virtual_hosted_style_request=true"),
    ("postgresql+asyncpg://app@db/removai?password=s3cret&ssl=require",
     "postgresql+asyncpg://app@db/removai?password=***&ssl=require"),
    ("https://bucket.s3.amazonaws.com/a.png?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc#access_token=t&state=1",
     "https://bucket.s3.amazonaws.com/a.png?X-Amz-Credential=***&X-Amz-Signature=***#access_token=***&state=1"),
    ("https://hooks.example/h?token=t0ps3cret&api_key=k", "https://hooks.example/h?token=***&api_key=***"),
])
def test_mask_url_hides_the_password_and_credential_parameters(url: str, shown: str) -> None:
    """The userinfo password and every credential parameter (query or fragment) become ***; scheme, user, host,
    port, path and the other parameters stay as written."""
    assert mask_url(url) == shown
    assert carries_credential(url)


@pytest.mark.parametrize("url", [
    "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "sqlite+aiosqlite:////var/lib/removai/removai.db",
    "s3://files?endpoint=http://127.0.0.1:9000&region=us-east-1",
    "redis://127.0.0.1:6379/0",
    "127.0.0.1:8001",
    "not a url",
    "",
])
def test_mask_url_leaves_urls_without_credentials_as_written(url: str) -> None:
    """A URL with nothing secret in it (or a string that is no URL) comes back byte for byte."""
    assert mask_url(url) == url
    assert not carries_credential(url)


def test_mask_urls_in_masks_every_url_of_a_text() -> None:
    """Every URL inside free text (quoted, in parentheses, several on a line) is masked; the text around it stays."""
    text = ("cannot connect to 'postgresql://app:pw1@db/x' (then redis://:pw2@r:6379/0); "
            "storage s3://b?secret_access_key=pw3 ok, see https://docs.example/page")
    assert mask_urls_in(text) == ("cannot connect to 'postgresql://app:***@db/x' (then redis://:***@r:6379/0); "
                                  "storage s3://b?secret_access_key=*** ok, see https://docs.example/page")


def test_from_environment_reads_the_variable_then_its_file(tmp_path: Path) -> None:
    """The variable wins (even set empty, as pydantic-settings reads it); else the file `<VARIABLE>_FILE` names,
    without its trailing newline; neither gives ("", ""); an unreadable file is an error naming the variable."""
    secret = tmp_path / "database_url"
    secret.write_text("postgresql+asyncpg://app:pw@db/x\n")
    file_only = {"REMOVAI_GATEWAY_DATABASE_URL_FILE": str(secret)}
    assert from_environment("REMOVAI_GATEWAY_DATABASE_URL", file_only) == (
        "postgresql+asyncpg://app:pw@db/x", f"REMOVAI_GATEWAY_DATABASE_URL_FILE ({secret})"
    )
    both = {**file_only, "REMOVAI_GATEWAY_DATABASE_URL": "sqlite+aiosqlite:///x.db"}
    assert from_environment("REMOVAI_GATEWAY_DATABASE_URL", both) == (
        "sqlite+aiosqlite:///x.db", "REMOVAI_GATEWAY_DATABASE_URL"
    )
    assert from_environment("REMOVAI_GATEWAY_DATABASE_URL", {**file_only, "REMOVAI_GATEWAY_DATABASE_URL": ""}) == (
        "", "REMOVAI_GATEWAY_DATABASE_URL"
    )
    assert from_environment("REMOVAI_GATEWAY_DATABASE_URL", {}) == ("", "")
    missing = {"REMOVAI_GATEWAY_DATABASE_URL_FILE": str(tmp_path / "absent")}
    with pytest.raises(SecretFileError, match=r"^REMOVAI_GATEWAY_DATABASE_URL_FILE=.*absent: cannot read it"):
        from_environment("REMOVAI_GATEWAY_DATABASE_URL", missing)


def test_secret_flags_names_the_flags_that_put_a_secret_in_ps() -> None:
    """Flags whose value (after = or as the next word) carries a credential, and flags of secret settings,
    are reported; password-less URLs and other flags are not."""
    argv = ["--port=8080", "--database-url", "postgresql://app:pw@db/x", "--redis-url=redis://r:6379/0",
            "--storage-url=s3://b?secret_access_key=k", "--url-signing-secret", "abcdef", "--log-json"]
    assert secret_flags(argv) == ["--database-url", "--storage-url"]
    assert secret_flags(argv, ["url_signing_secret"]) == ["--database-url", "--storage-url", "--url-signing-secret"]
    assert secret_flags(["--database-url=postgresql://app@db/x"]) == []


def test_log_formatters_mask_urls_in_messages_and_tracebacks() -> None:
    """The services' plain and JSON formatters mask a URL's password in the message and in the traceback, so
    a line from any library or exception cannot carry one."""
    try:
        raise ConnectionError("cannot reach redis://:hunter2-pw@redis:6379/0")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "opening %s", ("postgresql://a:hunter2-pw@db/x",),
                               exc_info)
    plain = MaskingFormatter("%(message)s").format(record)
    assert plain.startswith("opening postgresql://a:***@db/x\nTraceback")
    assert "redis://:***@redis:6379/0" in plain and "hunter2" not in plain
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "opening postgresql://a:***@db/x"
    assert "redis://:***@redis:6379/0" in entry["exception"] and "hunter2" not in entry["exception"]
