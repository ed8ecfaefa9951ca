"""Operator CLI on the gateway's own database (accounts and their plans, API keys, webhook signing secrets, the
usage report), e.g. `removai-admin accounts list`; also `python -m gateway.admin`.

It finds the database exactly as the gateway does (REMOVAI_GATEWAY_DATABASE_URL or the file
REMOVAI_GATEWAY_DATABASE_URL_FILE names, else the SQLite file in REMOVAI_GATEWAY_DATA_DIR, default ./var),
says on stderr which one it used (its password masked), and never creates a new one
unless --create is given: a key written to a database the gateway does not read would only ever get 401.
Changes to accounts and keys reach each running gateway replica within its auth_cache_ttl_s (it remembers an
authenticated key that long). Exit status: 0 done, 1 no such account (or key), 2 the command cannot run (usage,
no database there, unreachable), 3 a deletion not confirmed."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from alembic.util.exc import CommandError
from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict
from sqlalchemy import URL, inspect, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from common.credentials import FILE_SUFFIX, SecretFileError, carries_credential, mask_urls_in
from common.credentials import mask_url as mask_any_url
from common.logs import masking_handler
from gateway.domain import accounts, quota
from gateway.domain.account_removal import count_contents, delete_account
from gateway.domain.plans import PLANS
from gateway.parsing import ascii_int
from gateway.settings import FileVariableSettings, GatewaySettings
from gateway.store.database import (
    Sessions,
    create_database_engine,
    create_sessions,
    default_database_url,
    upgrade_schema,
)
from gateway.store.storage import InvalidStorageUrl, OutputStorage, create_storage
from gateway.store.tables import Account, ApiKey, PlanName, utc_now

_LOGGER = logging.getLogger(__name__)

PROG = "removai-admin"
_GATEWAY_ENV_PREFIX = GatewaySettings.model_config.get("env_prefix", "REMOVAI_GATEWAY_")
DATABASE_URL_VARIABLE = f"{_GATEWAY_ENV_PREFIX}DATABASE_URL"
DATA_DIR_VARIABLE = f"{_GATEWAY_ENV_PREFIX}DATA_DIR"
# The gateway's own setting, so the admin rotates with the window the gateway's API uses.
OVERLAP_VARIABLE = f"{_GATEWAY_ENV_PREFIX}WEBHOOK_SECRET_OVERLAP_S"
_DEFAULT_OVERLAP_S: int = GatewaySettings.model_fields["webhook_secret_overlap_s"].default
# How long a gateway replica keeps accepting a key it has authenticated (revoked, or its account disabled).
AUTH_CACHE_TTL_VARIABLE = f"{_GATEWAY_ENV_PREFIX}AUTH_CACHE_TTL_S"
_DEFAULT_AUTH_CACHE_TTL_S: float = GatewaySettings.model_fields["auth_cache_ttl_s"].default
# The table every RemovAI database has from its first migration on: its absence means "not our database".
_MARKER_TABLE = Account.__tablename__

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_CANNOT_RUN = 2
EXIT_NOT_CONFIRMED = 3
_MONTH = re.compile(r"[0-9]{4}-(?:0[1-9]|1[0-2])")


def _gateway_field(name: str) -> Any:
    """The gateway setting `name`'s field: its default and description, the gateway's own definition."""
    field = GatewaySettings.model_fields[name]
    return Field(field.default, description=field.description)


class _GatewaySubset(FileVariableSettings):
    """A few gateway settings, from the same variables (and `..._FILE` variables) with the same defaults, and
    nothing else: an unrelated gateway setting that is invalid must not stop an operator's command."""

    model_config = SettingsConfigDict(
        env_prefix=_GATEWAY_ENV_PREFIX, frozen=True, extra="ignore", hide_input_in_errors=True
    )


class DatabaseSettings(_GatewaySubset):
    """The two gateway settings that locate its database (an invalid unrelated setting must not stop an operator
    from rotating a key)."""

    data_dir: Path = _gateway_field("data_dir")
    database_url: str = _gateway_field("database_url")

    @property
    def url(self) -> str:
        """The URL the gateway would open with these settings."""
        return self.database_url or default_database_url(self.data_dir)


class StorageSettings(_GatewaySubset):
    """The gateway settings that locate its stored files (the images' outputs and uploads), read as the gateway
    reads them; only `accounts delete` needs them."""

    data_dir: Path = _gateway_field("data_dir")
    storage_url: str = _gateway_field("storage_url")


