"""Operator CLI: create and list accounts and rotate API keys, e.g. `python -m gateway.admin accounts list`."""

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from gateway import accounts
from gateway.database import Sessions, default_database_url, open_database
from gateway.tables import PlanName

_LOGGER = logging.getLogger(__name__)

DATABASE_URL_VARIABLE = "REMOVAI_DATABASE_URL"


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


_COMMANDS = {
    ("accounts", "create"): _create_account,
    ("accounts", "list"): _list_accounts,
    ("keys", "rotate"): _rotate_key,
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
