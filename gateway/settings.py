"""The gateway's settings: environment variables (REMOVAI_GATEWAY_*) or flags, validated at start."""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from common.credentials import FILE_SUFFIX, read_secret_file
from contract.channel import balanced_target
from gateway.net.netguard import AddressPolicy
from gateway.store.storage import parse_storage_url

MIB = 1024 * 1024
# A URL-signing key shorter than this is refused: HMAC-SHA256 wants a key of at least its output's 32 bytes.
MIN_URL_SIGNING_SECRET_BYTES = 32
# Fewer distinct characters than this is not random ("x" * 32, "0" * 64); 32 random hex digits have ~15.
_MIN_SECRET_DISTINCT_CHARACTERS = 8
# Values copied from templates, compared lower-case without separators: "change-me-to-a-long-random-string",
# "your_secret_here", "secret" + "...". Five letters or more, so a random key starts with one by chance at most
# once in 64**5 (token_urlsafe; hex digits cannot spell them).
_PLACEHOLDER_PREFIXES = (
    "changeme", "replaceme", "yoursecret", "mysecret", "secret", "password", "setme", "putyour", "insertyour",
    "example", "placeholder", "default", "fixme",
)


class FileVariables(PydanticBaseSettingsSource):
    """Each setting from the file its `<PREFIX><SETTING>_FILE` variable names (REMOVAI_GATEWAY_DATABASE_URL_FILE=
    /run/secrets/database_url), so a secret reaches the process as a mounted file, not as a flag `ps` shows.
    Below the variable itself: a setting given both ways takes the variable's value. Names match
    case-insensitively, as pydantic-settings matches the variables themselves."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = f"{self.config.get('env_prefix', '')}{field_name}{FILE_SUFFIX}".upper()
        path = next((value for key, value in os.environ.items() if key.upper() == variable and value), "")
        return (read_secret_file(variable, path) if path else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                values[name] = value
        return values


class FileVariableSettings(BaseSettings):
    """Settings that may also come from files: pydantic-settings' own order (arguments, variables, .env,
    secrets_dir) with FileVariables after the variables. The gateway's settings and the admin's database
    settings both read their secrets this way."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, FileVariables(settings_cls), dotenv_settings, file_secret_settings