class CannotRun(Exception):
    """The command cannot run on the chosen database (none there, unreachable, not RemovAI's): exit status 2."""


@dataclass(frozen=True)
class DatabaseChoice:
    """The database URL the admin will open and where that choice came from, to say so on stderr."""

    url: str
    source: str

    @property
    def masked_url(self) -> str:
        """The URL with any password replaced by ***, safe to print and log."""
        return mask_url(self.url)


def mask_url(url: str) -> str:
    """Return `url` with its password hidden (common.credentials.mask_url); a URL that does not parse as a
    database URL is not echoed at all (it may hold one where no mask would find it)."""
    try:
        make_url(url)
    except ArgumentError:
        return "(not a database URL)"
    return mask_any_url(url)


def choose_database(arguments: argparse.Namespace) -> DatabaseChoice:
    """Pick the database as the gateway would: --database-url or REMOVAI_GATEWAY_DATABASE_URL, else the
    SQLite file in --data-dir or REMOVAI_GATEWAY_DATA_DIR (default ./var, resolved against the current
    directory)."""
    overrides: dict[str, object] = {}
    if arguments.database_url is not None:
        overrides["database_url"] = arguments.database_url
    if arguments.data_dir is not None:
        overrides["data_dir"] = arguments.data_dir

    try:
        settings = DatabaseSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise CannotRun(f"invalid database setting: {error}") from None
    except SecretFileError as error:
        raise CannotRun(str(error)) from None

    if arguments.database_url is not None:
        source = "from --database-url"
        if carries_credential(arguments.database_url):
            _warn(arguments, f"--database-url puts the database password on the command line, which every user of "
                             f"this machine can read (ps); set {DATABASE_URL_VARIABLE}, or "
                             f"{DATABASE_URL_VARIABLE}{FILE_SUFFIX} naming a file that holds the URL")
    elif settings.database_url and not _gateway_variable(DATABASE_URL_VARIABLE):
        source = f"from the file {DATABASE_URL_VARIABLE}{FILE_SUFFIX} names"
    elif settings.database_url:
        source = f"from {DATABASE_URL_VARIABLE}"
    elif arguments.data_dir is not None:
        source = f"removai.db in --data-dir {arguments.data_dir}{_under_cwd(settings.data_dir)}"
    elif _gateway_variable(DATA_DIR_VARIABLE):
        source = f"removai.db in {DATA_DIR_VARIABLE}={settings.data_dir}{_under_cwd(settings.data_dir)}"
    else:
        source = (f"removai.db in the default data dir {settings.data_dir} under {Path.cwd()}: "
                  f"{DATABASE_URL_VARIABLE} and {DATA_DIR_VARIABLE} are unset")
    return DatabaseChoice(url=settings.url, source=source)


def _under_cwd(data_dir: Path) -> str:
    # A relative data dir is the usual way to land in the wrong database: say where it was resolved.
    return "" if data_dir.is_absolute() else f" under {Path.cwd()}"


def _gateway_variable(name: str) -> str:
    # pydantic-settings matches variable names case-insensitively (its default); so does this check.
    return next((value for key, value in os.environ.items() if key.upper() == name and value), "")


def _warn(arguments: argparse.Namespace, message: str) -> None:
    print(f"{arguments.prog}: warning: {message}", file=sys.stderr)


def _sqlite_file(url: URL) -> Path | None:
    """The file an SQLite URL names, or None for in-memory and URI forms (which have no file to look for)."""
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        return None
    return Path(url.database)


def _has_marker_table(connection: Connection) -> bool:
    return inspect(connection).has_table(_MARKER_TABLE)


_HOW_TO_FIX = (
    f"run it where the gateway runs, or point it at the gateway's database with {DATABASE_URL_VARIABLE} / "
    f"{DATA_DIR_VARIABLE} (or --database-url / --data-dir); --create makes a new, empty one on purpose"
)


