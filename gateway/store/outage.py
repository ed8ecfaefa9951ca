"""Which store, if any, an exception says is unreachable: connection-level failures only, never a bad statement.

The gateway keeps its state in the database (SQLite or PostgreSQL) and, with several replicas, its rate-limit
counters in Redis. When either goes away, the drivers raise from deep inside whatever repository call was
running; the envelope middleware asks `unreachable_store` and answers 503 (errors.StoreUnavailable) instead of
500. The test is narrow on purpose: a failing statement (a syntax error, a missing table, a constraint) is a bug
and stays a 500, so only these count:

- SQLAlchemy's own verdict: a DBAPIError with `connection_invalidated` (its dialect's is_disconnect said so);
- asyncpg's connection errors (class 08), its refusals while the server stops or starts (57P01-57P03) and
  "too many connections" (53300), wherever they are in the exception's chain;
- an OSError (refused, reset, timed out, unresolvable host) raised through asyncpg, SQLAlchemy or redis-py:
  asyncpg opens connections with asyncio's own socket calls and SQLAlchemy does not wrap what its connect
  raises, so a stopped PostgreSQL arrives as a bare ConnectionRefusedError. The traceback decides whose it
  was, so the file store's own OSErrors stay 500s;
- redis-py's ConnectionError and TimeoutError (also under the rate limiter's RateLimiterUnavailable);
  its ResponseError (a script error: a bug) is not one;
- SQLite's "database is locked" (a writer held the lock past the busy timeout) and "unable to open database
  file" (the file or its directory went away or became unreadable).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import asyncpg.exceptions as pg
import redis.exceptions as redis_errors
from sqlalchemy.exc import DBAPIError

Store = Literal["database", "redis"]

_PG_UNREACHABLE = (
    pg.PostgresConnectionError,
    pg.AdminShutdownError,
    pg.CrashShutdownError,
    pg.CannotConnectNowError,
    pg.TooManyConnectionsError,
)
_SQLITE_UNREACHABLE = ("database is locked", "unable to open database file")
_DRIVER_MODULES: dict[str, Store] = {"asyncpg": "database", "sqlalchemy": "database", "redis": "redis"}


@dataclass(frozen=True, slots=True)
class Outage:
    """The store that cannot be reached, and the driver's own words for it (for the log)."""

    store: Store
    detail: str


def unreachable_store(error: BaseException) -> Outage | None:
    """The outage when `error` (or one it was raised from) says the database or Redis cannot be reached now;
    None for anything else, a failing SQL statement included."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        store = _store_of(current)
        if store is not None:
            # SQLAlchemy's text carries the statement and its parameters (hashes, secrets): only the driver's
            # exception is described, which names at most a host and port.
            cause = current.orig if isinstance(current, DBAPIError) and current.orig is not None else current
            return Outage(store, f"{type(cause).__name__}: {cause}")
        current = current.__cause__ or current.__context__
    return None


def _store_of(error: BaseException) -> Store | None:
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return "database"
    if isinstance(error, _PG_UNREACHABLE):
        return "database"
    if isinstance(error, sqlite3.OperationalError) and str(error).startswith(_SQLITE_UNREACHABLE):
        return "database"
    if isinstance(error, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return "redis"
    if isinstance(error, OSError):
        return _driver_in(error.__traceback__)
    return None


def _driver_in(traceback: TracebackType | None) -> Store | None:
    """The store whose driver the traceback passed through (the innermost one), if any."""
    found: Store | None = None
    while traceback is not None:
        module = str(traceback.tb_frame.f_globals.get("__name__", ""))
        found = _DRIVER_MODULES.get(module.split(".", 1)[0], found)
        traceback = traceback.tb_next
    return found
