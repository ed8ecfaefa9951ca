"""The gateway's database: one async SQLAlchemy engine per process, migrated to head by Alembic at start."""

import logging
import os
import stat
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

# The database holds every account's webhook secret and key hashes: only the gateway's user may read it.
_PRIVATE_FILE_MODE = 0o600
_PRIVATE_DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) readable by its owner only; an existing directory is left as it is
    (it may be shared on purpose, e.g. /tmp), with a warning when anyone may list it."""
    path.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & stat.S_IROTH:
        _LOGGER.warning("%s is readable by every user of this machine; chmod o-rwx it", path)


def create_private_file(path: Path) -> None:
    """Create the SQLite file `path` with mode 0600 before SQLite opens it (SQLite would create it 0644 and
    gives its -wal and -shm files the database file's mode); an existing file open to others is narrowed."""
    make_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, _PRIVATE_FILE_MODE)
            _LOGGER.warning("%s was readable by other users; its mode is now 0600", path)
    finally:
        os.close(fd)


def default_database_url(data_dir: Path) -> str:
    """Return the URL of the SQLite file the gateway uses when no database URL is configured."""
    return f"sqlite+aiosqlite:///{(data_dir / 'removai.db').resolve()}"


def create_database_engine(url: str, **engine_options: Any) -> AsyncEngine:
    """Create the async engine for `url` (sqlite+aiosqlite or postgresql+asyncpg), tuned for concurrent writers."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, pool_pre_ping=True, **engine_options)

    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        create_private_file(Path(parsed.database))
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
