"""Builds the gateway from its settings: routes, middlewares, and one of each resource per process."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.domain.accounts import KeyCache
from gateway.domain.admission import AccountSlots
from gateway.domain.idempotency import IdempotencyKeys
from gateway.domain.leases import Claim
from gateway.domain.links import OutputLinks, load_or_create_secret
from gateway.domain.processing import FetchLimits, ImageProcessor
from gateway.domain.ratelimit import create_rate_limiter
from gateway.http.appkeys import (
    BATCHES,
    IDEMPOTENCY,
    KEY_CACHE,
    METRICS_PORT,
    MODELS,
    OPENAPI_DOCUMENT,
    POINT_READER,
    PROCESSOR,
    RATE_LIMITER,
    REPLAY_SLOTS,
    SESSIONS,
    SETTINGS,
    SWEEPER,
    UPLOAD_SLOTS,
)
from gateway.http.handlers import ops, page
from gateway.http.middlewares import auth_middleware, envelope_middleware, metrics_middleware
from gateway.http.openapi import document_bytes
from gateway.http.routes import ROUTES, add_routes
from gateway.http.uploads import clear_spool
from gateway.jobs.batch_runner import BatchRunner
from gateway.jobs.model_catalog import ModelCatalog
from gateway.jobs.sweeps import OrphanSweep, Retention, Sweeper
from gateway.jobs.webhook_outbox import WebhookSender
from gateway.net.inference import InferenceClient
from gateway.settings import GatewaySettings
from gateway.store.database import PointReader, default_database_url, make_private_dir, open_database
from gateway.store.storage import OutputStorage, open_storage

_LOGGER = logging.getLogger(__name__)


def _claim(settings: GatewaySettings) -> Claim:
    replica = settings.replica_id or f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return Claim(replica=replica, lease=dt.timedelta(seconds=settings.lease_s))


def _retention(settings: GatewaySettings) -> Retention:
    days = {
        "basic": settings.retention_days_basic,
        "pro": settings.retention_days_pro,
        "enterprise": settings.retention_days_enterprise,
    }
    return Retention(
        images_by_plan={plan: dt.timedelta(days=value) for plan, value in days.items()},
        webhook_deliveries=dt.timedelta(days=settings.webhook_retention_days),
    )


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """Prometheus' /metrics on settings.metrics_port, a listener of its own in this event loop: opened before
    the resources (a gateway still migrating its database can be scraped) and closed after them, so it also
    reports the drain of a SIGTERM. No access log: a scrape every few seconds would drown the requests."""
    settings = app[SETTINGS]
    if settings.metrics_port < 0:
        yield
        return
    runner = web.AppRunner(ops.create_metrics_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.metrics_port).start()
        app[METRICS_PORT] = port = runner.addresses[0][1]
        _LOGGER.info("Prometheus metrics on %s port %d, path /metrics", settings.host, port)
        yield
    finally:
        await runner.cleanup()


# What one resource's cleanup context opened for those after it; private to this module, so handlers never
# reach the store or the clients through the application (they go through PROCESSOR and the domain).
_STORAGE = web.AppKey("storage", OutputStorage)
_INFERENCE = web.AppKey("inference", InferenceClient)
_WEBHOOKS = web.AppKey("webhooks", WebhookSender)
_CLAIM = web.AppKey("claim", Claim)


def _abandoned_after(settings: GatewaySettings) -> dt.timedelta:
    """Single images recorded before leases existed have none: a live request finishes within the inference
    deadline plus a URL fetch, so twice that is abandoned. An Idempotency-Key is held from the moment its
    request is read until its answer is stored: the same bound."""
    return dt.timedelta(seconds=2 * (settings.inference_timeout_s + settings.fetch_total_timeout_s))


async def _database(app: web.Application) -> AsyncIterator[None]:
    """The data directory (owner-only, stale upload spools cleared) and the database, migrated."""
    settings = app[SETTINGS]
    # Owner-only: it holds the database, the URL-signing secret and every account's files.
    make_private_dir(settings.data_dir)
    # An upload lives at most its body deadline plus one inference call; twice that is surely abandoned.
    spool_age_s = 2 * (settings.upload_deadline_s + settings.inference_timeout_s)
    if cleared := clear_spool(settings.spool_dir, spool_age_s):
        _LOGGER.info("removed %d upload spools left by a stopped gateway", cleared)
    database_url = settings.database_url or default_database_url(settings.data_dir)
    async with open_database(database_url) as sessions:
        app[SESSIONS] = sessions
        app[KEY_CACHE] = KeyCache(sessions, settings.auth_cache_ttl_s)
        app[POINT_READER] = point_reader = PointReader.of(sessions)
        try:
            yield
        finally:
            point_reader.close()


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """The output store, checked to be reachable; it holds no connection between calls, so nothing to close."""
    settings = app[SETTINGS]
    app[_STORAGE] = await open_storage(settings.storage_url, settings.data_dir / "files")
    yield


async def _rate_limiter(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[RATE_LIMITER] = limiter = create_rate_limiter(settings.redis_url or None)
    try:
        yield
    finally:
        await limiter.aclose()


async def _inference(app: web.Application) -> AsyncIterator[None]:
    """The gRPC client of the inference services."""
    settings = app[SETTINGS]
    app[_INFERENCE] = inference = InferenceClient(
        settings.inference_url, timeout_s=settings.inference_timeout_s, retry_after_s=settings.retry_after_s
    )
    try:
        yield
    finally:
        await inference.close()


async def _model_catalog(app: web.Application) -> AsyncIterator[None]:
    """The models the inference services serve, refreshed in the background."""
    settings = app[SETTINGS]
    app[MODELS] = catalog = ModelCatalog(
        app[_INFERENCE], settings.models_refresh_s, retry_after_s=settings.retry_after_s
    )
    catalog.start()
    try:
        yield
    finally:
        await catalog.close()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """The webhook sender, resuming the outbox's pending deliveries."""
    settings = app[SETTINGS]
    webhooks = WebhookSender(
        settings.address_policy, app[SESSIONS], max_attempts=settings.webhook_max_attempts,
        base_delay_s=settings.webhook_base_delay_s,
    )
    await webhooks.start()
    app[_WEBHOOKS] = webhooks
    try:
        yield
    finally:
        await webhooks.close()


