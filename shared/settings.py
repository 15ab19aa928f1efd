"""Process settings, read from ``SIGHTLINE_*`` environment variables.

Every process builds one :class:`Settings` at start-up (``Settings()``) and passes it
down; nothing reads the environment at import time. Defaults are the embedded set-up
the demo runs on: a SQLite file, a blob directory and the tiny checkpoint under
``data_dir``, and the demo's own Redis on port 6399.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_REDIS_PORT = 6399


class Settings(BaseSettings):
    """All knobs of sightline. Sizes are bytes, durations carry their unit in the name."""

    model_config = SettingsConfigDict(env_prefix="SIGHTLINE_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".sightline"),
        description="Root of the embedded defaults (SQLite file, blobs, tiny checkpoint).",
    )
    database_url: str = Field(
        default="", description="SQLAlchemy URL; default: SQLite file under data_dir."
    )
    broker_url: str = Field(
        default=f"redis://127.0.0.1:{DEMO_REDIS_PORT}/0",
        description="Celery broker (Redis); default: the demo's own Redis.",
    )
    blob_url: str = Field(
        default="", description="Image store: directory path or fsspec URL; default under data_dir."
    )
    model_path: str = Field(
        default="", description="Checkpoint directory; default: the tiny checkpoint under data_dir."
    )
    max_batch_size: int = Field(default=8, ge=1, le=256, description="Jobs per forward pass.")
    max_batch_wait_ms: int = Field(
        default=20, ge=0, le=10_000, description="Longest wait to fill a batch (ms)."
    )
    max_image_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1024, description="Largest accepted image upload (bytes)."
    )
    max_image_side: int = Field(
        default=1024, ge=16, description="Longest image side kept; larger images are scaled down."
    )
    max_image_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Largest decoded width*height accepted (decompression-bomb guard).",
    )
    max_prompt_chars: int = Field(default=8000, ge=1, description="Longest prompt (characters).")
    default_max_new_tokens: int = Field(default=64, ge=1)
    max_new_tokens_limit: int = Field(default=1024, ge=1, description="Ceiling callers may ask.")
    job_lease_s: int = Field(
        default=60,
        ge=2,
        description=(
            "Seconds a claim stays reserved without renewal; the worker renews it every third "
            "of this while a batch runs, so it bounds crash detection, not batch length."
        ),
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Claims a job gets before a lost worker fails it."
    )
    default_timeout_s: int = Field(
        default=86_400, ge=1, description="Seconds a job may stay queued before it expires."
    )
    max_timeout_s: int = Field(default=7 * 86_400, ge=1, description="Ceiling of timeout_s.")
    requeue_after_s: int = Field(
        default=30,
        ge=1,
        description="Seconds a queued job may go without a wake-up before the sweeper resends.",
    )
    sweep_interval_s: float = Field(default=5.0, gt=0, description="How often beat sweeps.")
    sweep_batch: int = Field(
        default=1000, ge=1, description="Most wake-ups the sweeper sends per queue per sweep."
    )
    fault_injection: bool = Field(
        default=False,
        description="Tests only: [[oom]], [[crash]], [[slow]] prompts misbehave (worker.faults).",
    )
    devices: str = Field(
        default="", description="Worker devices, e.g. '0,1', 'cpu', 'cpu,cpu'; default: all GPUs."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Model dtype; 'auto' is bfloat16 on CUDA, float32 on CPU."
    )
    log_level: str = Field(default="INFO")

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        data = self.data_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{(data / 'sightline.db').resolve()}"
        if not self.blob_url:
            self.blob_url = str((data / "blobs").resolve())
        if not self.model_path:
            self.model_path = str((data / "models" / "tiny-glm4v").resolve())
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("default_max_new_tokens exceeds max_new_tokens_limit")
        return self

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")