async def open_admin_database(choice: DatabaseChoice, *, create: bool, prog: str = PROG) -> AsyncEngine:
    """Open the chosen database and bring its schema to head; refuse (CannotRun) one that does not exist or
    holds no RemovAI tables unless `create`, and one that cannot be reached or migrated."""
    try:
        url = make_url(choice.url)
    except ArgumentError:
        raise CannotRun("the database URL does not parse (expected e.g. postgresql+asyncpg://user@host/db or "
                        "sqlite+aiosqlite:////path/removai.db)") from None
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.exists() and not create:
        # Checked before any engine exists: opening an SQLite URL creates the file.
        raise CannotRun(f"no database at {sqlite_file}: {_HOW_TO_FIX}")

    try:
        engine = create_database_engine(choice.url)
    except (ArgumentError, SQLAlchemyError, OSError, ValueError, ImportError) as error:
        # ImportError: a driver this install lacks, typically a sync one (postgresql://, psycopg).
        raise CannotRun(f"cannot open {choice.masked_url}: {_describe(error)} (the gateway's drivers are "
                        "postgresql+asyncpg:// and sqlite+aiosqlite://)") from None
    try:
        try:
            async with engine.connect() as connection:
                existing = await connection.run_sync(_has_marker_table)
        except (SQLAlchemyError, OSError) as error:
            raise CannotRun(f"cannot connect to {choice.masked_url}: {_describe(error)}") from None
        if not existing and not create:
            raise CannotRun(f"{choice.masked_url} holds no RemovAI tables (not the gateway's database?): "
                            f"{_HOW_TO_FIX}")
        try:
            await upgrade_schema(engine)
        except CommandError as error:
            # Typically a database migrated by a newer gateway than this admin's code knows.
            raise CannotRun(f"cannot bring {choice.masked_url} to this version's schema: {error}; run the admin"
                            " of the same version as the gateway") from None
        except (SQLAlchemyError, OSError) as error:
            raise CannotRun(f"cannot migrate {choice.masked_url}: {_describe(error)}") from None
        if not existing:
            print(f"{prog}: created the RemovAI tables in {choice.masked_url} (--create)", file=sys.stderr)
        return engine
    except BaseException:
        await engine.dispose()
        raise


def _describe(error: BaseException) -> str:
    # SQLAlchemy's messages carry the statement and a link; the driver's first line is what helps.
    original: BaseException = getattr(error, "orig", None) or error
    while original.__cause__ is not None:  # the driver's own exception (asyncpg's), under SQLAlchemy's adapter
        original = original.__cause__
    text = mask_urls_in(str(original)).strip().splitlines()
    return f"{type(original).__name__}: {text[0]}" if text else type(original).__name__


def _overlap_seconds(value: str) -> int:
    seconds = ascii_int(value)
    if seconds is None:
        raise argparse.ArgumentTypeError("must be a whole number of seconds (0 or more)")
    return seconds


def _month(value: str) -> str:
    if not _MONTH.fullmatch(value):
        raise argparse.ArgumentTypeError("must be a month as YYYY-MM, e.g. 2026-12")
    return value


