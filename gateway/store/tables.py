"""SQLAlchemy models for accounts, API keys, images, batches, monthly usage, the webhook outbox, job leases and
idempotency keys."""

import datetime as dt
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

PlanName = Literal["basic", "pro", "enterprise"]
PLAN_NAMES: tuple[PlanName, ...] = ("basic", "pro", "enterprise")
ImageStatus = Literal["processing", "completed", "failed"]
BatchStatus = Literal["processing", "completed"]
DeliveryStatus = Literal["pending", "delivered", "failed"]
IdempotencyStatus = Literal["in_progress", "completed"]


def utc_now() -> dt.datetime:
    """Return the current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC timestamp on every backend; SQLite has no time zones, so it stores UTC and we re-attach it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base whose constraint names are deterministic, so migrations can refer to them."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Account(Base):
    """A customer: owns API keys, images and batches, and is billed on a plan."""

    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("plan IN ('basic', 'pro', 'enterprise')", name="plan"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    plan: Mapped[PlanName] = mapped_column(String(16))
    # Kept in clear text: the gateway needs it to sign webhook payloads (HMAC), not merely to verify it.
    webhook_secret: Mapped[str] = mapped_column(String(64))
    # The secret replaced by the last rotation; it still signs (beside the new one) until the expiry, so
    # receivers can switch secrets without rejecting a delivery.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(64))
    previous_webhook_secret_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    webhook_secret_rotated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # Set by the operator: the account's keys still identify it, but every request is refused (403 forbidden)
    # until it is enabled again; its data is kept.
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """One API key of an account, stored only as its SHA-256 hash."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # Keys are 256-bit random tokens, so a fast unsalted hash is enough: there is nothing to brute-force.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, shown so an owner can tell keys apart without revealing them.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # When a request last authenticated with the key, to within a minute (a write per request would cost more
    # than an operator's "is this key still in use?" needs).
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Batch(Base):
    """A group of images submitted in one request, completed when every image is done."""

    __tablename__ = "batches"
    __table_args__ = (CheckConstraint("status IN ('processing', 'completed')", name="status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    status: Mapped[BatchStatus] = mapped_column(String(16), index=True)
    total_images: Mapped[int] = mapped_column(Integer)
    # The output options shared by every image of the batch (output_format, output_size, bg_color).
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    # Always wanted together with the batch (responses and resumption), so load them eagerly.
    images: Mapped[list["Image"]] = relationship(order_by="Image.position", lazy="selectin")


class Image(Base):
    """One background-removal job and, once completed, where its cutout is stored."""

    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint("status IN ('processing', 'completed', 'failed')", name="status"),
        Index("ix_images_account_id_created_at", "account_id", "created_at"),
        # The claim query: unfinished images whose lease is free, and each account's latest claim (fairness).
        Index("ix_images_status_locked_until", "status", "locked_until"),
        Index("ix_images_account_id_claimed_at", "account_id", "claimed_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    # Order of the image within its batch, as submitted.
    position: Mapped[int | None] = mapped_column(Integer)
    original_url: Mapped[str | None] = mapped_column(Text)
    original_filename: Mapped[str | None] = mapped_column(String(255))
    # Storage key of an uploaded original kept until it is processed, so a restarted gateway can resume.
    source_key: Mapped[str | None] = mapped_column(String(255))
    output_format: Mapped[str] = mapped_column(String(8))
    output_size: Mapped[str] = mapped_column(String(16))
    bg_color: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[ImageStatus] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Options added after the spec, only those given: output_type, crop, crop_margin, model, bg_image_url.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Storage key of an uploaded background image, kept until the image is processed (like source_key).
    bg_source_key: Mapped[str | None] = mapped_column(String(255))
    # The foreground's bounding box in the result's pixels (all None: none, or not completed).
    foreground_left: Mapped[int | None] = mapped_column(Integer)
    foreground_top: Mapped[int | None] = mapped_column(Integer)
    foreground_width: Mapped[int | None] = mapped_column(Integer)
    foreground_height: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # The lease: the replica working on the image holds it until locked_until (renewed by a heartbeat); once
    # it has passed, any replica may claim the image again. `attempt` is the fencing token: it grows with every
    # claim and the result is written only under the attempt that made it, so a replica that lost its lease
    # can neither overwrite nor delete the new owner's work.
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Claims whose lease ran out (their replica died, stalled or lost the database) before they were released
    # or finished: counted when the next claim takes the image over. A graceful stop releases its leases and
    # costs nothing here; batch_max_attempts bounds this, not `attempt`.
    abandoned_claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    locked_by: Mapped[str | None] = mapped_column(String(64))
    # When the image was last claimed: the fair-share order serves the account claimed least recently first.
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Usage(Base):
    """How many images an account has used in one UTC calendar month ('YYYY-MM'): images_used whole images and
    quarters_used quarter images (remove.bg previews), images_used + quarters_used / 4 in all."""

    __tablename__ = "usage"
    __table_args__ = (
        CheckConstraint("images_used >= 0", name="images_used_non_negative"),
        CheckConstraint("quarters_used >= 0", name="quarters_used_non_negative"),
    )

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    images_used: Mapped[int] = mapped_column(Integer, default=0)
    quarters_used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WebhookDelivery(Base):
    """One webhook to send (a transactional outbox row): written before the first attempt, so a gateway
    restart resumes it; its id is the X-RemovAI-Delivery header of every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # The batch whose 'batch.completed' this announces; unique, so a batch is announced at most once.
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), unique=True
    )
    url: Mapped[str] = mapped_column(Text)
    # The exact JSON sent; the signature is made at send time with the account's current secret, never stored.
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # A replica claims a row for one attempt until this time, so replicas resuming together send it once.
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class JobLease(Base):
    """A periodic background job (a sweep) that one replica at a time runs: claimed like an image, by a
    conditional UPDATE of `locked_until`, with a fencing token that grows with every claim."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    locked_by: Mapped[str | None] = mapped_column(String(64))
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class IdempotencyKey(Base):
    """One Idempotency-Key of an account: the request it was first used with (a fingerprint) and, once that
    request has finished, its answer, replayed to every repeat until expires_at."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (CheckConstraint("status IN ('in_progress', 'completed')", name="status"),)

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # sha256 (hex) of method, path, query, the body's digest and the negotiated answer type.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[IdempotencyStatus] = mapped_column(String(16))
    # Fencing token: grows when a request takes over a key whose first request died; only the holder of the
    # current token may record the answer or release the key.
    token: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # While in_progress: after this time the first request is taken for dead and a repeat may take the key.
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    response_status: Mapped[int | None] = mapped_column(Integer)
    # The answer's media type: application/json (the envelope in response_body), or an image type, whose bytes
    # are the stored cut-out of the image the envelope in response_body describes.
    response_type: Mapped[str | None] = mapped_column(String(64))
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
