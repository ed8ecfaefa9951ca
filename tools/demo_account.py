"""`python -m tools.demo_account --data-dir DIR --key-file FILE`: the stack's demo account, made in a short-lived process.

tools.stack runs this once at start instead of importing the gateway's database code itself: the supervisor
then stays a small process for as long as the stack runs (its RSS, measured by bench.stack at 12 MP c=4: 118 MB
when it made the account itself with SQLAlchemy and the gateway's modules, 79-80 MB since). The database URL comes from the environment
(REMOVAI_GATEWAY_DATABASE_URL or the file REMOVAI_GATEWAY_DATABASE_URL_FILE names, as the gateway reads it),
never from a flag that `ps` would show; the key is
written to the --key-file (mode 0600) and never printed: stdout gets one line saying what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from common.credentials import from_environment
from common.logs import masking_handler
from gateway.domain import accounts
from gateway.store.database import default_database_url, open_database

_LOGGER = logging.getLogger(__name__)

DEMO_ACCOUNT_NAME = "demo"
DATABASE_URL_VARIABLE = "REMOVAI_GATEWAY_DATABASE_URL"


async def demo_api_key(data_dir: Path, key_file: Path, database_url: str) -> tuple[str, str]:
    """Migrates the database and returns (the demo account's API key, what happened), creating the account
    on first start only. The key is kept in clear text in key_file: a local demo convenience, never how
    production accounts are made (`python -m gateway.admin accounts create`)."""
    async with open_database(database_url or default_database_url(data_dir)) as sessions:
        if key_file.exists():
            api_key = key_file.read_text().strip()
            account = await accounts.authenticate(sessions, api_key)
            if account is not None:
                return api_key, f"existing demo account {account.id} (plan {account.plan})"
            _LOGGER.warning("%s holds a key the database does not know (revoked, or a new database)", key_file)
        account, api_key = await accounts.create_account(sessions, name=DEMO_ACCOUNT_NAME, plan="pro")
    partial = key_file.with_name(key_file.name + ".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(api_key + "\n")
    os.chmod(partial, 0o600)  # in case an older file with wider permissions was truncated
    os.replace(partial, key_file)
    return api_key, f"created demo account {account.id} (plan {account.plan})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_account", description="Make (or find) the stack's demo account and keep its API key in --key-file.")
    parser.add_argument("--data-dir", type=Path, required=True, help="where the default SQLite database is")
    parser.add_argument("--key-file", type=Path, required=True, help="where the demo key is kept")
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, handlers=[masking_handler("%(asctime)s %(levelname)s %(name)s: %(message)s")]
    )
    database_url, _ = from_environment(DATABASE_URL_VARIABLE)
    _key, note = asyncio.run(demo_api_key(arguments.data_dir, arguments.key_file, database_url))
    print(note, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
