"""Alembic environment: migrates on a connection handed over by the gateway, or on its own async engine."""

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    # `alembic -c gateway/store/alembic.ini -x database_url=... upgrade head` from a shell; the ini's
    # sqlalchemy.url otherwise.
    url = context.get_x_argument(as_dictionary=True).get("database_url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL: pass -x database_url=... or set sqlalchemy.url")
    return url


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_own_engine() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
elif (shared_connection := config.attributes.get("connection")) is not None:
    # gateway.store.database.upgrade_schema runs us inside its own transaction via AsyncConnection.run_sync.
    _run_on(shared_connection)
else:
    asyncio.run(_run_on_own_engine())
