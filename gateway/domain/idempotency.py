"""Idempotency-Key on creating requests, Stripe's semantics, kept in the database so every replica agrees.

A key belongs to one account. Its first use records the request's fingerprint and holds the key while the
request runs (a lease, `locked_until`, and a fencing token); the answer is then stored and replayed to every
repeat of the same request for `ttl` (24 h). A repeat while the first still runs waits a bounded time for the
answer, then gets 409 idempotency_in_progress. The same key with a different request is 422
idempotency_key_reused. Answers that a retry should not see again (5xx, 408, 409, 429) are not stored: the key
is released and the next request with it runs afresh.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.errors import IdempotencyInProgress, IdempotencyKeyReused, InvalidRequest
from gateway.store.database import Sessions
from gateway.store.tables import IdempotencyKey, utc_now

_LOGGER = logging.getLogger(__name__)
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Visible ASCII, no spaces: UUIDs, ULIDs, hashes, "order-1234/attempt" all fit; nothing a proxy may rewrite.
_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")
# Answers a repeat must not get again: server errors, timeouts, conflicts and limits are worth retrying.
_NOT_STORED = frozenset({408, 409, 429})


def validated_key(raw: str | None) -> str | None:
    """The Idempotency-Key header's value, None when absent; 400 when empty, too long or not visible ASCII."""
    if raw is None:
        return None
    if not _KEY.fullmatch(raw):
        raise InvalidRequest(
            f"{HEADER}: must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (no spaces), e.g. a UUID"
        )
    return raw


