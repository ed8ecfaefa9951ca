"""The gateway's settings: environment variables (REMOVAI_GATEWAY_*) or flags, validated at start."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.netguard import AddressPolicy

MIB = 1024 * 1024


class GatewaySettings(BaseSettings):
    """Frozen once built; `python -m gateway --help` lists each as a flag."""

    model_config = SettingsConfigDict(
        env_prefix="REMOVAI_GATEWAY_", frozen=True, extra="forbid", cli_kebab_case=True, cli_prog_name="gateway"
    )

    host: str = Field("127.0.0.1", description="address the HTTP server binds")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port; 0 picks a free one")
    public_url: str = Field("", description="base URL clients reach the gateway at; default http://host:port")
    inference_url: str = Field("127.0.0.1:50051", description="the gRPC inference service, host:port")
    data_dir: Path = Field(Path("var"), description="SQLite database, output files, URL-signing secret")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite in data_dir; postgresql+asyncpg://...")
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
    max_concurrent_uploads_per_account: int = Field(
        4, gt=0, description="file and batch uploads one account may have in flight on this replica; more get 429"
    )
    max_queued_batch_images_per_account: int = Field(
        100, gt=0, description="batch images one account may have waiting ('processing'), all replicas; more get 429"
    )
    upload_retry_after_s: int = Field(10, ge=1, description="Retry-After sent with the 429s of the two caps above")
    batch_concurrency: int = Field(2, gt=0, description="images of batches processed at once by this replica")
    inference_timeout_s: float = Field(120.0, gt=0, description="deadline for one image's inference call")
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
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503 when inference is unavailable")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(False, description="log one JSON object per line")

    @field_validator("inference_url")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError("must be host:port")
        return value

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
