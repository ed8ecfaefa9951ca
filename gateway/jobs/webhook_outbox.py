"""Webhook delivery: a durable outbox sent in the background, each attempt signed (webhook_signing), with bounded,
backed-off retries that a restarted gateway (or another replica) resumes."""

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.domain.accounts import signing_secrets
from gateway.jobs.webhook_signing import delivery_headers
from gateway.net.netguard import AddressPolicy, DestinationRefused
from gateway.net.urlfetch import FetchError, check_url, create_guarded_connector, redact_url, redact_urls_in
from gateway.parsing import retry_after_seconds
from gateway.store.database import Sessions
from gateway.store.outage import unreachable_store
from gateway.store.tables import Account, WebhookDelivery, utc_now

_LOGGER = logging.getLogger(__name__)

_USER_AGENT = "RemovAI-Webhooks/1.0"
# Deliveries held in memory while the database cannot record them; past this many (a long outage under load)
# new ones are dropped, logged, rather than grow without bound.
MAX_UNRECORDED = 1000


def _is_retryable(status: int) -> bool:
    """5xx and 429 may succeed later; any other non-2xx is the receiver's final word."""
    return status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one attempt came to: delivered, worth retrying, or final failure; `attempted` is False when no
    request left (the destination was refused), so it does not count as an attempt."""

    kind: Literal["delivered", "retry", "failed"]
    error: str | None = None
    retry_after: str | None = None
    attempted: bool = True


class WebhookSender:
    """Sends webhooks from the `webhook_deliveries` outbox over one ClientSession.

    enqueue() writes the delivery row before any attempt and never raises, so a failing webhook never fails
    the caller; while the database is unreachable the row is held in memory and written once it is back (see
    enqueue). Every attempt is claimed first with a conditional UPDATE of the row's lease (`locked_until`),
    so replicas resuming the same row send it once; receivers can also de-duplicate by the delivery id.
    start() resumes every pending row, and a poller picks up rows a stopped replica left behind.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        sessions: Sessions,
        *,
        max_attempts: int = 5,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        attempt_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        poll_interval_s: float = 10.0,
        lease_s: float | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._policy = policy
        self._sessions = sessions
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._poll_interval_s = poll_interval_s
        # An attempt cannot outlast attempt_timeout_s, so a lease longer than that is only ever outlived by a
        # replica that stopped mid-attempt.
        self._lease = dt.timedelta(seconds=attempt_timeout_s + 10.0 if lease_s is None else lease_s)
        self._timeout = aiohttp.ClientTimeout(
            total=attempt_timeout_s, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._claimed: set[str] = set()
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        # Deliveries the database could not record yet (an outage), by id, in arrival order; and the task
        # that records them once it is back.
        self._unrecorded: dict[str, dict[str, Any]] = {}
        self._recorder: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the HTTP session and resume every pending delivery; call once, inside the running loop."""
        if self._session is not None:
            raise RuntimeError("WebhookSender already started")
        self._session = aiohttp.ClientSession(
            connector=create_guarded_connector(self._policy),
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={aiohttp.hdrs.USER_AGENT: _USER_AGENT},
        )
        resumed = await self._schedule_pending(horizon=None)
        if resumed:
            _LOGGER.info("resuming %d pending webhooks", resumed)
        self._poller = asyncio.create_task(self._poll(), name="webhook outbox poller")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Deliveries this sender is working on (in flight or waiting to retry)."""
        return len(self._tasks)

    @property
    def unrecorded(self) -> int:
        """Deliveries held in memory until the database can record them."""
        return len(self._unrecorded)

    async def enqueue(
        self, account_id: str, url: str, payload: Mapping[str, Any], *, batch_id: str | None = None
    ) -> str | None:
        """Record a delivery of `payload` as JSON to `url`, signed at send time with the account's secret, and
        start sending it; returns its id, or None if it will not be sent (logged). Never raises.

        While the database cannot be reached (an outage, not a failing statement) the delivery is held in
        memory and recorded, then sent, as soon as it is back: its id is returned all the same. Only a process
        stopped before then loses it (logged), or more than MAX_UNRECORDED held at once.

        With `batch_id`, the delivery announces that batch; a batch already announced is not announced again.
        """
        try:
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError):
            _LOGGER.exception("webhook to %s dropped: payload is not JSON-serialisable", redact_url(url))
            return None
        fields: dict[str, Any] = {
            "id": f"whd_{uuid.uuid4().hex}", "account_id": account_id, "batch_id": batch_id, "url": url, "body": body,
        }
        try:
            recorded = await self._insert(fields)
        except Exception as error:
            outage = unreachable_store(error)
            if outage is None:
                _LOGGER.exception("webhook to %s dropped: it could not be recorded", redact_url(url))
                return None
            return self._hold(fields, outage.detail)
        return fields["id"] if recorded else None

    async def _insert(self, fields: Mapping[str, Any]) -> bool:
        """Write one delivery row and start sending it; False if the database refused it for good (logged);
        an outage raises."""
        delivery = WebhookDelivery(**fields, status="pending", attempts=0, next_attempt_at=utc_now())
        try:
            async with self._sessions.begin() as session:
                session.add(delivery)
        except IntegrityError as error:
            # A batch announced by another replica, or an account deleted meanwhile.
            _LOGGER.warning("webhook to %s not recorded: %s", redact_url(delivery.url), error.orig)
            return False
        if self._session is not None and not self._closing:
            self._spawn(delivery.id, delivery.next_attempt_at)
        else:
            _LOGGER.info("webhook %s recorded while the sender is stopped; it is sent at next start", delivery.id)
        return True

    def _hold(self, fields: dict[str, Any], detail: str) -> str | None:
        """Keep a delivery the database could not record, and make sure a task records it once it is back."""
        url = redact_url(fields["url"])
        if len(self._unrecorded) >= MAX_UNRECORDED:
            _LOGGER.error("webhook to %s dropped: the database is unreachable (%s) and %d deliveries already wait",
                          url, detail, len(self._unrecorded))
            return None
        self._unrecorded[fields["id"]] = fields
        _LOGGER.warning("webhook %s to %s: the database is unreachable (%s); held until it can be recorded",
                        fields["id"], url, detail)
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_held(), name="webhook recorder")
        return str(fields["id"])

    async def _record_held(self) -> None:
        """Try the held deliveries again, backing off like a failed attempt, until every one is recorded."""
        tries = 0
        while self._unrecorded:
            tries += 1
            await asyncio.sleep(self._backoff_s(tries))
            await self._record_unrecorded()

    async def _record_unrecorded(self) -> None:
        """Record the held deliveries in order; stop at the first outage (the next round starts over there)."""
        for delivery_id, fields in list(self._unrecorded.items()):
            try:
                await self._insert(fields)
            except Exception as error:
                if unreachable_store(error) is not None:
                    return
                _LOGGER.exception("webhook %s dropped: it could not be recorded", delivery_id)
            else:
                _LOGGER.info("webhook %s recorded after a database outage", delivery_id)
            self._unrecorded.pop(delivery_id, None)

    async def join(self) -> None:
        """Wait until every delivery this sender is working on has succeeded or been given up on."""
        while self._tasks:
            await asyncio.wait(set(self._tasks.values()))

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop sending: deliveries waiting to retry stop at once (they stay pending in the outbox), attempts
        in flight get `grace_s` to finish; then release this sender's claims and close the session."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if self._recorder is not None:
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
            self._recorder = None
        if self._unrecorded:  # a last chance; what the database still cannot take is lost with this process
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._record_unrecorded()
            if self._unrecorded:
                _LOGGER.error("%d webhooks lost: the database could not record them before the stop (%s)",
                              len(self._unrecorded), ", ".join(self._unrecorded))
                self._unrecorded.clear()
        for delivery_id, task in list(self._tasks.items()):
            if delivery_id not in self._claimed:
                task.cancel()
        if self._tasks:
            _done, still_pending = await asyncio.wait(set(self._tasks.values()), timeout=grace_s)
            if still_pending:
                _LOGGER.warning("cancelling %d webhook attempts in flight at shutdown", len(still_pending))
                for task in still_pending:
                    task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._release_claims()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _release_claims(self) -> None:
        """Let the next start (or another replica) retry at once what an interrupted attempt left claimed; the
        receiver may then see that delivery id twice."""
        if not self._claimed:
            return
        try:
            async with self._sessions.begin() as session:
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id.in_(self._claimed), WebhookDelivery.status == "pending")
                    .values(locked_until=None)
                )
        except Exception:
            _LOGGER.exception("could not release %d webhook claims; they expire on their own", len(self._claimed))
        self._claimed.clear()

    def _spawn(self, delivery_id: str, due: dt.datetime) -> None:
        if delivery_id in self._tasks:
            return
        task = asyncio.create_task(self._deliver(delivery_id, due), name=f"webhook {delivery_id}")
        self._tasks[delivery_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(delivery_id, None))

    async def _schedule_pending(self, horizon: dt.timedelta | None) -> int:
        """Start working on the pending rows nobody holds that fall due within `horizon` (all when None)."""
        limit = utc_now() + horizon if horizon is not None else None
        query = select(WebhookDelivery.id, WebhookDelivery.next_attempt_at, WebhookDelivery.locked_until).where(
            WebhookDelivery.status == "pending"
        )
        if limit is not None:
            query = query.where(
                WebhookDelivery.next_attempt_at <= limit,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= limit),
            )
        async with self._sessions() as session:
            rows = (await session.execute(query.order_by(WebhookDelivery.next_attempt_at))).all()
        scheduled = 0
        for delivery_id, next_attempt_at, locked_until in rows:
            if delivery_id not in self._tasks:
                self._spawn(delivery_id, max(next_attempt_at, locked_until or next_attempt_at))
                scheduled += 1
        return scheduled

    async def _poll(self) -> None:
        """Pick up, now and then, rows that another (stopped) replica was working on."""
        horizon = dt.timedelta(seconds=self._poll_interval_s)
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self._schedule_pending(horizon)
            except Exception:
                _LOGGER.exception("could not scan the webhook outbox; trying again in %.0fs", self._poll_interval_s)

    def _backoff_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Exponential backoff with jitter (half fixed, half random) so failing receivers are not stampeded;
        a receiver's Retry-After in ASCII delta-seconds is honoured up to max_delay_s; any other value (an
        HTTP-date, "²", garbage) is ignored. Never raises: the attempt count is recorded after this returns.

        Not tenacity (which the CLI uses): a retry library runs its loop in one process's memory, while each
        delivery's next attempt is a row in the outbox (next_attempt_at), so it survives restarts and any
        replica may take it; only this formula is left to write."""
        ceiling = min(self._max_delay_s, self._base_delay_s * 2.0 ** (min(attempt, 64) - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        asked = retry_after_seconds(retry_after)
        if asked is not None:
            delay = max(delay, min(float(asked), self._max_delay_s))
        return delay

    async def _deliver(self, delivery_id: str, due: dt.datetime) -> None:
        """Attempt the delivery whenever it falls due, until it is finished or another replica holds it;
        never raises (a background task has no caller)."""
        try:
            next_due: dt.datetime | None = due
            while next_due is not None and not self._closing:
                await asyncio.sleep(max(0.0, (next_due - utc_now()).total_seconds()))
                if self._closing:
                    return
                claimed = await self._claim(delivery_id)
                if claimed is None:
                    next_due = await self._due_unclaimed(delivery_id)
                    continue
                delivery, secrets = claimed
                try:
                    outcome = await self._attempt(delivery, secrets)
                    next_due = await self._record(delivery, outcome)
                finally:
                    self._claimed.discard(delivery_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("webhook %s failed unexpectedly; it stays pending", delivery_id)

    async def _claim(self, delivery_id: str) -> tuple[WebhookDelivery, list[str] | None] | None:
        """Take the lease on a pending, due, unheld row (one conditional UPDATE, so one replica wins) and read
        the account's signing secrets as they are now (current, and previous during a rotation window), so a
        retry after a rotation carries the new secret's signature; None if the row is not ours to attempt now."""
        now = utc_now()
        async with self._sessions.begin() as session:
            claimed = await session.scalars(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                    or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now),
                )
                .values(locked_until=now + self._lease)
                .returning(WebhookDelivery)
            )
            delivery = claimed.one_or_none()
            if delivery is None:
                return None
            self._claimed.add(delivery_id)
            account = await session.get(Account, delivery.account_id)
        return delivery, None if account is None else signing_secrets(account)

    async def _due_unclaimed(self, delivery_id: str) -> dt.datetime | None:
        """When a row we could not claim falls due; None if it is finished, gone or held by another replica."""
        now = utc_now()
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(WebhookDelivery.next_attempt_at, WebhookDelivery.locked_until).where(
                        WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending"
                    )
                )
            ).one_or_none()
        if row is None:
            return None
        next_attempt_at, locked_until = row
        if locked_until is not None and locked_until > now:
            return None  # another replica is attempting it; its poller, or ours, takes over if it stops
        return next_attempt_at

    async def _attempt(self, delivery: WebhookDelivery, secrets: list[str] | None) -> _Outcome:
        """One signed POST of the stored body."""
        if secrets is None:
            return _Outcome("failed", "the account is gone", attempted=False)
        try:
            target = check_url(delivery.url, self._policy)
        except FetchError as error:
            return _Outcome("failed", str(error), attempted=False)
        session = self._session
        assert session is not None, "deliveries are only attempted while the session is open"
        body = delivery.body.encode()
        headers = {aiohttp.hdrs.CONTENT_TYPE: "application/json", **delivery_headers(secrets, delivery.id, body)}
        try:
            # Redirects are not followed: a receiver must not bounce our signed POST elsewhere.
            async with session.post(target, data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
                retry_after = response.headers.get(aiohttp.hdrs.RETRY_AFTER)
        except DestinationRefused as error:
            return _Outcome("failed", str(error), attempted=False)
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.__cause__, DestinationRefused):
                return _Outcome("failed", str(error.__cause__), attempted=False)
            return _Outcome("retry", f"connection failed: {error}")
        except (aiohttp.ClientError, TimeoutError) as error:
            return _Outcome("retry", f"request failed: {error!r}")
        if HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
            return _Outcome("delivered")
        if not _is_retryable(status):
            return _Outcome("failed", f"HTTP {status} (not retried)")
        return _Outcome("retry", f"HTTP {status}", retry_after)

    async def _record(self, delivery: WebhookDelivery, outcome: _Outcome) -> dt.datetime | None:
        """Write the attempt's outcome under our lease; returns when to try again, or None when finished."""
        attempts = delivery.attempts + (1 if outcome.attempted else 0)
        now = utc_now()
        next_due: dt.datetime | None = None
        values: dict[str, Any] = {"attempts": attempts, "locked_until": None, "last_error": outcome.error}
        if outcome.kind == "delivered":
            values.update(status="delivered", delivered_at=now)
            _LOGGER.info("webhook %s delivered to %s (attempt %d)", delivery.id, redact_url(delivery.url), attempts)
        elif outcome.kind == "retry" and attempts < self._max_attempts:
            delay = self._backoff_s(attempts, outcome.retry_after)
            next_due = now + dt.timedelta(seconds=delay)
            values.update(next_attempt_at=next_due)
            _LOGGER.info(
                "webhook %s attempt %d/%d: %s; retrying in %.2fs",
                delivery.id, attempts, self._max_attempts, redact_urls_in(outcome.error or ""), delay,
            )
        else:
            values.update(status="failed")
            if outcome.kind == "retry":
                _LOGGER.error(
                    "webhook %s to %s given up after %d attempts; last: %s",
                    delivery.id, redact_url(delivery.url), attempts, redact_urls_in(outcome.error or ""),
                )
            else:
                _LOGGER.warning(
                    "webhook %s to %s not sent: %s",
                    delivery.id, redact_url(delivery.url), redact_urls_in(outcome.error or ""),
                )
        async with self._sessions.begin() as session:
            # Only while the lease is still ours: one that ran out belongs to whoever claimed the row next.
            recorded = await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery.id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.locked_until == delivery.locked_until,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if recorded.rowcount != 1:  # type: ignore[attr-defined]
            _LOGGER.warning("webhook %s: our claim ran out before the outcome was recorded", delivery.id)
            return None
        return next_due
