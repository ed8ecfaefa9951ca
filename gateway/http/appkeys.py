"""Typed keys for what the application holds (one of each per process) and what each request carries."""

from __future__ import annotations

from aiohttp import web

from gateway.domain.accounts import KeyCache
from gateway.domain.admission import AccountSlots
from gateway.domain.idempotency import IdempotencyKeys
from gateway.domain.processing import ImageProcessor
from gateway.domain.ratelimit import RateLimitDecision, RateLimiter
from gateway.domain.removals import BatchAdmission, Removals
from gateway.jobs.batch_runner import BatchRunner
from gateway.jobs.model_catalog import ModelCatalog
from gateway.jobs.sweeps import Sweeper
from gateway.settings import GatewaySettings
from gateway.store.database import PointReader, Sessions
from gateway.store.tables import Account

SETTINGS = web.AppKey("settings", GatewaySettings)
SESSIONS = web.AppKey("sessions", Sessions)
KEY_CACHE = web.AppKey("key_cache", KeyCache)
POINT_READER = web.AppKey("point_reader", PointReader)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
PROCESSOR = web.AppKey("processor", ImageProcessor)
BATCHES = web.AppKey("batches", BatchRunner)
SWEEPER = web.AppKey("sweeper", Sweeper)
MODELS = web.AppKey("models", ModelCatalog)
UPLOAD_SLOTS = web.AppKey("upload_slots", AccountSlots)
REPLAY_SLOTS = web.AppKey("replay_slots", AccountSlots)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyKeys)
# The OpenAPI document, serialised once when the application is built.
OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)
# The port Prometheus' /metrics listens on once the application has started (absent when metrics_port is -1).
METRICS_PORT = web.AppKey("metrics_port", int)

# Per request.
REQUEST_ID = web.RequestKey("request_id", str)
ACCOUNT = web.RequestKey("account", Account)
RATE_LIMIT = web.RequestKey("rate_limit", RateLimitDecision)
# The validated Idempotency-Key of a creating request, when it sent one.
IDEMPOTENCY_KEY = web.RequestKey("idempotency_key", str)


def account_of(request: web.Request) -> Account:
    return request[ACCOUNT]


def request_id_of(request: web.Request) -> str:
    return request[REQUEST_ID]


def removals_of(request: web.Request) -> Removals:
    """The removal use-cases over this application's parts (cheap: built per request)."""
    app = request.app
    settings = app[SETTINGS]
    admission = BatchAdmission(settings.max_queued_batch_images_per_account, settings.upload_retry_after_s)
    return Removals(app[PROCESSOR], app[BATCHES], admission)