async def _processing(app: web.Application) -> AsyncIterator[None]:
    """The image processor, the batch runner (claiming starts later, in _batch_claims) and the Idempotency-Key
    store: objects over the resources opened before, with nothing of their own to close."""
    settings = app[SETTINGS]
    sessions = app[SESSIONS]
    links = OutputLinks(
        load_or_create_secret(settings.url_signing_secret, settings.data_dir), settings.base_url,
        settings.output_url_ttl_s,
    )
    fetch_limits = FetchLimits(
        settings.address_policy, settings.max_upload_bytes, settings.fetch_connect_timeout_s,
        settings.fetch_total_timeout_s,
    )
    app[_CLAIM] = claim = _claim(settings)
    app[PROCESSOR] = processor = ImageProcessor(
        sessions, app[_STORAGE], app[_INFERENCE], app[_WEBHOOKS], links, fetch_limits, claim, settings.heartbeat_s
    )
    app[BATCHES] = BatchRunner(
        processor, settings.batch_concurrency, poll_interval_s=settings.poll_interval_s,
        max_attempts=settings.batch_max_attempts,
    )
    app[IDEMPOTENCY] = IdempotencyKeys(
        sessions, ttl=dt.timedelta(seconds=settings.idempotency_ttl_s), lease=_abandoned_after(settings),
        wait_s=settings.idempotency_wait_s,
    )
    _LOGGER.info("replica %s: leases of %.0fs, renewed every %.0fs", claim.replica, settings.lease_s,
                 settings.heartbeat_s)
    yield


async def _sweeps(app: web.Application) -> AsyncIterator[None]:
    """The sweeps, run once before batch images are claimed (a restart cleans up first), then periodically."""
    settings = app[SETTINGS]
    app[SWEEPER] = sweeper = Sweeper(
        app[SESSIONS], app[_STORAGE], app[BATCHES], app[_CLAIM], interval_s=settings.sweep_interval_s,
        abandoned_after=_abandoned_after(settings), retention=_retention(settings),
        orphans=OrphanSweep(
            every=dt.timedelta(seconds=settings.orphan_sweep_interval_s),
            grace=dt.timedelta(seconds=settings.orphan_grace_s),
        ),
    )
    await sweeper.start()
    try:
        yield
    finally:
        await sweeper.close()


async def _batch_claims(app: web.Application) -> AsyncIterator[None]:
    """Claiming batch images; at the stop, the leases of those in flight are released for another replica."""
    batches = app[BATCHES]
    batches.start()
    try:
        yield
    finally:
        await batches.close()


# The resources in the order they start, each needing only those before it; they close in reverse, and a
# failure while one starts closes those already started (aiohttp runs the cleanup of every context entered).
_RESOURCES = (
    _metrics_listener, _database, _storage, _rate_limiter, _inference, _model_catalog, _webhooks, _processing,
    _sweeps, _batch_claims,
)


def create_app(settings: GatewaySettings) -> web.Application:
    """The aiohttp application; no I/O until it starts (see _RESOURCES)."""
    app = web.Application(middlewares=[metrics_middleware, envelope_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[UPLOAD_SLOTS] = AccountSlots(
        settings.max_concurrent_uploads_per_account, settings.upload_retry_after_s, kind="uploads"
    )
    app[REPLAY_SLOTS] = AccountSlots(settings.max_replays_per_account, settings.upload_retry_after_s, kind="replays")
    app.cleanup_ctx.extend(_RESOURCES)
    app[OPENAPI_DOCUMENT] = document_bytes(ROUTES, settings)
    add_routes(app)
    app.router.add_get("/healthz", ops.healthz, name="healthz")
    page.add_routes(app)
    return app
