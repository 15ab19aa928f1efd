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
# Fine for the embedded demo and tests; production mode refuses to start with it.
INSECURE_SECRET_KEY = "insecure-development-secret-key"


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
        default="",
        description="Image store: a directory, or s3://bucket/prefix; default under data_dir.",
    )
    model_path: str = Field(
        default="", description="Checkpoint directory; default: the tiny checkpoint under data_dir."
    )
    max_batch_size: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Most jobs running at once in a worker's batch (interactive jobs may "
        "join a batch of bulk jobs beyond it, up to interactive_headroom more).",
    )
    interactive_headroom: int = Field(
        default=2,
        ge=0,
        le=64,
        description="Rows beyond max_batch_size that only interactive jobs may take, one "
        "per running bulk row, so an interactive job never waits for a bulk row to finish.",
    )
    prefill_group: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Bulk jobs join a running batch this many at a time (at most "
        "max_batch_size), prefilled in one pass; those with no free row yet wait "
        "prefilled and take rows as they free.",
    )
    max_batch_tokens: int = Field(
        default=65_536,
        ge=64,
        description="KV-cache budget of a worker's batch, in tokens: rows times the "
        "longest row (prompt + max_new_tokens). A job that alone exceeds it fails.",
    )
    max_batch_wait_ms: int = Field(
        default=20,
        ge=0,
        le=10_000,
        description="Longest an idle worker waits for company before starting a lone job (ms).",
    )
    drain_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On SIGTERM: how long running jobs may take to finish before their "
        "claims are handed back to the queue for another worker.",
    )
    stream_interval_s: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="How often a worker publishes the new text of jobs someone streams "
        "(GET /v1/jobs/{id}/events): text between two rounds goes out together.",
    )
    stream_messages_per_s: float = Field(
        default=50,
        gt=0,
        description="Most text messages a worker publishes per second, spread evenly over "
        "its watched jobs: with more watched running jobs than this × the interval, each "
        "is updated less often (50 watched jobs at 50/s: once a second each, five of them "
        "every 0.1 s), so thousands of readers cannot take a worker's time, nor the API's.",
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
    fair_share_window_s: int = Field(
        default=60,
        ge=1,
        description=(
            "How far back the claim counts the jobs each tenant started, to share workers "
            "between tenants by weight: a tenant that got less than its share in this "
            "window goes first. Longer remembers more; shorter forgives a past burst sooner."
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
    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Days after which the sweeper deletes a finished job's content, keeping "
        "a tombstone; unset keeps everything. A tenant's own retention overrides it.",
    )
    retention_chunk: int = Field(
        default=500,
        ge=1,
        description="Jobs the sweeper empties per transaction (retention) or per purge "
        "transaction of a whole tenant; at most 20 such chunks per sweep.",
    )
    blob_grace_s: int = Field(
        default=3600,
        ge=0,
        description="A released image is deleted only once no job names it and nothing "
        "stored it for this long; longer than any submission takes to commit.",
    )
    outbound_allowlist: str = Field(
        default="",
        description="Hosts/CIDRs callback and image URLs may reach despite the SSRF guard.",
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Total deadline of one attempt: connecting, sending, reading the answer.",
    )
    webhook_endpoint_concurrency: int = Field(
        default=4,
        ge=1,
        description="Most attempts in flight to one endpoint (tenant, scheme, host, port), "
        "counted across every ops process; more wait their turn.",
    )
    webhook_tenant_concurrency: int = Field(
        default=4,
        ge=1,
        description="Most attempts in flight for one tenant, across every ops process "
        "(each process has 8 delivery threads); more wait their turn.",
    )
    webhook_retry_schedule_s: str = Field(
        default="0,5,300,1800,7200,18000,36000,36000",
        description="Delay before each attempt (seconds); about a day in all.",
    )
    webhook_jitter: float = Field(
        default=0.1, ge=0, le=0.5, description="Each retry delay varies by ± this fraction."
    )
    webhook_retry_after_max_s: int = Field(
        default=3600,
        ge=0,
        description="Longest Retry-After (on 429, 502, 503, 504) a retry waits for; longer "
        "ones are cut to this.",
    )
    endpoint_disable_after_s: float = Field(
        default=5 * 86_400,
        gt=0,
        description="An endpoint failing every attempt for this long is disabled; its events "
        "are kept until the tenant enables it and redelivers them.",
    )
    secret_rotation_grace_s: int = Field(
        default=86_400, ge=0, description="How long a rotated-out webhook secret still signs."
    )
    presets_path: str = Field(
        default="", description="JSON file of policy presets; default: the bundled ones."
    )
    max_schema_bytes: int = Field(
        default=16_384, ge=64, description="Largest JSON schema a job may carry (bytes)."
    )
    cache_ttl_s: int = Field(
        default=86_400,
        ge=0,
        description="Identical requests within this many seconds reuse a result; 0 disables.",
    )
    max_batch_items: int = Field(default=10_000, ge=1, description="Items per POST /v1/batches.")
    max_batch_body_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="Largest POST /v1/batches body."
    )
    max_metadata_bytes: int = Field(
        default=4096, ge=0, description="Largest JSON metadata of one batch item."
    )
    image_fetch_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Total deadline of one image_url download."
    )
    image_fetch_concurrency: int = Field(
        default=8, ge=1, le=64, description="Parallel image_url downloads per batch request."
    )
    batch_download_budget_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        ge=1024,
        description=(
            "Bytes one POST /v1/batches may download for its image_url items in total; "
            "items not yet started when it is spent are rejected (batch_download_budget)."
        ),
    )
    batch_intake_deadline_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description=(
            "Seconds one POST /v1/batches may spend on the network (callback URL checks, "
            "image_url downloads); items not done by then are rejected (intake_deadline)."
        ),
    )
    long_poll_per_process: int = Field(
        default=1000,
        ge=0,
        description="Most GET ?wait= long-polls one API process holds at once (each is a "
        "greenlet, woken by the job feed); one over it answers at once with the job's "
        "current state.",
    )
    long_poll_per_tenant: int = Field(
        default=100,
        ge=0,
        description="Most ?wait= long-polls one tenant holds at once across all API "
        "processes; one over it answers at once with the job's current state.",
    )
    streams_per_tenant: int = Field(
        default=200,
        ge=0,
        description="Most event streams (GET …/events) one tenant holds open at once across "
        "all API processes; one over it is refused with 429.",
    )
    stream_heartbeat_s: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="Seconds between keep-alive comments on an idle event stream (proxies "
        "close connections idle for longer than their timeout, often 60 s).",
    )
    rate_limit: str = Field(
        default="6000/60",
        pattern=r"^\d+/\d+$",
        description="Requests per API key: 'N/S' = N per S seconds (0/… disables).",
    )
    batch_item_rate_limit: str = Field(
        default="60000/60",
        pattern=r"^\d+/\d+$",
        description=(
            "Batch items per API key, on top of the request rate: 'N/S' = N items per S "
            "seconds (0/… disables); a batch past it is refused whole with 429."
        ),
    )
    key_cache_s: float = Field(
        default=1.0,
        ge=0,
        description=(
            "How long an API process trusts a key it looked up (0: every request asks the "
            "database): a revocation takes effect within this time."
        ),
    )
    max_queued_jobs: int = Field(
        default=100_000, ge=0, description="Jobs one tenant may have waiting (0: no cap)."
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
    environment: Literal["development", "production"] = Field(
        default="development",
        description="'production' refuses to start with default secrets.",
    )
    secret_key: str = Field(
        default=INSECURE_SECRET_KEY,
        description="Signs the console's session cookies and CSRF tokens.",
    )

    max_image_frames: int = Field(
        default=1000,
        ge=1,
        description="Most frames an animated GIF/WebP/PNG may have (only the first is used).",
    )

    worker_metrics_port: int = Field(
        default=9101,
        ge=0,
        le=65535,
        description=(
            "Port `sightline worker` serves its children's Prometheus metrics on "
            "(at worker_metrics_host); 0 turns the endpoint off."
        ),
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the worker metrics listen on; 0.0.0.0 where Prometheus is remote.",
    )
    metrics_token: str = Field(
        default="",
        description=(
            "Bearer token the API's /metrics requires; empty: /metrics is open in "
            "development and off in production."
        ),
    )
    metrics_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long an API process reuses the database and broker figures of /metrics.",
    )
    readiness_cache_s: float = Field(
        default=2.0, ge=0, description="How long an API process reuses its /readyz verdict."
    )

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
        if self.environment == "production" and self.secret_key == INSECURE_SECRET_KEY:
            raise ValueError("SIGHTLINE_SECRET_KEY must be set to a secret value in production")
        schedule = self.retry_schedule
        if not schedule or any(delay < 0 for delay in schedule):
            raise ValueError("webhook_retry_schedule_s needs one or more delays >= 0")
        return self

    @property
    def retry_schedule(self) -> list[float]:
        """``webhook_retry_schedule_s`` as numbers: entry *n* is the delay before attempt
        *n + 1*; its length is the number of attempts."""
        return [float(part) for part in self.webhook_retry_schedule_s.split(",") if part.strip()]

    @property
    def prefill_rows(self) -> int:
        """``prefill_group`` as a worker uses it: never more than ``max_batch_size``."""
        return min(self.prefill_group, self.max_batch_size)

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")
