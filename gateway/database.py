"""The gateway's database: one async SQLAlchemy engine per process, migrated to head by Alembic at start."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

_LOGGER = logging.getLogger(__name__)

_MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# How long an SQLite writer waits for another writer's lock before failing with "database is locked".
_SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any constant works: it only has to be the same for every gateway process migrating one database.
_MIGRATION_LOCK_ID = 0x52454D4F56  # "REMOV"

Sessions = async_sessionmaker[AsyncSession]


def default_database_url(data_dir: Path) -> str:
    """Return the URL of the SQLite file the gateway uses when no database URL is configured."""
    return f"sqlite+aiosqlite:///{(data_dir / 'removai.db').resolve()}"


def create_database_engine(url: str, **engine_options: Any) -> AsyncEngine:
    """Create the async engine for `url` (sqlite+aiosqlite or postgresql+asyncpg), tuned for concurrent writers."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, pool_pre_ping=True, **engine_options)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(parsed, **engine_options)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
        # WAL lets readers proceed while one writer commits; the busy timeout makes concurrent writers
        # queue for the write lock instead of failing at once.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def create_sessions(engine: AsyncEngine) -> Sessions:
    """Return the session factory the repositories take; loaded objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    """Return an Alembic configuration pointing at the gateway's migrations, without any alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    return config


def _upgrade_to_head(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Gateways starting together would otherwise race to create the same tables.
        connection.execute(text("SELECT pg_advisory_xact_lock(:lock_id)"), {"lock_id": _MIGRATION_LOCK_ID})
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade_schema(engine_or_url: AsyncEngine | str) -> None:
    """Run every pending Alembic migration, so the schema is at head before the gateway serves requests."""
    if isinstance(engine_or_url, str):
        engine = create_database_engine(engine_or_url)
        try:
            await upgrade_schema(engine)
        finally:
            await engine.dispose()
        return
    _LOGGER.info("migrating database %s to head", engine_or_url.url.render_as_string(hide_password=True))
    async with engine_or_url.begin() as connection:
        await connection.run_sync(_upgrade_to_head)


@asynccontextmanager
async def open_database(url: str) -> AsyncIterator[Sessions]:
    """Migrate the database at `url`, yield its session factory, and dispose of the engine afterwards."""
    engine = create_database_engine(url)
    try:
        await upgrade_schema(engine)
        yield create_sessions(engine)
    finally:
        await engine.dispose()