def stored(status: int) -> bool:
    """Whether an answer with this status is kept for replays (otherwise the key is released)."""
    return status < 500 and status not in _NOT_STORED


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_digest(value: Any) -> str:
    """A digest of parsed JSON that ignores key order and whitespace (the same parameters, the same request)."""
    return digest(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def fingerprint(
    method: str, path: str, query: Iterable[tuple[str, str]], body_digest: str, accept: str | None, answer_type: str
) -> str:
    """What makes two requests "the same": method, path, query parameters, the body's digest (every field and
    file of it, the model included), the Accept header as sent (None when absent) and the answer it negotiated
    (JSON or which image type). Any difference is another request."""
    return json_digest({
        "method": method, "path": path, "query": sorted(query), "body": body_digest, "accept": accept,
        "answer": answer_type,
    })


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The first request's answer: status, media type and JSON envelope (for an image answer, the envelope
    of the image whose cut-out is the body)."""

    status: int
    media_type: str
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Hold:
    """This request holds the key (token) and must finish or release it."""

    account_id: str
    key: str
    token: int


@dataclass(frozen=True, slots=True)
class _Seen:
    fingerprint: str
    status: str
    token: int
    locked_until: dt.datetime | None
    expires_at: dt.datetime
    answer: StoredAnswer | None


def _insert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


class IdempotencyKeys:
    """The keys of every account, in the shared database."""

    def __init__(self, sessions: Sessions, *, ttl: dt.timedelta, lease: dt.timedelta, wait_s: float) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._lease = lease
        self._wait_s = wait_s

    async def exists(self, account_id: str, key: str) -> bool:
        """Whether the key is in use (running or answered, not expired)."""
        async with self._sessions() as session:
            found = await session.scalar(
                select(IdempotencyKey.key).where(
                    IdempotencyKey.account_id == account_id, IdempotencyKey.key == key,
                    IdempotencyKey.expires_at > utc_now(),
                )
            )
        return found is not None

    async def begin(self, account_id: str, key: str, request_fingerprint: str) -> Hold | StoredAnswer:
        """Hold the key for this request (the caller runs it, then finish() or release()), or the first
        request's answer to replay. Waits up to wait_s while the first request runs; then 409. 422 when the
        key was used for a different request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        pause = 0.05
        while True:
            outcome = await self._try_begin(account_id, key, request_fingerprint)
            if outcome is not None:
                return outcome
            remaining = deadline - loop.time()
            if pause == 0.05:
                _LOGGER.info(
                    "account %s: the first request with this Idempotency-Key is still running; waiting up to %.0f s",
                    account_id, max(remaining, 0.0),
                )
            if remaining <= 0:
                raise IdempotencyInProgress(
                    f"a request with this {HEADER} is still running; repeat it shortly for its answer",
                    headers={"Retry-After": "1"},
                )
            # Replicas share only the database: poll it, briefly at first, then at most twice a second.
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)

    async def _try_begin(self, account_id: str, key: str, request_fingerprint: str) -> Hold | StoredAnswer | None:
        now = utc_now()
        fresh = {
            "fingerprint": request_fingerprint, "status": "in_progress", "locked_until": now + self._lease,
            "response_status": None, "response_type": None, "response_body": None, "created_at": now,
            "expires_at": now + self._ttl,
        }
        async with self._sessions.begin() as session:
            connection = await session.connection()
            inserted = await connection.execute(
                _insert(connection.dialect.name)(IdempotencyKey)
                .values(account_id=account_id, key=key, token=1, **fresh)
                .on_conflict_do_nothing(index_elements=[IdempotencyKey.account_id, IdempotencyKey.key])
                .returning(IdempotencyKey.token)
            )
            if (token := inserted.scalar_one_or_none()) is not None:
                return Hold(account_id, key, token)
        seen = await self._read(account_id, key)
        if seen is None:  # released or pruned in between: try again at once
            return await self._try_begin(account_id, key, request_fingerprint)
        if seen.expires_at <= now or (
            seen.status == "in_progress" and seen.locked_until is not None and seen.locked_until <= now
        ):
            # Expired, or its first request died holding it: take it over, if nobody else did meanwhile.
            taken = await self._take_over(account_id, key, seen.token, fresh)
            return taken if taken is not None else await self._try_begin(account_id, key, request_fingerprint)
        if seen.fingerprint != request_fingerprint:
            raise IdempotencyKeyReused(
                f"this {HEADER} was already used for a different request in the last"
                f" {self._ttl.total_seconds() / 3600:g} hours; use a new key for a new request"
            )
        return seen.answer  # None while the first request runs

    async def _read(self, account_id: str, key: str) -> _Seen | None:
        async with self._sessions() as session:
            row = await session.get(IdempotencyKey, (account_id, key), populate_existing=True)
            if row is None:
                return None
            answer = None
            if row.status == "completed" and row.response_status is not None and row.response_body is not None:
                answer = StoredAnswer(
                    row.response_status, row.response_type or "application/json", json.loads(row.response_body)
                )
            return _Seen(row.fingerprint, row.status, row.token, row.locked_until, row.expires_at, answer)

    async def _take_over(self, account_id: str, key: str, token: int, fresh: dict[str, Any]) -> Hold | None:
        async with self._sessions.begin() as session:
            taken = await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.account_id == account_id, IdempotencyKey.key == key,
                    IdempotencyKey.token == token,
                )
                .values(token=IdempotencyKey.token + 1, **fresh)
                .returning(IdempotencyKey.token)
            )
            new_token = taken.scalar_one_or_none()
        return Hold(account_id, key, new_token) if new_token is not None else None

    async def finish(self, hold: Hold, answer: StoredAnswer) -> None:
        """Store the answer for replays (only while the key is still ours), or release the key if it is
        one a retry should not get again."""
        if not stored(answer.status):
            await self.release(hold)
            return
        async with self._sessions.begin() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.account_id == hold.account_id, IdempotencyKey.key == hold.key,
                    IdempotencyKey.token == hold.token, IdempotencyKey.status == "in_progress",
                )
                .values(
                    status="completed", locked_until=None, response_status=answer.status,
                    response_type=answer.media_type, response_body=json.dumps(answer.body),
                )
            )

    async def release(self, hold: Hold) -> None:
        """Forget the key (only while it is still ours): the next request with it runs afresh."""
        async with self._sessions.begin() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.account_id == hold.account_id, IdempotencyKey.key == hold.key,
                    IdempotencyKey.token == hold.token, IdempotencyKey.status == "in_progress",
                )
            )


async def prune_expired(sessions: Sessions) -> int:
    """Delete the keys past their expiry; returns how many (run by the sweeps)."""
    async with sessions.begin() as session:
        connection = await session.connection()
        pruned = await connection.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utc_now()))
    return pruned.rowcount
