"""The inference service's settings: environment variables (REMOVAI_INFERENCE_*) or flags, validated at start."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference_service.options import PngEncoder


class InferenceSettings(BaseSettings):
    """Frozen once built; `python -m inference_service --help` lists each as a flag."""

    model_config = SettingsConfigDict(
        env_prefix="REMOVAI_INFERENCE_", frozen=True, extra="forbid", cli_kebab_case=True, cli_prog_name="inference_service"
    )

    host: str = Field("127.0.0.1", description="address the gRPC server binds")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    triton_url: str = Field(
        "127.0.0.1:8001",
        description="Triton's gRPC endpoint, host:port, or a comma-separated list of them: calls go round robin "
        "to the ready ones, and one a Triton drops is retried on another",
    )
    default_model: str = Field("isnet", description="model used when a request names none")
    max_image_bytes: int = Field(64 * 1024 * 1024, gt=0, description="largest accepted upload")
    max_pixels: int = Field(50_000_000, gt=0, description="decompression-bomb guard: width x height limit")
    pipeline_workers: int = Field(
        default_factory=lambda: len(os.sched_getaffinity(0)) or 2, gt=0,
        description="threads for decode/resize/encode (default: the cores this process may run on); Pillow, "
        "numpy and ISA-L release the GIL",
    )
    postprocess_at_once: int = Field(
        0, ge=0,
        description="requests that may hold an image's full-size pixels after inference (full decode, render, "
        "encode) at once; the others wait their turn. 0: pipeline_workers. Each such request holds several "
        "full-size copies (about 300 MB at 12 MP); 1 with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (as tools.stack "
        "runs it) measured about 250 MB less at 12 MP concurrency 4 on 2 cores, and no slower; 1 without it was "
        "7% slower",
    )
    triton_timeout_s: float = Field(60.0, gt=0, description="Triton deadline when the caller sets none")
    # Triton is the bottleneck long before 32 calls on a CPU host; over the cap callers get RESOURCE_EXHAUSTED
    # at once (the gateway answers 503 with Retry-After). What each call decodes is bounded by max_pixels, so
    # this also bounds the decoded pixels in memory (docs/operations.md, "Memory limits"); the bytes received are bounded
    # by max_buffered_bytes. Health checks, reflection and ListModels are never counted against it.
    max_concurrent_rpcs: int = Field(
        32, gt=0, description="RemoveBackground calls served at once; more are refused at once"
    )
    # Without it, 32 calls could each hold an image and a background of max_image_bytes: 4 GiB at the defaults.
    max_buffered_bytes: int = Field(
        512 * 1024 * 1024, gt=0,
        description="image and background bytes all calls may hold at once (from arrival until the cut-out is "
        "made); a call that would go over is refused at once like one over max_concurrent_rpcs; at least 2 x "
        "max_image_bytes",
    )
    refusal_drain_s: float = Field(
        1.0, gt=0,
        description="how long a refused call's remaining stream is read (and dropped) before its status is sent, "
        "so a caller still writing gets RESOURCE_EXHAUSTED; a slower caller is cut off",
    )
    stream_idle_timeout_s: float = Field(
        10.0, gt=0, description="a request stream with no message for this long is ended with DEADLINE_EXCEEDED"
    )
    default_deadline_s: float = Field(
        120.0, gt=0, description="deadline for a call whose caller sets none (receiving the stream included)"
    )
    health_interval_s: float = Field(1.0, gt=0, description="how often Triton's readiness is checked")
    model_idle_unload_s: float = Field(
        600.0, ge=0,
        description="a model other than default_model that no call has used for this long is unloaded from "
        "Triton (its stub process and memory with it: about 1 GB for ISNet), and loaded again by the next request "
        "naming it; 0 keeps every loaded model loaded",
    )
    png_encoder: PngEncoder = Field(
        PngEncoder.ISAL,
        description="PNG writer: 'isal' (Up filter + ISA-L deflate at png_isal_level: 5-8x faster, ~1.15x the bytes "
        "of Pillow's level 6) or 'pillow' (adaptive filters + zlib at png_compress_level: smaller, slower)",
    )
    png_compress_level: int = Field(
        3, ge=0, le=9, description="zlib level of png_encoder=pillow: higher is smaller, slower"
    )
    # Measured (`python -m inference_service.profile png`): ISA-L's level 1 is both faster and no bigger than its levels 2 and 3 on
    # photos (12 MP: 0.42 s and 1.17x Pillow level 6's bytes, against 1.8 s and 1.19x at level 3).
    png_isal_level: int = Field(1, ge=0, le=3, description="ISA-L deflate level of png_encoder=isal (0..3)")
    metrics_port: int = Field(9101, ge=-1, le=65535, description="Prometheus /metrics; 0 picks a port, -1 disables")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(False, description="log one JSON object per line")

    @field_validator("triton_url")
    @classmethod
    def _hosts_and_ports(cls, value: str) -> str:
        for url in value.split(","):
            host, sep, port = url.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{url.strip()!r} is not host:port; write host:port[,host:port...]")
        return value

    @model_validator(mode="after")
    def _one_call_fits_the_budget(self) -> InferenceSettings:
        # Below it, a call with the largest image and background would be refused as busy for ever.
        if self.max_buffered_bytes < 2 * self.max_image_bytes:
            raise ValueError("max_buffered_bytes must be at least 2 x max_image_bytes (an image and its background)")
        return self

    @property
    def postprocess_slots(self) -> int:
        """postprocess_at_once, its 0 resolved."""
        return self.postprocess_at_once or self.pipeline_workers

    @property
    def triton_urls(self) -> list[str]:
        """Each Triton replica's host:port, in the order given."""
        return [url.strip() for url in self.triton_url.split(",")]
