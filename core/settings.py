"""Settings: one pydantic-settings class, read from FRAUDSERVE_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class OfflineLayout:
    """The offline store's file layout, shared by the backfill (writer) and `feature_repo/` (Feast's reader)."""

    root: Path
    transactions_name: str = "transactions"
    labels_name: str = "labels"

    def file(self, name: str) -> Path:
        return self.root / f"{name}.parquet"

    @property
    def transactions_file(self) -> Path:
        return self.file(self.transactions_name)

    @property
    def labels_file(self) -> Path:
        return self.file(self.labels_name)

    @property
    def work_dir(self) -> Path:
        return self.root / ".work"

    @property
    def quarantine_file(self) -> Path:
        return self.root.parent / "quarantine" / "rejected_events.parquet"


class RedisType(StrEnum):
    redis = "redis"
    redis_cluster = "redis_cluster"


class FeatureSourceKind(StrEnum):
    redis = "redis"
    feast = "feast"


class AccessLog(StrEnum):
    all = "all"
    errors = "errors"


class ReasonsMethod(StrEnum):
    path = "path"
    shap = "shap"


class OfflineEngine(StrEnum):
    embedded = "embedded"
    ray = "ray"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _default_feature_repo() -> Path:
    return PROJECT_ROOT / "feature_repo"


class Settings(BaseSettings):
    """Where a run keeps its data and which online store it talks to."""

    model_config = SettingsConfigDict(env_prefix="FRAUDSERVE_", extra="ignore")

    redis: str | None = Field(
        default=None,
        description="Online store in Feast's Redis connection-string form (host:port[,db=N][,password=..]"
        "[,ssl=true]; several host:port for a cluster). Unset: the CLI runs its own redis-server under home.",
    )
    redis_type: RedisType = RedisType.redis
    home: Path = Field(default=Path(".fraudserve"), description="Offline store, registries, keys and logs.")
    feature_repo: Path = Field(default_factory=_default_feature_repo)
    redis_server_bin: str = "redis-server"
    backfill_threads: int | None = Field(default=None, ge=1, description="DuckDB threads; default all cores.")
    offline_engine: OfflineEngine = Field(
        default=OfflineEngine.embedded,
        description="Where the backfill computes the window features: embedded (DuckDB in this process) or ray "
        "(the same SQL per hash shard of each entity, on Ray: pip install 'fraudserve[ray]').",
    )
    ray_address: str | None = Field(
        default=None,
        description="The ray engine's Ray: unset starts a local one for the backfill; 'auto' or 'ray://host:10001' "
        "joins a running cluster (FRAUDSERVE_HOME then on storage every node sees).",
    )
    ray_shards: int | None = Field(default=None, ge=1, description="Ray engine: hash shards per entity (2 per CPU).")
    ray_object_store_mb: int = Field(
        default=2048, ge=256, description="Ray engine: the local Ray's object store (spills to disk beyond it)."
    )

    stream_lateness_seconds: float = Field(
        default=300, ge=0, description="Events this late (event time) are still counted exactly online."
    )

    stream_claim_idle_ms: int = Field(
        default=15_000, ge=100, description="A worker takes over entries another worker left unacknowledged this long."
    )

    stream_read_batch: int = Field(
        default=500,
        ge=1,
        description="Events a worker reads at a time while it keeps up (freshness is one read's work).",
    )
    stream_max_read_batch: int = Field(
        default=8000,
        ge=1,
        description="The most events per read while a worker catches up a backlog (reads grow 4x per full read up to "
        "this; at or below FRAUDSERVE_STREAM_READ_BATCH: a fixed read size).",
    )

    stream_partitions: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Redis streams the events are spread over (transactions by card, labels by transaction). On a "
        "Redis Cluster, more than one spreads the stream's own load over the nodes. Producers and workers must use "
        "the same number; drain the stream before changing it.",
    )

    stream_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Serve each worker's Prometheus metrics from this port up (0: off)."
    )
    stream_metrics_host: str = Field(
        default="127.0.0.1", description="Address the workers' metrics listen on (0.0.0.0 for a scraper elsewhere)."
    )

    # --- Kafka (the stream's production transport; Redis Streams when neither this nor a KafkaSource is declared)
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Kafka brokers, host:port[,host:port]: the built-in events then go through the kafka_*_topic "
        "topics. Unset: the Feast repo's KafkaSource (servers and topic) if it declares one, else Redis Streams.",
    )
    kafka_transactions_topic: str = Field(default="fraudserve.transactions", description="Transaction events.")
    kafka_labels_topic: str = Field(default="fraudserve.labels", description="Label events.")
    kafka_dead_letter_topic: str = Field(
        default="fraudserve.dead-letter", description="Invalid events, with the row, the field and the reason."
    )
    kafka_group: str = Field(default="fraudserve-features", description="The workers' consumer group.")
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        description="A worker silent this long is dropped from the group and its partitions move to the others.",
    )
    kafka_group_protocol: Literal["classic", "consumer"] = Field(
        default="classic",
        description="The consumer group protocol: classic, or consumer (KIP-848, Kafka 4.x brokers: the brokers "
        "assign partitions, and the group's session timeout is set on them, within their "
        "group.consumer.min/max.session.timeout.ms).",
    )
    kafka_security_protocol: str | None = Field(
        default=None, description="librdkafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(default=None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...")
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: str | None = Field(default=None, description="SASL password (never from the Feast repo).")
    kafka_ssl_ca_location: str | None = Field(default=None, description="CA certificate file (PEM) for TLS.")
    kafka_ssl_certificate_location: str | None = Field(default=None, description="Client certificate (PEM), mTLS.")
    kafka_ssl_key_location: str | None = Field(default=None, description="Client private key (PEM), mTLS.")

    # --- the inference API
    model_name: str = Field(default="fraud", description="Registered model that /v1/fraud/score serves.")
    max_batch: int = Field(default=256, ge=1, le=10_000, description="Most items in one score:batch request.")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Larger request bodies get 413.")
    max_package_bytes: int = Field(
        default=64 * 1_048_576,
        ge=1024,
        description="Largest model package registered over HTTP: the .tar.gz body, and the files it expands to.",
    )
    request_budget_ms: int = Field(default=250, ge=1, description="Feature-fetch time budget per request.")
    model_poll_seconds: float = Field(default=2.0, gt=0, description="How often the API looks for a new version.")
    canary_percent: float = Field(default=0.0, ge=0, le=100, description="Share of requests scored by candidate.")
    shadow_candidate: bool = Field(default=False, description="Also score with candidate; log, never return.")
    device: Device = Field(default=Device.auto, description="Where models run: auto, cpu or cuda.")
    model_engine: str = Field(
        default="auto",
        pattern="^(native|compiled|auto)$",
        description="How models predict on the CPU: compiled (the model compiled to C and cached, several times "
        "faster, same scores; native with a warning if it cannot be built), native (the framework's library) or "
        "auto (compiled where a C compiler or an earlier build is found, else native).",
    )
    feature_source: FeatureSourceKind = Field(
        default=FeatureSourceKind.redis,
        description="How the API reads online features: redis (Feast's Redis layout, one pipelined round trip) "
        "or feast (Feast's SDK, get_online_features_async).",
    )
    metrics_public: bool = Field(default=True, description="GET /metrics without an API key.")
    health_public: bool = Field(
        default=True, description="GET /v2/health/live and /ready without an API key (false: an admin key)."
    )
    access_log: AccessLog = Field(
        default=AccessLog.errors,
        description="API access log: every request (all), or only errors and requests slower than the request "
        "budget (errors).",
    )
    top_reasons: int = Field(default=3, ge=0, le=50, description="Reasons (feature contributions) per score.")
    reasons_method: ReasonsMethod = Field(
        default=ReasonsMethod.path,
        description="How reasons are computed: path (decision-path contributions, about a prediction's cost) or "
        "shap (the framework's exact TreeSHAP, tens of times slower per row).",
    )
    batch_max_size: int = Field(
        default=64, ge=1, le=4096, description="Dynamic batching: most single score requests merged into one call."
    )
    batch_max_waiting: int = Field(
        default=2048,
        ge=1,
        description="Most single score requests waiting for a batch; more are refused with 503 overloaded and "
        "Retry-After rather than queued without bound.",
    )
    batch_max_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Dynamic batching: how long a batch waits for more requests. 0: none; requests that arrive "
        "while a batch is being scored still share the next one.",
    )
    batch_max_items_in_flight: int = Field(
        default=512,
        ge=1,
        description="score:batch admission: most batch items one API process scores at once (a batch larger than "
        "this still runs alone); a batch that does not fit is refused with 503 overloaded and Retry-After before "
        "any work, rather than queued until its feature fetch runs out of budget.",
    )

    score_log_sample: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of served scores written to the score log (a feature service's Feast logging_config "
        "sample rate takes precedence); 0 turns the log off.",
    )
    score_log_flush_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="How often each API process writes its logged scores to a file."
    )
    score_log_queue_rows: int = Field(
        default=200_000, ge=1, description="Most scores waiting to be written; beyond, scores are dropped and counted."
    )
    monitor_refresh_seconds: float = Field(
        default=300.0, gt=0, description="How often the API recomputes its drift and quality gauges from the log."
    )

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def offline(self) -> OfflineLayout:
        return OfflineLayout(self.home_dir / "offline")

    @property
    def keys_file(self) -> Path:
        return self.home_dir / "keys" / "api_keys.json"

    @property
    def models_dir(self) -> Path:
        return self.home_dir / "models"

    @property
    def packages_dir(self) -> Path:
        return self.home_dir / "packages"

    @property
    def score_log_dir(self) -> Path:
        return self.home_dir / "logs" / "scores"

    @property
    def embedded_redis_dir(self) -> Path:
        return self.home_dir / "redis"

    def feast_environment(self, connection: str) -> dict[str, str]:
        """The variables `feature_repo/feature_store.yaml` expands, for the given online-store connection."""
        return {
            "FRAUDSERVE_REDIS": connection,
            "FRAUDSERVE_REDIS_TYPE": self.redis_type.value,
            "FRAUDSERVE_HOME": str(self.home_dir),
        }

    def export_feast_environment(self, connection: str) -> None:
        os.environ.update(self.feast_environment(connection))
