"""The session-wide log scan (tests/log_secrets.py) finds secrets in log lines and fails a run that logs one."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.net.urlfetch import redact_url, redact_urls_in
from tests.log_secrets import SCANNER, SecretScanner

ROOT = Path(__file__).resolve().parent.parent


def _logger_with(scanner: SecretScanner) -> logging.Logger:
    logger = logging.getLogger(f"tests.scan.{id(scanner)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(scanner)
    return logger


def test_scanner_reports_registered_secrets_and_secret_shapes_only() -> None:
    """Registered secrets, full API keys, signatures, tokens and passwords in URLs (tracebacks included) are
    reported; key display prefixes, clean URLs and ordinary text are not."""
    scanner = SecretScanner()
    logger = _logger_with(scanner)
    scanner.register("0123456789abcdef-webhook-secret")
    logger.info("clean line: account acct_abc, key rmv_AbCd..., url %s", "https://img.example/a.png")
    logger.info("image host unreachable for %s", redact_url("https://u:pw@img.example/a.png?token=s3cret#x"))
    assert (scanner.leaks, scanner.scanned) == ([], 2)
    logger.info("secret %s", "xx0123456789abcdef-webhook-secretyy")
    logger.info("key rmv_%s", "A" * 43)
    logger.warning("GET /v1/files/img_1.png?expires=1&signature=%s", "ab" * 32)
    logger.info("fetching https://img.example/a.png?X-Amz-Signature=abc")
    logger.info("fetching https://user:password@img.example/a.png")
    logger.info("database postgresql+asyncpg://postgres:***@db.example/removai")  # masked: not a leak
    logger.info("header v1=%s", "0f" * 32)
    try:
        raise RuntimeError("https://hooks.example/h?token=t0ps3cret")
    except RuntimeError:
        logger.exception("delivery failed")
    assert scanner.scanned == 10
    assert [leak.split(" in a log line")[0] for leak in scanner.leaks] == [
        "registered secret 012345...",
        r"pattern rmv_[A-Za-z0-9_-]{20,}",
        r"pattern [?&]signature=[^&\s\"']+",
        r"pattern [?&](?:token|access_token|sig|X-Amz-Signature)=[^&\s\"']+",
        r"pattern [A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\"']+:(?!\*\*\*@)[^/\s@\"']+@",
        r"pattern \bv1=[0-9a-f]{64}",
        r"pattern [?&](?:token|access_token|sig|X-Amz-Signature)=[^&\s\"']+",
    ]


def test_redacted_urls_keep_host_and_path_only() -> None:
    """redact_url drops userinfo, query and fragment; redact_urls_in does it to every URL inside a text."""
    assert redact_url("https://u:pw@img.example:8443/a/b.png?token=x&y=1#frag") == "https://img.example:8443/a/b.png"
    assert redact_url("not a url") == "not a url"
    assert redact_urls_in("failed url='http://h.example/x?sig=1' and https://a:b@c.example/") == (
        "failed url='http://h.example/x' and https://c.example/"
    )


def test_the_session_scanner_is_installed_on_the_root_logger() -> None:
    """The plugin's scanner sees every record of this run (it hangs on the root logger)."""
    assert SCANNER in logging.getLogger().handlers


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["one-process", "xdist"])
def test_a_run_whose_logs_carry_a_secret_fails(tmp_path: Path, workers: list[str]) -> None:
    """A passing test that logs an API key makes the whole pytest run fail, naming the leak, also when the test
    runs on a pytest-xdist worker (as in `make test-fast`), whose own exit status the run does not use."""
    test_file = tmp_path / "test_leaky.py"
    test_file.write_text(textwrap.dedent('''
        import logging

        def test_leaks() -> None:
            """Passes, but logs a key."""
            logging.getLogger("leaky").warning("created key rmv_%s", "k" * 43)
    '''))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.log_secrets", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", "/dev/null", *workers, str(test_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "secrets in logs" in result.stdout and "rmv_" in result.stdout and "leaky" in result.stdout


async def test_access_log_has_no_query_and_no_forged_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The gateway's access log line for a signed link has the path, control characters escaped, and
    nothing of the query string; a %0A in the path cannot start a forged line."""
    from tests.gateway.harness import gateway
    from tools.triton_launcher import free_port

    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with gateway(inference_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path) as gw:
        response = await gw.client.get("/v1/files/a%0AFORGED%20line.png?expires=1&signature=" + "ab" * 32)
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    # Only this request's lines: under pytest-xdist a worker's other servers (session fixtures) may log beside it.
    lines = [record.getMessage() for record in caplog.records if record.name == "aiohttp.access"]
    [line] = [text for text in lines if "/v1/files/" in text] or lines
    assert line.startswith('127.0.0.1 "GET /v1/files/a\\nFORGED line.png" 404 ')
    assert "\n" not in line and "signature" not in line and "expires" not in line


async def test_created_accounts_register_their_key_and_webhook_secret(tmp_path: Path) -> None:
    """An account created (and a key rotated) during the run registers its secrets with the session scanner,
    so a log line quoting them would fail the run."""
    from gateway.domain import accounts
    from gateway.store.database import default_database_url, open_database

    async with open_database(default_database_url(tmp_path)) as sessions:
        account, api_key = await accounts.create_account(sessions, name="scan", plan="basic")
        rotated = await accounts.rotate_key(sessions, account.id)
    assert rotated is not None
    for secret in (api_key, account.webhook_secret, rotated):
        assert SCANNER.find(f"x {secret} y") == f"registered secret {secret[:6]}..."
