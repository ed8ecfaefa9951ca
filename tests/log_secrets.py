"""A pytest plugin that fails the run when any log line of the whole session carries a secret: an API key,
a webhook secret or signature, a URL-signing signature or a `token=` query parameter."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import pytest

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Shapes no log line may contain, whoever created the secret. The API key's display prefix ("rmv_" and four
# characters) is fine to log; a full key (43 characters after the prefix) is not.
SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"rmv_[A-Za-z0-9_-]{20,}"),                    # an API key (gateway.domain.accounts.API_KEY_PREFIX)
    re.compile(r"whsec_[A-Za-z0-9+/=_-]{16,}"),               # a Standard Webhooks secret
    re.compile(r"\bv1=[0-9a-f]{64}"),                         # a webhook signature header value
    re.compile(r"[?&]signature=[^&\s\"']+"),                  # an output_url link's signature
    re.compile(r"[?&](?:token|access_token|sig|X-Amz-Signature)=[^&\s\"']+", re.IGNORECASE),
    # userinfo with a password; a masked one (SQLAlchemy's "user:***@") is what logs should carry
    re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\"']+:(?!\*\*\*@)[^/\s@\"']+@"),
)
_MAX_REPORTED = 20


class SecretScanner(logging.Handler):
    """Formats every record (tracebacks included) and keeps the lines that carry a registered secret or
    match a SECRET_PATTERNS shape; keeps no other line, so a long run costs no memory."""

    def __init__(self, patterns: Iterable[re.Pattern[str]] = SECRET_PATTERNS) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self._patterns = tuple(patterns)
        self._secrets: set[str] = set()
        self.leaks: list[str] = []
        self.scanned = 0

    def register(self, secret: str | None) -> None:
        """A secret a test created; too-short strings would match innocent text, so they are refused."""
        if secret:
            if len(secret) < 12:
                raise ValueError("register only real secrets (12 characters or more)")
            self._secrets.add(secret)

    def find(self, line: str) -> str | None:
        """What in `line` is secret (a registered secret's first characters, or the pattern), else None."""
        for secret in self._secrets:
            if secret in line:
                return f"registered secret {secret[:6]}..."
        for pattern in self._patterns:
            if pattern.search(line):
                return f"pattern {pattern.pattern}"
        return None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except (TypeError, ValueError):  # bad %-arguments: the logging module reports those itself
            return
        self.scanned += 1
        found = self.find(line)
        if found is not None and len(self.leaks) < _MAX_REPORTED:
            self.leaks.append(f"{found} in a log line of {record.name} ({record.pathname}:{record.lineno})")


SCANNER = SecretScanner()


def _registering(
    function: Callable[_P, Awaitable[_T]], secrets_of: Callable[[_T], Iterable[str | None]]
) -> Callable[_P, Awaitable[_T]]:
    @functools.wraps(function)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        result = await function(*args, **kwargs)
        for secret in secrets_of(result):
            SCANNER.register(secret)
        return result

    return wrapper


def _register_created_secrets() -> None:
    """Every account and key the tests create registers its API key and webhook secret with the scanner."""
    from gateway.domain import accounts

    def secrets_in(result: Any) -> list[str | None]:
        """Clear-text strings returned (keys) and the webhook secrets of accounts returned, in whatever shape
        the function returns them (an account and a key, or a key alone)."""
        found: list[str | None] = []
        for item in result if isinstance(result, tuple) else (result,):
            if isinstance(item, str) and len(item) >= 12:
                found.append(item)
            secret = getattr(item, "webhook_secret", None)
            if isinstance(secret, str):
                found.append(secret)
        return found

    accounts.create_account = _registering(accounts.create_account, secrets_in)  # type: ignore[assignment]
    accounts.rotate_key = _registering(accounts.rotate_key, secrets_in)  # type: ignore[assignment]


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(SCANNER)
    _register_created_secrets()


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(SCANNER)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run fails if any log line carried a secret, even when every test passed."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # A pytest-xdist worker: its exit status and summary never reach the terminal, so hand the leaks to the
        # controller (pytest_testnodedown below), which fails the run and names them.
        workeroutput["secret_leaks"] = list(SCANNER.leaks)
    if SCANNER.leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the pytest-xdist controller: a finished worker's leaks become the controller's."""
    for leak in getattr(node, "workeroutput", {}).get("secret_leaks", []):
        if len(SCANNER.leaks) < _MAX_REPORTED:
            SCANNER.leaks.append(leak)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if SCANNER.leaks:
        terminalreporter.section("secrets in logs", red=True)
        for leak in SCANNER.leaks:
            terminalreporter.line(leak)
