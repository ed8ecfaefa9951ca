"""The gateway's database: one async SQLAlchemy engine per process, migrated to head by Alembic at start."""

import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Executable, create_engine, event, make_url, text
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from common.credentials import mask_url

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
    _LOGGER.info("migrating database %s to head", mask_url(engine_or_url.url.render_as_string(hide_password=False)))
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


class PointReader:
    """One-row reads by key for the hottest endpoints, without the async driver's thread hops when it can.

    aiosqlite runs every call in its own thread and wakes the event loop for each: a primary-key read cost about
    1 ms of one core that way, against about 0.1 ms as a plain synchronous read (measured with
    bench/gateway_get.py). So on a SQLite file the read runs on the event loop through a second, synchronous
    engine in read-only mode with no busy wait: in WAL mode a reader does not wait for writers, and in the
    rare cases SQLite would make it wait (a checkpoint resetting the log, recovery) the read goes through the
    async engine instead. Any other database (PostgreSQL) is read through the async engine as before.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sync: Engine | None = None
        # One connection, used only from the event loop's thread and kept open: a pool checkout and its reset
        # cost as much again as the read. It never holds a snapshot between reads (pysqlite begins transactions
        # only before writes, and query_only forbids those; the rollback after each read closes any).
        self._connection: Connection | None = None
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
                and not url.database.startswith("file:"):
            self._sync = create_engine(
                url.set(drivername="sqlite+pysqlite"), connect_args={"timeout": 0}, poolclass=StaticPool
            )
            event.listen(self._sync, "connect", _read_only)

    @classmethod
    def of(cls, sessions: Sessions) -> "PointReader":
        """The reader for the engine the session factory is bound to."""
        engine = sessions.kw["bind"]
        if not isinstance(engine, AsyncEngine):
            raise TypeError("the session factory is not bound to an async engine")
        return cls(engine)

    async def one(self, statement: Executable, parameters: dict[str, Any] | None = None) -> Row[Any] | None:
        """The one row `statement` selects (with its bound `parameters`), or None."""
        if self._sync is not None:
            try:
                if self._connection is None:
                    self._connection = self._sync.connect()
                try:
                    return self._connection.execute(statement, parameters).one_or_none()
                finally:
                    self._connection.rollback()
            except OperationalError as exc:
                _LOGGER.debug("synchronous read refused (%s); reading through the async engine", exc)
                self._close_connection()
        async with self._engine.connect() as connection:
            return (await connection.execute(statement, parameters)).one_or_none()

    def _close_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def close(self) -> None:
        self._close_connection()
        if self._sync is not None:
            self._sync.dispose()


def _read_only(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()
