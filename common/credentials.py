"""Credentials kept out of argv, banners and logs: every URL shown has its password masked, and secrets are
read from the environment or from a file a `<VARIABLE>_FILE` variable names (Docker's and Kubernetes' way of
handing a secret to a process without putting it in `ps` or in the environment itself)."""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

MASK = "***"
# A query (or fragment) parameter whose name contains one of these carries a credential: password, passwd,
# secret_access_key, access_key_id, session_token, token, api_key, signature, X-Amz-Signature, X-Amz-Credential,
# auth... Masking a harmless parameter by mistake costs a log reader one value; missing a secret costs the secret.
_SECRET_NAME_PARTS = ("pass", "pwd", "secret", "token", "key", "sig", "credential", "auth")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>.*)$", re.DOTALL)
# A URL inside free text: up to whitespace, a quote or an angle bracket (as log lines and reprs delimit them).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PARAMETER = re.compile(r"(?P<name>[^&;=?#]+)=(?P<value>[^&;#]*)")
FILE_SUFFIX = "_FILE"


def _is_secret_parameter(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_NAME_PARTS)


def _mask_parameters(text: str) -> str:
    return _PARAMETER.sub(
        lambda match: f"{match['name']}={MASK}" if _is_secret_parameter(match["name"]) else match[0], text
    )


def mask_url(url: str) -> str:
    """`url` with the password of its userinfo and the values of its credential parameters replaced by ***,
    everything else as written: `postgresql+asyncpg://app:s3cret@db/removai` ->
    `postgresql+asyncpg://app:***@db/removai`, `s3://bucket?region=x&secret_access_key=k` ->
    `s3://bucket?region=x&secret_access_key=***`. A string that is not `scheme://...` is returned unchanged.

    The userinfo ends at the last `@` before the query: a password with an unescaped `/` or `@` (which
    SQLAlchemy accepts) is masked whole. The price is a URL with `@` in its path after a port
    (`http://host:8080/a@b`), shown as `http://host:***@b`: over-masked, never leaked."""
    match = _URL.match(url)
    if match is None:
        return url
    rest = match["rest"]
    end = min((index for index in (rest.find("?"), rest.find("#")) if index >= 0), default=len(rest))
    before_query, query = rest[:end], rest[end:]
    userinfo, at, after_userinfo = before_query.rpartition("@")
    if at and ":" in userinfo:
        before_query = f"{userinfo.partition(':')[0]}:{MASK}@{after_userinfo}"
    return f"{match['scheme']}{before_query}{_mask_parameters(query)}"


def mask_urls_in(text: str) -> str:
    """`text` (a log line, an exception's message, a settings dump) with every URL in it passed through mask_url."""
    return _URL_IN_TEXT.sub(lambda match: mask_url(match[0]), text)


def carries_credential(value: str) -> bool:
    """Whether `value` holds a URL with a password or a credential parameter (what mask_url would hide)."""
    return mask_urls_in(value) != value


def secret_flags(argv: Sequence[str], secret_settings: Collection[str] = ()) -> list[str]:
    """The flags of `argv` that put a secret on the command line, where every user of the machine reads it
    (`ps`, /proc/<pid>/cmdline): a flag naming one of `secret_settings` (`--url-signing-secret` for
    "url_signing_secret"), or any flag whose value carries a credential (`--database-url=...:password@...`)."""
    flags: list[str] = []
    for index, token in enumerate(argv):
        flag, has_value, value = token.partition("=")
        if not flag.startswith("--"):
            continue
        if not has_value:
            following = argv[index + 1] if index + 1 < len(argv) else ""
            value = "" if following.startswith("--") else following
        if flag[2:].replace("-", "_") in secret_settings or carries_credential(value):
            flags.append(flag)
    return flags


class SecretFileError(ValueError):
    """A `<VARIABLE>_FILE` variable names a file that cannot be read."""


def read_secret_file(variable: str, path: str) -> str:
    """The secret in the file `path` (named by `variable`), without its trailing newline."""
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise SecretFileError(f"{variable}={path}: cannot read it ({type(error).__name__}: {error.args[-1]})") from None


def from_environment(variable: str, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(value, where it came from) of a secret setting: `variable` itself when it is set (even empty: as the
    services' settings read it, the variable wins over its file), else the contents of the file `<variable>_FILE`
    names; ("", "") when neither is set."""
    environ = os.environ if environ is None else environ
    if variable in environ:
        return environ[variable], variable
    file_variable = variable + FILE_SUFFIX
    if path := environ.get(file_variable, ""):
        return read_secret_file(file_variable, path), f"{file_variable} ({path})"
    return "", ""
