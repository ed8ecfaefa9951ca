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
from gateway.domain.images import Claim
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
from gateway.jobs.webhooks import WebhookSender
from gateway.net.inference import InferenceClient
from gateway.settings import GatewaySettings
from gateway.store.database import PointReader, default_database_url, make_private_dir, open_database
from gateway.store.storage import open_storage

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


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """Opens the database (migrating it), rate limiter, gRPC channel, storage and webhook sender; runs the
    sweeps and starts claiming batch images; releases its leases and closes everything in reverse order at
    shutdown."""
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
        app[POINT_READER] = PointReader.of(sessions)
        # First of the resources opened here: a store that cannot be reached stops the start with nothing to undo.
        storage = await open_storage(settings.storage_url, settings.data_dir / "files")
        app[RATE_LIMITER] = create_rate_limiter(settings.redis_url or None)
        inference = InferenceClient(
            settings.inference_url, timeout_s=settings.inference_timeout_s, retry_after_s=settings.retry_after_s
        )
        app[MODELS] = catalog = ModelCatalog(
            inference, settings.models_refresh_s, retry_after_s=settings.retry_after_s
        )
        webhooks = WebhookSender(
            settings.address_policy, sessions, max_attempts=settings.webhook_max_attempts,
            base_delay_s=settings.webhook_base_delay_s,
        )
        await webhooks.start()
        links = OutputLinks(
            load_or_create_secret(settings.url_signing_secret, settings.data_dir), settings.base_url,
            settings.output_url_ttl_s,
        )
        fetch_limits = FetchLimits(
            settings.address_policy, settings.max_upload_bytes, settings.fetch_connect_timeout_s,
            settings.fetch_total_timeout_s,
        )
        claim = _claim(settings)
        processor = ImageProcessor(
            sessions, storage, inference, webhooks, links, fetch_limits, claim, settings.heartbeat_s
        )
        app[PROCESSOR] = processor
        batches = BatchRunner(
            processor, settings.batch_concurrency, poll_interval_s=settings.poll_interval_s,
            max_attempts=settings.batch_max_attempts,
        )
        app[BATCHES] = batches
        # Single images recorded before leases existed have none: a live request finishes within the inference
        # deadline plus a URL fetch, so twice that is abandoned.
        abandoned_after = dt.timedelta(seconds=2 * (settings.inference_timeout_s + settings.fetch_total_timeout_s))
        # A key is held from the moment its request is read until its answer is stored: the same bound.
        app[IDEMPOTENCY] = IdempotencyKeys(
            sessions, ttl=dt.timedelta(seconds=settings.idempotency_ttl_s), lease=abandoned_after,
            wait_s=settings.idempotency_wait_s,
        )
        sweeper = Sweeper(
            sessions, storage, batches, claim, interval_s=settings.sweep_interval_s,
            abandoned_after=abandoned_after, retention=_retention(settings),
            orphans=OrphanSweep(
                every=dt.timedelta(seconds=settings.orphan_sweep_interval_s),
                grace=dt.timedelta(seconds=settings.orphan_grace_s),
            ),
        )
        app[SWEEPER] = sweeper
        _LOGGER.info("replica %s: leases of %.0fs, renewed every %.0fs", claim.replica, settings.lease_s,
                     settings.heartbeat_s)
        try:
            catalog.start()
            await sweeper.start()
            batches.start()
            yield
        finally:
            await catalog.close()
            await sweeper.close()
            await batches.close()
            await webhooks.close()
            await inference.close()
            await app[RATE_LIMITER].aclose()
            app[POINT_READER].close()


def create_app(settings: GatewaySettings) -> web.Application:
    """The aiohttp application; no I/O until it starts (see _resources)."""
    app = web.Application(middlewares=[metrics_middleware, envelope_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[UPLOAD_SLOTS] = AccountSlots(
        settings.max_concurrent_uploads_per_account, settings.upload_retry_after_s, kind="uploads"
    )
    app[REPLAY_SLOTS] = AccountSlots(settings.max_replays_per_account, settings.upload_retry_after_s, kind="replays")
    app.cleanup_ctx.append(_metrics_listener)
    app.cleanup_ctx.append(_resources)
    app[OPENAPI_DOCUMENT] = document_bytes(ROUTES, settings)
    add_routes(app)
    app.router.add_get("/healthz", ops.healthz, name="healthz")
    page.add_routes(app)
    return app
