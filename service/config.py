"""One `Settings` for the API, the workers and the CLI, read from the environment.

DATABASE_URL, REDIS_URL and BITALLOC_DATA keep their plain names; every other
setting is `BITALLOC_<NAME>` (e.g. BITALLOC_PORT=9000)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1 << 30
MiB = 1 << 20


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BITALLOC_", extra="ignore", frozen=True,
                                      populate_by_name=True)

    environment: Literal["local", "production"] = "local"
    data_dir: Path = Field(Path("data"), validation_alias=AliasChoices("BITALLOC_DATA"))
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL"))
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # API processes `bitalloc serve` runs on one port (one for an in-memory database);
    # the per-key rate limit is split between them, so a key never gets more in all
    api_workers: int = Field(1, ge=1, le=64)
    # a line per request on stdout (requests are counted by route and status in
    # /metrics either way): off by default, it took ~8% of a busy API process
    access_log: bool = False
    queue: str = Field("bitalloc", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")

    # uploads
    max_upload_bytes: int = Field(4 * GiB, ge=1)
    max_extracted_bytes: int = Field(16 * GiB, ge=1)
    max_archive_members: int = Field(10_000, ge=1)
    max_compression_ratio: float = Field(200.0, ge=1)

    # jobs
    worker_concurrency: int = Field(1, ge=1, le=64)
    job_soft_time_limit_s: int = Field(6 * 3600, ge=10)
    job_time_limit_s: int = Field(6 * 3600 + 120, ge=20)
    max_attempts: int = Field(3, ge=1, le=20)
    max_transient_retries: int = Field(5, ge=0, le=50)
    progress_interval_s: float = Field(1.0, gt=0, le=60)
    heartbeat_interval_s: float = Field(10.0, gt=0)
    heartbeat_timeout_s: float = Field(60.0, gt=0)
    reaper_interval_s: float = Field(15.0, gt=0)
    requeue_queued_after_s: float = Field(3600.0, gt=0)

    # one job, many workers (service.worker.shards): the sensitivity stage's probe shards
    # go out through the broker and every worker may take them. "auto": on with Redis
    # (workers may be on other machines), off with the filesystem broker (one machine).
    shards: Literal["auto", "on", "off"] = "auto"
    # the queue shard tasks are sent to (default "<queue>.shards"); `bitalloc worker`
    # takes both unless told otherwise (--queues, --shards-only)
    shard_queue: str = Field("", max_length=100, pattern=r"^[A-Za-z0-9_.-]*$")
    shard_poll_s: float = Field(0.2, gt=0, le=10)  # how often a job looks at its round's shards
    # a shard message not taken within this is dropped by the worker that gets it (the
    # job's own worker runs every shard nobody took, so nothing waits on it)
    shard_message_ttl_s: float = Field(600.0, gt=0)

    # abuse limits: requests per second per API key (0: off), jobs queued or running
    # per tenant (0: no cap), JSON request bodies (uploads have their own limit)
    rate_limit_per_s: float = Field(50.0, ge=0)
    rate_limit_burst: int = Field(100, ge=1)
    max_active_jobs_per_tenant: int = Field(20, ge=0)
    max_json_body_bytes: int = Field(1 * MiB, ge=1024)
    # how long an API process trusts a key it has checked (0: look it up every time);
    # a key revoked by another process stops working within this time
    auth_cache_ttl_s: float = Field(5.0, ge=0, le=300)
    # browser origins allowed to call the API (CORS); empty: no CORS headers at all
    cors_origins: list[str] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.job_time_limit_s <= self.job_soft_time_limit_s:
            raise ValueError("job_time_limit_s must exceed job_soft_time_limit_s, so the job "
                             "can record its own time-out before it is killed")
        if self.heartbeat_timeout_s < 3 * self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must be at least 3 heartbeat intervals, "
                             "or live jobs would be reaped")
        if self.db_url.split(":", 1)[0] not in ("sqlite", "postgresql+psycopg"):
            raise ValueError(f"DATABASE_URL must be sqlite:/// or postgresql://, "
                             f"got {self.db_url.split(':', 1)[0]!r}")
        if self.environment == "production" and self.database_url is None:
            raise ValueError("production needs DATABASE_URL (PostgreSQL); "
                             "SQLite is for one machine")
        return self

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def db_url(self) -> str:
        """SQLAlchemy URL: `postgres://` and `postgresql://` are driven by psycopg 3."""
        url = self.database_url or f"sqlite:///{self.data_path / 'bitalloc.db'}"
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url

    @property
    def shard_queue_name(self) -> str:
        return self.shard_queue or f"{self.queue}.shards"

    @property
    def sharding(self) -> bool:
        """Whether jobs send their shards to other workers."""
        return self.shards == "on" or (self.shards == "auto" and bool(self.redis_url))

    @property
    def broker_url(self) -> str:
        return self.redis_url or "filesystem://localhost//"

    @property
    def key_file(self) -> Path:
        """Where `bitalloc serve` keeps the local key it prints on every start."""
        return self.data_path / "local-api-key"


@lru_cache
def get_settings() -> Settings:
    return Settings()