def _add_database_options(parser: argparse.ArgumentParser, *, nested: bool) -> None:
    # On the admin parser and again on each command (SUPPRESS there, so a value given before the command is
    # not reset): `removai-admin accounts list --create` reads as naturally as `removai-admin --create ...`.
    default: object = argparse.SUPPRESS if nested else None
    group = parser.add_argument_group("database (the gateway's own, found as the gateway finds it)")
    group.add_argument(
        "--database-url", default=default, metavar="URL",
        help=f"SQLAlchemy async URL (default: ${DATABASE_URL_VARIABLE}, else the SQLite file in the data dir)",
    )
    group.add_argument(
        "--data-dir", type=Path, default=default, metavar="DIR",
        help=f"the gateway's data dir holding removai.db (default: ${DATA_DIR_VARIABLE}, else ./var)",
    )
    group.add_argument(
        "--create", action="store_true", default=argparse.SUPPRESS if nested else False,
        help="create the database (or its tables) when there is none; without it a missing one is an error",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the database options and the accounts/keys/webhook-secret commands to `parser` (shared by
    `removai-admin` and `python -m gateway.admin`)."""
    parser.set_defaults(prog=parser.prog)
    _add_database_options(parser, nested=False)
    topics = parser.add_subparsers(dest="topic", required=True)

    def command(
        commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
    ) -> argparse.ArgumentParser:
        leaf = commands.add_parser(name, help=summary, description=summary)
        _add_database_options(leaf, nested=True)
        return leaf

    account_commands = topics.add_parser("accounts", help="manage accounts").add_subparsers(
        dest="command", required=True
    )
    create = command(account_commands, "create", "create an account and print its first API key")
    create.add_argument("--name", required=True)
    create.add_argument("--plan", required=True, choices=get_args(PlanName))
    create.add_argument("--email")
    command(account_commands, "list", "list accounts (keys are never shown)")
    show = command(account_commands, "show", "show an account: plan, status, usage this month, webhook secret "
                                             "rotation date and its keys' prefixes and dates (never a key or a secret)")
    show.add_argument("account_id")
    set_plan = command(account_commands, "set-plan", "move an account to another plan (this month's usage is kept)")
    set_plan.add_argument("account_id")
    set_plan.add_argument("plan", choices=get_args(PlanName))
    disable = command(account_commands, "disable", "refuse every request of an account (403 forbidden); its "
                                                   "keys, images and usage are kept")
    disable.add_argument("account_id")
    enable = command(account_commands, "enable", "let a disabled account's keys work again")
    enable.add_argument("account_id")
    remove = command(account_commands, "delete", "delete an account for good: its keys, images, batches, usage "
                                                 "and the images' stored files; asks for the account id to confirm")
    remove.add_argument("account_id")
    remove.add_argument("--yes", action="store_true", help="do not ask (for scripts): delete at once")

    key_commands = topics.add_parser("keys", help="manage API keys").add_subparsers(
        dest="command", required=True
    )
    list_keys = command(key_commands, "list", "list an account's keys: number, prefix, created, last used, revoked")
    list_keys.add_argument("account_id")
    issue = command(key_commands, "create", "print one more key for an account, keeping its others (to switch "
                                            "keys without a gap: create, deploy it, revoke the old one)")
    issue.add_argument("account_id")
    revoke = command(key_commands, "revoke", "revoke one key of an account without issuing another")
    revoke.add_argument("account_id")
    revoke.add_argument("key", help="the number `keys list` shows, the key's prefix (rmv_ and 4 characters) or "
                                    "the whole key")
    rotate = command(key_commands, "rotate", "revoke an account's keys and print a new one")
    rotate.add_argument("account_id")

    usage_commands = topics.add_parser("usage", help="usage across accounts").add_subparsers(
        dest="command", required=True
    )
    report = command(usage_commands, "report", "every account's images this month against its plan's quota, "
                                               "its active keys and their last use")
    report.add_argument("--month", type=_month, help="YYYY-MM, a UTC calendar month (default: this one)")
    report.add_argument("--json", action="store_true", help="one JSON document instead of the table")

    secret_commands = topics.add_parser(
        "webhook-secret", help="show or rotate webhook signing secrets"
    ).add_subparsers(dest="command", required=True)
    show_secret = command(secret_commands, "show", "print an account's webhook signing secret")
    show_secret.add_argument("account_id")
    rotate_secret = command(
        secret_commands, "rotate", "give an account a new webhook secret; the old one also signs during the overlap"
    )
    rotate_secret.add_argument("account_id")
    rotate_secret.add_argument(
        "--overlap-s", type=_overlap_seconds,
        # A string default goes through `type` at parse time, so a bad environment value is a usage error.
        default=os.environ.get(OVERLAP_VARIABLE) or str(_DEFAULT_OVERLAP_S),
        help=f"seconds the previous secret keeps signing (default: ${OVERLAP_VARIABLE}, else {_DEFAULT_OVERLAP_S})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


def _no_account(arguments: argparse.Namespace) -> int:
    print(f"{arguments.prog}: no account {arguments.account_id!r}", file=sys.stderr)
    return EXIT_NOT_FOUND


def _when(moment: dt.datetime | None, never: str = "never") -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else never


async def _create_account(sessions: Sessions, arguments: argparse.Namespace) -> int:
    account, api_key = await accounts.create_account(
        sessions, name=arguments.name, plan=arguments.plan, email=arguments.email
    )
    print(f"account_id: {account.id}")
    print(f"api_key: {api_key}")
    print("Store this API key now: only its hash is kept, it cannot be shown again.", file=sys.stderr)
    return EXIT_OK


async def _list_accounts(sessions: Sessions, arguments: argparse.Namespace) -> int:
    print("id\tplan\tname\temail\tcreated_at\tstatus")
    for account in await accounts.list_accounts(sessions):
        print(f"{account.id}\t{account.plan}\t{account.name}\t{account.email or ''}\t{_when(account.created_at)}"
              f"\t{_status(account)}")
    return EXIT_OK


def _status(account: Account) -> str:
    return "active" if account.disabled_at is None else "disabled"


async def _show_account(sessions: Sessions, arguments: argparse.Namespace) -> int:
    account = await accounts.get_account(sessions, arguments.account_id)
    if account is None:
        return _no_account(arguments)
    month = quota.current_month()
    used = await quota.usage(sessions, account.id, month=month)
    keys = await accounts.list_keys(sessions, account.id) or []
    plan = PLANS.get(account.plan)
    limit = "unlimited" if plan is None or plan.monthly_images is None else str(plan.monthly_images)
    print(f"account_id: {account.id}")
    print(f"name: {account.name}")
    print(f"email: {account.email or ''}")
    print(f"plan: {account.plan}")
    print(f"status: {_status(account)}" + (f" since {_when(account.disabled_at)}" if account.disabled_at else ""))
    print(f"created_at: {_when(account.created_at)}")
    print(f"images_this_month: {used} of {limit} ({month}, UTC)")
    # The date only: the secret itself is what `webhook-secret show` is for, on purpose and on its own.
    print(f"webhook_secret_rotated_at: {_when(account.webhook_secret_rotated_at)}")
    expires_at = account.previous_webhook_secret_expires_at
    if account.previous_webhook_secret and expires_at is not None and expires_at > utc_now():
        print(f"previous_webhook_secret_signs_until: {_when(expires_at)}")
    print(f"api_keys: {sum(key.revoked_at is None for key in keys)} active, {len(keys)} in all")
    _print_keys(keys)
    return EXIT_OK


def _print_keys(keys: Sequence[ApiKey]) -> None:
    print("key\tprefix\tcreated_at\tlast_used_at\trevoked_at")
    for key in keys:
        # Only the display prefix is stored in clear ("rmv_" and 4 characters): the key itself is a hash.
        print(f"{key.id}\t{key.prefix}…\t{_when(key.created_at)}\t{_when(key.last_used_at)}"
              f"\t{_when(key.revoked_at, never='active')}")


def _auth_cache_ttl_s() -> str:
    """The gateway's auth_cache_ttl_s as its variable sets it here (the default when unset or unreadable)."""
    value = _gateway_variable(AUTH_CACHE_TTL_VARIABLE)
    try:
        seconds = float(value) if value else _DEFAULT_AUTH_CACHE_TTL_S
    except ValueError:
        seconds = _DEFAULT_AUTH_CACHE_TTL_S
    return f"{seconds:g} s"


def _reaches_replicas(what: str) -> str:
    return (f"{what} on each running gateway replica within its auth_cache_ttl_s ({_auth_cache_ttl_s()} unless "
            f"{AUTH_CACHE_TTL_VARIABLE} says otherwise there): it remembers an authenticated key that long")


async def _set_plan(sessions: Sessions, arguments: argparse.Namespace) -> int:
    before = await accounts.get_account(sessions, arguments.account_id)
    account = await accounts.change_plan(sessions, arguments.account_id, arguments.plan)
    if before is None or account is None:
        return _no_account(arguments)
    print(f"account_id: {account.id}")
    print(f"plan: {account.plan} (was {before.plan})")
    print(_reaches_replicas("The new plan's limits apply") + ".", file=sys.stderr)
    return EXIT_OK


async def _disable_account(sessions: Sessions, arguments: argparse.Namespace) -> int:
    account = await accounts.set_disabled(sessions, arguments.account_id, True)
    if account is None:
        return _no_account(arguments)
    print(f"account_id: {account.id}")
    print(f"status: disabled since {_when(account.disabled_at)}")
    print(_reaches_replicas("Its keys are refused (403 forbidden)") + ". Queued images still finish; signed file "
          "links already handed out work until they expire. `accounts enable` undoes this.", file=sys.stderr)
    return EXIT_OK


async def _enable_account(sessions: Sessions, arguments: argparse.Namespace) -> int:
    account = await accounts.set_disabled(sessions, arguments.account_id, False)
    if account is None:
        return _no_account(arguments)
    print(f"account_id: {account.id}")
    print("status: active")
    print(_reaches_replicas("Its keys work again") + ".", file=sys.stderr)
    return EXIT_OK


def _open_storage(arguments: argparse.Namespace) -> OutputStorage:
    """The gateway's file store, found as the gateway finds it (REMOVAI_GATEWAY_STORAGE_URL, else data_dir/files;
    --data-dir, when given, is the data dir here too)."""
    overrides: dict[str, object] = {}
    if arguments.data_dir is not None:
        overrides["data_dir"] = arguments.data_dir
    try:
        settings = StorageSettings(**overrides)  # type: ignore[arg-type]
        return create_storage(settings.storage_url, settings.data_dir / "files")
    except (ValidationError, InvalidStorageUrl) as error:
        raise CannotRun(f"invalid storage setting: {error}") from None
    except SecretFileError as error:
        raise CannotRun(str(error)) from None


async def _delete_account(sessions: Sessions, arguments: argparse.Namespace) -> int:
    account = await accounts.get_account(sessions, arguments.account_id)
    if account is None:
        return _no_account(arguments)
    try:
        storage = _open_storage(arguments)
    except CannotRun as error:
        print(f"{arguments.prog}: error: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if not arguments.yes:
        images, batches = await count_contents(sessions, account.id)
        print(f"This deletes account {account.id} ({account.name}, plan {account.plan}) for good: its keys, "
              f"{images} image(s) with their stored files, {batches} batch(es), its usage and webhooks.\n"
              f"Type the account id to confirm: ", end="", file=sys.stderr, flush=True)
        answer = await asyncio.to_thread(sys.stdin.readline)
        if answer.strip() != account.id:
            print(f"{arguments.prog}: not confirmed: nothing deleted", file=sys.stderr)
            return EXIT_NOT_CONFIRMED
    deleted = await delete_account(sessions, storage, account.id)
    if deleted is None:  # deleted by someone else meanwhile
        return _no_account(arguments)
    print(f"deleted: {deleted.account_id}")
    print(f"images: {deleted.images}")
    print(f"batches: {deleted.batches}")
    print(f"stored_objects: {deleted.objects}")
    print(_reaches_replicas("Its keys stop working") + "; any stored file left behind (a store error is logged "
          "above) is removed by the gateway's orphan sweep.", file=sys.stderr)
    return EXIT_OK


async def _list_keys(sessions: Sessions, arguments: argparse.Namespace) -> int:
    keys = await accounts.list_keys(sessions, arguments.account_id)
    if keys is None:
        return _no_account(arguments)
    _print_keys(keys)
    return EXIT_OK


async def _issue_key(sessions: Sessions, arguments: argparse.Namespace) -> int:
    api_key = await accounts.issue_key(sessions, arguments.account_id)
    if api_key is None:
        return _no_account(arguments)
    print(f"api_key: {api_key}")
    print("The account's other keys keep working. Store this one now: only its hash is kept.", file=sys.stderr)
    return EXIT_OK


async def _revoke_key(sessions: Sessions, arguments: argparse.Namespace) -> int:
    try:
        revocation = await accounts.revoke_key(sessions, arguments.account_id, arguments.key)
    except accounts.KeyNotFound:
        print(f"{arguments.prog}: account {arguments.account_id} has no key {arguments.key!r} (see `keys list`)",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    except accounts.AmbiguousKey:
        print(f"{arguments.prog}: error: several keys of account {arguments.account_id} start with "
              f"{arguments.key!r}: give the number `keys list` shows", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if revocation is None:
        return _no_account(arguments)
    key = revocation.key
    print(f"revoked: {key.id}\t{key.prefix}…\t{_when(key.revoked_at)}")
    print(f"active_keys_left: {revocation.active_left}")
    if revocation.already_revoked:
        print("That key was already revoked; nothing changed.", file=sys.stderr)
    else:
        print(_reaches_replicas("It is refused (401)") + "; no new key was issued.", file=sys.stderr)
    return EXIT_OK


async def _rotate_key(sessions: Sessions, arguments: argparse.Namespace) -> int:
    api_key = await accounts.rotate_key(sessions, arguments.account_id)
    if api_key is None:
        return _no_account(arguments)
    print(f"api_key: {api_key}")
    print("Every earlier key of this account is revoked. Store this one now. "
          + _reaches_replicas("The old keys are refused") + ", so an old key keeps working until then.",
          file=sys.stderr)
    return EXIT_OK


def _print_webhook_secret(account: Account) -> None:
    print(f"webhook_secret: {account.webhook_secret}")
    expires_at = account.previous_webhook_secret_expires_at
    if account.previous_webhook_secret and expires_at is not None and expires_at > utc_now():
        print(f"previous_secret_signs_until: {expires_at.isoformat(timespec='seconds')}")


async def _show_webhook_secret(sessions: Sessions, arguments: argparse.Namespace) -> int:
    account = await accounts.get_account(sessions, arguments.account_id)
    if account is None:
        return _no_account(arguments)
    _print_webhook_secret(account)
    return EXIT_OK


async def _rotate_webhook_secret(sessions: Sessions, arguments: argparse.Namespace) -> int:
    overlap = dt.timedelta(seconds=arguments.overlap_s)
    account = await accounts.rotate_webhook_secret(sessions, arguments.account_id, overlap)
    if account is None:
        return _no_account(arguments)
    _print_webhook_secret(account)
    print("Webhooks are signed with the new secret from now on (and the old one during the overlap).", file=sys.stderr)
    return EXIT_OK


async def _usage_report(sessions: Sessions, arguments: argparse.Namespace) -> int:
    month = arguments.month or quota.current_month()
    report = await quota.usage_report(sessions, month=month)
    if arguments.json:
        json.dump({"month": month, "accounts": [
            {
                "account_id": line.account_id, "name": line.name, "email": line.email, "plan": line.plan,
                "status": "active" if line.disabled_at is None else "disabled",
                "disabled_at": line.disabled_at.isoformat(timespec="seconds") if line.disabled_at else None,
                "images_used": line.images_used, "monthly_images": line.monthly_images,
                "active_keys": line.active_keys,
                "last_used_at": line.last_used_at.isoformat(timespec="seconds") if line.last_used_at else None,
            }
            for line in report
        ]}, sys.stdout, indent=2)
        print()
        return EXIT_OK
    print(f"month: {month} (UTC)")
    print("id\tname\tplan\tstatus\timages_used\tmonthly_images\tactive_keys\tlast_used_at")
    for line in report:
        print(f"{line.account_id}\t{line.name}\t{line.plan}\t{'active' if line.disabled_at is None else 'disabled'}"
              f"\t{line.images_used}\t{'unlimited' if line.monthly_images is None else line.monthly_images}"
              f"\t{line.active_keys}\t{_when(line.last_used_at)}")
    print(f"{len(report)} account(s), {sum(line.images_used for line in report)} image(s) in {month}",
          file=sys.stderr)
    return EXIT_OK


_COMMANDS: dict[tuple[str, str], Callable[[Sessions, argparse.Namespace], Awaitable[int]]] = {
    ("accounts", "create"): _create_account,
    ("accounts", "list"): _list_accounts,
    ("accounts", "show"): _show_account,
    ("accounts", "set-plan"): _set_plan,
    ("accounts", "disable"): _disable_account,
    ("accounts", "enable"): _enable_account,
    ("accounts", "delete"): _delete_account,
    ("keys", "list"): _list_keys,
    ("keys", "create"): _issue_key,
    ("keys", "revoke"): _revoke_key,
    ("keys", "rotate"): _rotate_key,
    ("usage", "report"): _usage_report,
    ("webhook-secret", "show"): _show_webhook_secret,
    ("webhook-secret", "rotate"): _rotate_webhook_secret,
}


async def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command and return its exit status (argparse's 2 for usage errors)."""
    try:
        arguments = _parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_CANNOT_RUN
    return await execute(arguments)


async def execute(arguments: argparse.Namespace) -> int:
    """Run the command parsed by a parser built with `add_arguments`: say which database, open it (refusing
    a missing one unless --create), bring it to head, run the command."""
    try:
        choice = choose_database(arguments)
    except CannotRun as error:
        print(f"{arguments.prog}: error: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print(f"{arguments.prog}: database {choice.masked_url} ({choice.source})", file=sys.stderr)
    try:
        engine = await open_admin_database(choice, create=arguments.create, prog=arguments.prog)
    except CannotRun as error:
        print(f"{arguments.prog}: error: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        return await _COMMANDS[arguments.topic, arguments.command](create_sessions(engine), arguments)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `removai-admin` console script and `python -m gateway.admin`."""
    logging.basicConfig(level=logging.WARNING, handlers=[masking_handler("%(levelname)s %(name)s: %(message)s")])
    return asyncio.run(run(argv))


if __name__ == "__main__":
    sys.exit(main())