class GatewaySettings(FileVariableSettings):
    """Frozen once built; `python -m gateway --help` lists each as a flag. Any setting may also come from a
    file: REMOVAI_GATEWAY_<SETTING>_FILE names it (see FileVariables)."""

    # hide_input_in_errors: an invalid url_signing_secret or database_url (with its password) must not be
    # echoed into the logs that show why the gateway did not start; the message still names the setting.
    model_config = SettingsConfigDict(
        env_prefix="REMOVAI_GATEWAY_", frozen=True, extra="forbid", cli_kebab_case=True, cli_prog_name="gateway",
        hide_input_in_errors=True,
    )

    host: str = Field("127.0.0.1", description="address the HTTP server binds")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port; 0 picks a free one")
    # Its own port, on the same address: the public port never serves it, and a NetworkPolicy or firewall can
    # let only the Prometheus scraper reach this one (as the inference service's metrics_port).
    metrics_port: int = Field(9102, ge=-1, le=65535, description="Prometheus /metrics; 0 picks a port, -1 disables")
    public_url: str = Field("", description="base URL clients reach the gateway at; default http://host:port")
    inference_url: str = Field(
        "127.0.0.1:50051",
        description="the gRPC inference service: host:port, a comma-separated list of IP:port, or "
        "dns:///name:port (one A record per replica); calls are spread round robin over healthy replicas",
    )
    data_dir: Path = Field(Path("var"), description="SQLite database, output files, URL-signing secret")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite in data_dir; postgresql+asyncpg://...")
    storage_url: str = Field("", description="where originals and outputs live: empty = data_dir/files on local disk; s3://bucket?endpoint=http://host:port&region=... for an S3-compatible store")
    redis_url: str = Field("", description="redis://... to share rate limits between replicas; default in-memory")
    url_signing_secret: str = Field(
        "", description="HMAC key for output_url links; replicas must share it; default: generated into data_dir"
    )
    output_url_ttl_s: int = Field(24 * 3600, gt=0, description="how long an output_url link stays valid")
    max_upload_bytes: int = Field(25 * MIB, gt=0, description="largest image accepted (upload or URL)")
    max_batch_images: int = Field(20, gt=0, le=1000, description="most images in one batch request")
    max_json_body_bytes: int = Field(
        1 * MIB, gt=0, description="largest JSON request body, counted after any Content-Encoding is undone"
    )
    upload_idle_timeout_s: float = Field(
        30.0, gt=0, description="a request body that sends nothing for this long is refused with 408"
    )
    upload_deadline_s: float = Field(
        600.0, gt=0, description="a request body not complete this long after the handler starts reading it gets 408"
    )
    header_timeout_s: float = Field(
        30.0, gt=0, description="a request head (request line and headers) must arrive whole within this long of "
        "the connection opening, or of its first byte on a kept-alive connection; else the connection is closed",
    )
    keepalive_timeout_s: float = Field(
        75.0, gt=0, description="an idle keep-alive connection (no byte of a next request) is closed after this "
        "long; keep it above the upstream keep-alive of a proxy in front (ingress-nginx: 60 s)",
    )
    max_concurrent_uploads_per_account: int = Field(
        4, gt=0, description="file and batch uploads one account may have in flight on this replica; more get 429"
    )
    max_queued_batch_images_per_account: int = Field(
        100, gt=0, description="batch images one account may have waiting ('processing'), all replicas; more get 429"
    )
    max_replays_per_account: int = Field(
        4, gt=0, description="Idempotency-Key replays one account may have streaming on this replica; more get 429"
    )
    upload_retry_after_s: int = Field(10, ge=1, description="Retry-After sent with the 429s of the three caps above")
    batch_concurrency: int = Field(2, gt=0, description="images of batches processed at once by this replica")
    inference_timeout_s: float = Field(120.0, gt=0, description="deadline for one image's inference call")
    models_refresh_s: float = Field(
        30.0, gt=0, description="how often the model list GET /v1/models answers with is asked of the inference service"
    )
    fetch_connect_timeout_s: float = Field(5.0, gt=0)
    fetch_total_timeout_s: float = Field(30.0, gt=0)
    fetch_allow_hosts: str = Field(
        "", description="comma-separated host names URL fetches and webhooks may reach even if private"
    )
    fetch_allow_networks: str = Field(
        "", description="comma-separated CIDRs allowed although private, e.g. 127.0.0.0/8 for local testing"
    )
    webhook_max_attempts: int = Field(5, ge=1)
    webhook_base_delay_s: float = Field(1.0, gt=0)
    webhook_secret_overlap_s: int = Field(
        24 * 3600, ge=0, description="after a webhook secret rotation, how long the previous secret signs too"
    )
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After sent with 503 when inference, the database or Redis is unavailable"
    )
    shutdown_timeout_s: float = Field(
        60.0, gt=0, description="on SIGTERM, how long requests in flight may take to finish before they are cut; "
        "keep it below the orchestrator's grace period (Kubernetes: terminationGracePeriodSeconds, 90 in deploy/)"
    )
    idempotency_wait_s: float = Field(
        30.0, ge=0, description="a request repeating the Idempotency-Key of one still running waits this long for"
        " its answer, then gets 409 idempotency_in_progress",
    )
    idempotency_ttl_s: int = Field(
        24 * 3600, gt=0, description="how long an Idempotency-Key and its first answer are kept for replays"
    )
    replica_id: str = Field(
        "", max_length=64, description="names this replica in the leases it holds; default host-pid-random"
    )
    lease_s: float = Field(
        30.0, gt=0, description="how long a claim on a batch image or a sweep lasts unless renewed; a replica"
        " that dies loses its work to another replica this long after its last heartbeat",
    )
    heartbeat_s: float = Field(10.0, gt=0, description="how often a replica renews its leases; below lease_s")
    poll_interval_s: float = Field(
        5.0, gt=0, description="how often a replica looks for claimable batch images (a local submit wakes it"
        " at once)",
    )
    batch_max_attempts: int = Field(
        3, ge=1, description="abandoned claims of one batch image (its replica died or stalled past its lease, not a"
        " graceful stop) before it is failed: it keeps stopping its replicas"
    )
    sweep_interval_s: float = Field(
        60.0, gt=0, description="how often each replica runs the sweeps: abandoned images, unannounced"
        " batches, retention, webhook outbox pruning",
    )
    orphan_sweep_interval_s: float = Field(
        3600.0, gt=0, description="how often one replica lists outputs/ and sources/ in storage for objects no"
        " image references (left by a replica killed between storing and recording) and removes them",
    )
    orphan_grace_s: float = Field(
        3600.0, gt=0, description="how old an unreferenced stored object must be before the orphan sweep removes"
        " it; at least lease_s, and longer than a batch upload takes to store its files before it is recorded",
    )
    retention_days_basic: float = Field(
        30.0, gt=0, description="days a basic-plan image (record, output, original) is kept once finished"
    )
    retention_days_pro: float = Field(30.0, gt=0, description="days a pro-plan image is kept once finished")
    retention_days_enterprise: float = Field(
        30.0, gt=0, description="days an enterprise-plan image is kept once finished"
    )
    webhook_retention_days: float = Field(
        7.0, gt=0, description="days a delivered (or given up) webhook outbox row is kept"
    )
    auth_cache_ttl_s: float = Field(
        5.0, ge=0, le=300,
        description="seconds an authenticated API key is remembered in this process; a revoked key or a changed "
        "plan takes effect on each replica within this time; 0 looks every key up on every request",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(False, description="log one JSON object per line")

    @field_validator("inference_url")
    @classmethod
    def _balanced_target(cls, value: str) -> str:
        balanced_target(value)  # raises TargetError (a ValueError) with what to write instead
        return value

    @field_validator("url_signing_secret")
    @classmethod
    def _not_a_placeholder(cls, value: str) -> str:
        # Empty means: generate one into data_dir (the single-machine default, see gateway/domain/links.py).
        if not value:
            return value
        if len(value.encode()) < MIN_URL_SIGNING_SECRET_BYTES:
            raise ValueError(
                f"must be at least {MIN_URL_SIGNING_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`), or empty to"
                " generate one into data_dir"
            )
        normalised = re.sub(r"[^a-z0-9]", "", value.lower())
        if normalised.startswith(_PLACEHOLDER_PREFIXES) or "changeme" in normalised:
            raise ValueError("looks like a placeholder copied from an example; use `openssl rand -hex 32`")
        if len(set(value)) < _MIN_SECRET_DISTINCT_CHARACTERS:
            raise ValueError("is not random enough; use `openssl rand -hex 32`")
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if value:
            parse_storage_url(value)  # InvalidStorageUrl is a ValueError: pydantic reports it as this field's
        return value

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> GatewaySettings:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("heartbeat_s must be shorter than lease_s, or leases run out while work goes on")
        if self.orphan_grace_s < self.lease_s:
            raise ValueError("orphan_grace_s must be at least lease_s, or work in flight could lose its objects")
        return self

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def spool_dir(self) -> Path:
        """Where uploads are streamed while they arrive; one temporary directory per request, removed after."""
        return self.data_dir / "spool"

    @cached_property
    def address_policy(self) -> AddressPolicy:
        """Parsed once: it is checked on every request that names a URL."""
        def split(value: str) -> list[str]:
            return [item.strip() for item in value.split(",") if item.strip()]

        return AddressPolicy.from_config(split(self.fetch_allow_hosts), split(self.fetch_allow_networks))
