"""Operator CLI: create and list accounts, rotate API keys, show and rotate webhook signing secrets, e.g.
`python -m gateway.admin accounts list`."""

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from gateway import accounts
from gateway.database import Sessions, default_database_url, open_database
from gateway.tables import Account, PlanName, utc_now

_LOGGER = logging.getLogger(__name__)

DATABASE_URL_VARIABLE = "REMOVAI_DATABASE_URL"
# The gateway's own setting, so `removai admin` rotates with the window the gateway's API uses.
OVERLAP_VARIABLE = "REMOVAI_GATEWAY_WEBHOOK_SECRET_OVERLAP_S"
_DEFAULT_OVERLAP_S = 24 * 3600


def _overlap_seconds(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError("must be a whole number of seconds (0 or more)")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --database-url and the accounts/keys commands to `parser` (shared with `removai admin`)."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_URL_VARIABLE) or default_database_url(Path("var")),
        help=f"SQLAlchemy async URL (default: ${DATABASE_URL_VARIABLE}, else SQLite in ./var)",
    )
    topics = parser.add_subparsers(dest="topic", required=True)

    account_commands = topics.add_parser("accounts", help="manage accounts").add_subparsers(
        dest="command", required=True
    )
    create = account_commands.add_parser("create", help="create an account and print its first API key")
    create.add_argument("--name", required=True)
    create.add_argument("--plan", required=True, choices=get_args(PlanName))
    create.add_argument("--email")
    account_commands.add_parser("list", help="list accounts (keys are never shown)")

    key_commands = topics.add_parser("keys", help="manage API keys").add_subparsers(
        dest="command", required=True
    )
    rotate = key_commands.add_parser("rotate", help="revoke an account's keys and print a new one")
    rotate.add_argument("account_id")

    secret_commands = topics.add_parser("webhook-secret", help="show or rotate webhook signing secrets").add_subparsers(
        dest="command", required=True
    )
    show = secret_commands.add_parser("show", help="print an account's webhook signing secret")
    show.add_argument("account_id")
    rotate_secret = secret_commands.add_parser(
        "rotate", help="give an account a new webhook secret; the old one also signs during the overlap"
    )
    rotate_secret.add_argument("account_id")
    rotate_secret.add_argument(
        "--overlap-s", type=_overlap_seconds,
        # A string default goes through `type` at parse time, so a bad environment value is a usage error.
        default=os.environ.get(OVERLAP_VARIABLE) or str(_DEFAULT_OVERLAP_S),
        help=f"seconds the previous secret keeps signing (default: ${OVERLAP_VARIABLE}, else {_DEFAULT_OVERLAP_S})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.admin", description=__doc__)
    add_arguments(parser)
    return parser


async def _create_account(sessions: Sessions, arguments: argparse.Namespace) -> int:
    account, api_key = await accounts.create_account(
        sessions, name=arguments.name, plan=arguments.plan, email=arguments.email
    )
    print(f"account_id: {account.id}")
    print(f"api_key: {api_key}")
    print("Store this API key now: only its hash is kept, it cannot be shown again.", file=sys.stderr)
    return 0


async def _list_accounts(sessions: Sessions, arguments: argparse.Namespace) -> int:
    print("id\tplan\tname\temail\tcreated_at")
    for account in await accounts.list_accounts(sessions):
        created_at = account.created_at.isoformat(timespec="seconds")
        print(f"{account.id}\t{account.plan}\t{account.name}\t{account.email or ''}\t{created_at}")
    return 0


async def _rotate_key(sessions: Sessions, arguments: argparse.Namespace) -> int:
    api_key = await accounts.rotate_key(sessions, arguments.account_id)
    if api_key is None:
        print(f"no account {arguments.account_id!r}", file=sys.stderr)
        return 1
    print(f"api_key: {api_key}")
    print("Every earlier key of this account is revoked. Store this one now.", file=sys.stderr)
    return 0


def _print_webhook_secret(account: Account) -> None:
    print(f"webhook_secret: {account.webhook_secret}")
    expires_at = account.previous_webhook_secret_expires_at
    if account.previous_webhook_secret and expires_at is not None and expires_at > utc_now():
        print(f"previous_secret_signs_until: {expires_at.isoformat(timespec='seconds')}")


async def _show_webhook_secret(sessions: Sessions, arguments: argparse.Namespace) -> int:
    account = await accounts.get_account(sessions, arguments.account_id)
    if account is None:
        print(f"no account {arguments.account_id!r}", file=sys.stderr)
        return 1
    _print_webhook_secret(account)
    return 0


async def _rotate_webhook_secret(sessions: Sessions, arguments: argparse.Namespace) -> int:
    overlap = dt.timedelta(seconds=arguments.overlap_s)
    account = await accounts.rotate_webhook_secret(sessions, arguments.account_id, overlap)
    if account is None:
        print(f"no account {arguments.account_id!r}", file=sys.stderr)
        return 1
    _print_webhook_secret(account)
    print("Webhooks are signed with the new secret from now on (and the old one during the overlap).", file=sys.stderr)
    return 0


_COMMANDS = {
    ("accounts", "create"): _create_account,
    ("accounts", "list"): _list_accounts,
    ("keys", "rotate"): _rotate_key,
    ("webhook-secret", "show"): _show_webhook_secret,
    ("webhook-secret", "rotate"): _rotate_webhook_secret,
}


async def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, migrate the database to head, run the command and return its exit status."""
    return await execute(_parser().parse_args(argv))


async def execute(arguments: argparse.Namespace) -> int:
    """Migrate the database to head and run the command parsed by a parser built with `add_arguments`."""
    async with open_database(arguments.database_url) as sessions:
        return await _COMMANDS[arguments.topic, arguments.command](sessions, arguments)


def main() -> None:
    """Entry point of `python -m gateway.admin`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
