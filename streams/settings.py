"""Settings: read once, from the environment and an optional TOML file, frozen, passed down.

Precedence: explicit overrides (CLI flags) > environment variables > the config file
(``EHRSTREAM_CONFIG`` or ``--config``) > defaults. Environment variables use the
``EHRSTREAM_`` prefix, except the two every deployment sets: ``KAFKA_BOOTSTRAP_SERVERS``
and ``CLICKHOUSE_URL``. Leaving either empty means the embedded default (Tansu, chdb).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from agents.config import DEFAULT_MODELS, TaskSettings, TopicSettings, default_tasks
from streams.errors import ConfigError
from streams.runtime.runfiles import write_private_file
from streams.secret_files import SECRET_FILE_VARIABLES, SecretFileSource

if TYPE_CHECKING:
    from agents.runners.onnx_cache import OnnxCache

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "password", "secret", "default", "clickhouse"}


class ReviewerAccount(BaseModel):
    """A reviewer who may sign in to the review app. ``password_hash`` comes from ``ehrstream reviewer hash``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    password_hash: SecretStr


class ReviewSettings(BaseModel):
    """The review app (``ehrstream review-ui``, also started by ``ehrstream up``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    reviewers: list[ReviewerAccount] = Field(default_factory=list)
    #: a claimed task returns to the queue when its lease is not renewed within this time
    lease_seconds: float = Field(default=600.0, gt=0)
    session_hours: float = Field(default=12.0, gt=0)
    #: set when the app is served over HTTPS (directly or behind a proxy): cookies get the Secure flag
    cookie_secure: bool = False
    #: failed sign-ins per reviewer id within ``lockout_seconds`` before further tries are refused
    max_failed_logins: int = Field(default=5, ge=1)
    lockout_seconds: float = Field(default=300.0, gt=0)
    #: the share of notes the workers send to review as an audit, chosen at random (by a hash of the note id): the
    #: reviewer checks every accepted item, which measures the live precision of auto-accepted output
    audit_share: float = Field(default=0.02, ge=0.0, le=1.0)
    #: the auto-accept precision the thresholds are meant to give; ``review-health`` warns (and the
    #: ``ehrstream_auto_precision_low`` gauge is 1) when the audited estimate's lower bound falls below it
    target_precision: float = Field(default=0.9, gt=0.0, le=1.0)
    #: audited items a task needs before its precision estimate is judged against the target
    min_audit_items: int = Field(default=30, ge=1)
    #: the queue serves tasks by priority (expected corrections); this share of claims takes a random task instead,
    #: so what reviewers see stays a fair sample of the queue
    random_share: float = Field(default=0.1, ge=0.0, le=1.0)
    #: review tasks per hour, per task, the reviewers can clear; 0 = no budget. With a budget, a task's queue keeps at
    #: most ``budget_per_hour * budget_horizon_hours`` tasks (audits always kept); the least valuable beyond that are
    #: released: their flagged items stay as the model gave them, marked ``over_budget`` (status ``over_budget``)
    budget_per_hour: int = Field(default=0, ge=0)
    budget_horizon_hours: float = Field(default=24.0, gt=0)
    #: when the audited precision of the serving model version is low, raise its auto-accept threshold (in the model
    #: registry, which workers follow without a restart): to where the judged items reach the target, else by
    #: ``tighten_step`` (``streams.review.tighten``)
    tighten_thresholds: bool = False
    tighten_step: float = Field(default=0.05, gt=0.0, le=0.5)

    @field_validator("reviewers")
    @classmethod
    def _unique_reviewers(cls, reviewers: list[ReviewerAccount]) -> list[ReviewerAccount]:
        ids = [r.id for r in reviewers]
        if len(set(ids)) != len(ids):
            raise ValueError("reviewer ids must be unique")
        return reviewers


class KafkaSecurity(BaseModel):
    """How clients authenticate to a Kafka cluster: TLS and SASL (PLAIN, SCRAM). Applies to every client ehrstream
    opens (Faust/aiokafka in the worker, kafka-python everywhere else); the embedded Tansu broker is plain loopback.

    Environment: ``EHRSTREAM_KAFKA__SECURITY_PROTOCOL=SASL_SSL``, ``EHRSTREAM_KAFKA__SASL_USERNAME=...``,
    ``EHRSTREAM_KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka_password`` and so on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    #: CA bundle that signed the brokers' certificates; empty = the system's trust store
    ssl_cafile: Path | None = None
    #: client certificate and key, for brokers that require mutual TLS
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr = SecretStr("")
    ssl_check_hostname: bool = True

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.uses_sasl and not (self.sasl_username and self.sasl_password.get_secret_value()):
            raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_username and kafka.sasl_password")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("kafka.ssl_certfile and kafka.ssl_keyfile go together")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"kafka.{name}: no such file: {path}")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EHRSTREAM_",
        env_nested_delimiter="__",
        populate_by_name=True,
        frozen=True,
        extra="forbid",
    )

    #: the TOML file these settings were read from (set by :meth:`load`; None: environment and defaults only)
    config_file: Path | None = None
    environment: Literal["development", "production"] = "development"
    #: comma-separated host:port list; empty = start the embedded Tansu broker
    kafka_bootstrap_servers: str = Field(
        default="", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "EHRSTREAM_KAFKA_BOOTSTRAP_SERVERS")
    )
    #: clickhouse-connect URL (http[s]://user:password@host:port); empty = embedded chdb
    clickhouse_url: SecretStr = Field(default=SecretStr(""), validation_alias=AliasChoices("CLICKHOUSE_URL", "EHRSTREAM_CLICKHOUSE_URL"))
    #: credentials for the ClickHouse server; they win over any in CLICKHOUSE_URL. Each secret may also come from a
    #: file named by ``<VARIABLE>_FILE`` (``CLICKHOUSE_PASSWORD_FILE=/run/secrets/clickhouse_password``)
    clickhouse_user: str = Field(default="", validation_alias=AliasChoices("CLICKHOUSE_USER", "EHRSTREAM_CLICKHOUSE_USER"))
    clickhouse_password: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("CLICKHOUSE_PASSWORD", "EHRSTREAM_CLICKHOUSE_PASSWORD")
    )
    clickhouse_database: str = Field(default="ehrstream", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    kafka: KafkaSecurity = KafkaSecurity()
    #: Confluent Schema Registry (``http[s]://host:8081``); empty = none. With one, every codec also reads the
    #: Confluent wire format and the project's schemas are registered under ``<topic>-value``
    schema_registry_url: str = Field(default="", validation_alias=AliasChoices("SCHEMA_REGISTRY_URL", "EHRSTREAM_SCHEMA_REGISTRY_URL"))
    schema_registry_user: str = ""
    schema_registry_password: SecretStr = SecretStr("")
    #: what ehrstream writes: Avro single-object encoding (no registry needed) or the Confluent wire format
    avro_wire: Literal["single-object", "confluent"] = "single-object"
    #: embedded state: chdb's data directory and the running stack's endpoint file
    data_dir: Path = Path(".ehrstream")
    #: where the embedded broker keeps topics, records and committed offsets: ``disk`` (``<data_dir>/broker``, fsynced:
    #: a crash of the whole stack loses nothing a publisher was told was stored) or ``memory`` (gone when it stops)
    embedded_storage: Literal["disk", "memory"] = "disk"
    #: how long the embedded ``disk`` broker keeps a record batch once every consumer group committing on its partition
    #: has committed past it (a partition no group commits on keeps everything; ClickHouse is the record): Tansu lists a
    #: partition's every batch on each fetch, so its CPU per fetch grows with what it keeps
    #: (:mod:`streams.runtime.object_retention`). Kafka's default retention, 7 days, is 604800
    embedded_retention_seconds: float = Field(default=60.0, gt=0)

    topics: TopicSettings = TopicSettings()
    topic_partitions: int = Field(default=4, ge=1)
    worker_group: str = "ehrstream-worker"
    sink_group: str = "ehrstream-sink"

    tasks: list[TaskSettings] = Field(default_factory=default_tasks)
    #: the ICD-10-CM search index of tasks with ``coding = "icd10cm"`` (``ehrstream codes build`` writes it)
    icd10cm_index: Path = DEFAULT_MODELS / "icd10cm"

    #: a micro-batch of the extraction agent closes when it holds ``batch_max_notes``, when no note came for
    #: ``batch_linger_seconds`` (what was queued is in) or when its first note has waited ``batch_max_seconds``
    batch_max_notes: int = Field(default=64, ge=1)
    batch_max_seconds: float = Field(default=0.1, gt=0)
    batch_linger_seconds: float = Field(default=0.01, gt=0)
    #: a forward batch holds at most this many windows, and at most ``inference_batch_tokens`` padded tokens (unset:
    #: 2048 on a CPU, no token bound on a GPU; 0: no token bound), cut from the batch's windows sorted by length
    inference_batch_size: int = Field(default=32, ge=1)
    inference_batch_tokens: int | None = Field(default=None, ge=0)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    #: records larger than this go to the dead-letter topic as ``oversized``
    max_note_bytes: int = Field(default=500_000, ge=1024)
    #: the largest record ehrstream produces; keep it at or under the broker's message.max.bytes
    max_record_bytes: int = Field(default=1_000_000, ge=4096)

    #: how long every producer (the worker's, publish, the sink's dead letters) waits to fill a batch, and how large a
    #: batch may grow: fewer, larger batches are fewer requests, and on the durable embedded broker fewer objects
    producer_linger_seconds: float = Field(default=0.01, ge=0, le=1)
    producer_batch_bytes: int = Field(default=512 * 1024, ge=16 * 1024)

    #: the longest a consumer's fetch waits on the broker for data: Kafka answers as soon as data arrives, while the
    #: embedded broker on durable storage answers at the end of the wait, so this is its delivery latency
    consumer_fetch_max_wait_seconds: float = Field(default=0.5, gt=0, le=5)

    #: Faust's rebalance timeout; Tansu holds a group's first join for about half of it
    rebalance_timeout_s: float = Field(default=60.0, gt=0)
    session_timeout_s: float = Field(default=60.0, gt=0)

    sink_batch_rows: int = Field(default=5000, ge=1)
    #: the longest a row waits in the sink before its batch is written
    sink_flush_seconds: float = Field(default=1.0, gt=0)
    #: write as soon as no new record arrived for this long (low load: low latency; high load: full batches)
    sink_linger_seconds: float = Field(default=0.05, ge=0)
    #: writes start at least this far apart (a row still waits at most ``sink_flush_seconds``): ClickHouse pays a
    #: fixed cost per insert (chdb: ~25-45 ms of CPU per batch on two vCPUs), so at most 4 writes/s per table here.
    #: 0.25 s against 0.5 s: p99 at half the bench's peak rate 0.95-0.98 s instead of 1.14-1.26 s, for about 0.1-0.2 ms
    #: more CPU per note (docs/performance/hot-path.md, eighteenth session). Raise it where many sinks share a
    #: ClickHouse server (it suggests about one insert per second per table)
    sink_min_write_interval_seconds: float = Field(default=0.25, ge=0)
    #: a table's records in one batch go to chdb as Avro (``streams.sink.avro_intake``) from this many bytes on; below,
    #: Python reads them: ClickHouse plans that statement in ~35 ms of CPU (2-vCPU EPYC), as reading 20-90 KB in Python
    sink_avro_min_bytes: int = Field(default=65536, ge=0)
    #: how long the sink retries one batch before it stops consuming and reports back-pressure
    sink_retry_max_seconds: float = Field(default=300.0, gt=0)

    review: ReviewSettings = ReviewSettings()

    #: Prometheus ``/metrics`` port of this process (worker, sink, review app); 0 = off
    metrics_port: int = Field(default=0, ge=0, le=65535)
    #: how often consumer lag (end offset - committed offset) is refreshed for ``/metrics``
    metrics_lag_seconds: float = Field(default=10.0, gt=0)
    #: torch intra-op threads per worker process; 0 = torch's default (all cores), or cores / workers in the embedded stack
    torch_threads: int = Field(default=0, ge=0)
    #: worker processes of the embedded stack (demo, up, bench); 0 = one per CPU core, at most 4 (on CUDA too)
    embedded_workers: int = Field(default=0, ge=0)

    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"
    #: how often a worker looks at the model registry for a newly promoted version (``streams.learning.registry``)
    model_poll_seconds: float = Field(default=2.0, gt=0)

    def cache_dir(self) -> Path:
        """What is derived from the models and kept between runs (the demo's fresh start keeps it too)."""
        return self.data_dir / "cache"

    def onnx_cache(self) -> OnnxCache:
        """Where int8 models (the task models', the coder's encoder) are kept, quantised, between starts:
        ``<data_dir>/cache/onnx`` (:mod:`agents.runners.onnx_cache`)."""
        from agents.runners.onnx_cache import OnnxCache

        return OnnxCache(self.cache_dir() / "onnx")

    def registry_file(self) -> Path:
        """The model registry (versions, scores, the live one per task) and, beside it, the candidates trained here."""
        return self.data_dir / "models" / "registry.json"

    def broker_storage_dir(self) -> Path | None:
        """The embedded broker's storage directory, or None for memory."""
        return self.data_dir / "broker" if self.embedded_storage == "disk" else None

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap_servers.strip()

    @property
    def embedded_clickhouse(self) -> bool:
        return not self.clickhouse_url.get_secret_value().strip()

    @model_validator(mode="after")
    def _confluent_needs_a_registry(self) -> Settings:
        if self.avro_wire == "confluent" and not self.schema_registry_url:
            raise ValueError("avro_wire = confluent needs SCHEMA_REGISTRY_URL")
        return self

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskSettings]) -> list[TaskSettings]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        return tasks

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        if self.environment == "production" and not self.embedded_clickhouse:
            match = re.match(r"^[a-z]+://[^:/@]*:([^@]*)@", self.clickhouse_url.get_secret_value())
            if match is not None and match.group(1).lower() in PLACEHOLDER_SECRETS:
                raise ValueError("CLICKHOUSE_URL carries a placeholder password; set a real one in production")
            if self.clickhouse_user and self.clickhouse_password.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                raise ValueError("CLICKHOUSE_PASSWORD is empty or a placeholder; set a real one in production")
        return self

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Read the settings once: ``overrides`` (CLI flags; None values ignored) > environment > ``config_file`` >
        defaults. Model paths in a config file are relative to that file."""
        if config_file is not None and not config_file.exists():
            raise ConfigError("config", f"no such file: {config_file}")
        try:
            settings = cls(config_file=config_file, **{k: v for k, v in overrides.items() if v is not None})
        except ValueError as exc:
            raise ConfigError("settings", str(exc)) from None
        if config_file is None:
            return settings
        base = config_file.resolve().parent
        tasks = [t.model_copy(update={"model_dir": base / t.model_dir}) for t in settings.tasks]  # an absolute path stays
        return settings.model_copy(update={"tasks": tasks, "icd10cm_index": base / settings.icd10cm_index})

    def child_config(self, bootstrap: str | None = None) -> dict[str, Any]:
        """Every setting a child process needs (a worker of the embedded stack or the bench, a test's subprocess),
        as TOML-ready values: all but the secrets, which travel by environment or file as in this process. Paths are
        made absolute; ``bootstrap`` names the broker the child must use (the embedded one: plain loopback). Write it
        with :func:`write_child_config` and start the child with ``--config`` and :meth:`child_environment`."""
        update: dict[str, Any] = {
            "data_dir": self.data_dir.resolve(),
            "tasks": [t.model_copy(update={"model_dir": t.model_dir.resolve()}) for t in self.tasks],
            "icd10cm_index": self.icd10cm_index.resolve(),
        }
        if bootstrap is not None:
            update["kafka_bootstrap_servers"] = bootstrap
        if self.embedded_kafka:
            update["kafka"] = KafkaSecurity()
        values: dict[str, Any] = _without_none(self.model_copy(update=update).model_dump(mode="json", exclude=CHILD_EXCLUDED))
        return values

    def child_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment for a child that reads :meth:`child_config`: ``environ`` less every variable that sets a
        non-secret setting (so none can win over what this process decided), with the secrets and their files kept."""
        return {k: v for k, v in environ.items() if k in SECRET_VARIABLES or not _sets_a_setting(k)}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, SecretFileSource(settings_cls)]
        config_file = getattr(init_settings, "init_kwargs", {}).get("config_file")  # Settings.load(path) names it
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


#: what :meth:`Settings.child_config` leaves out: the secrets, reviewer accounts, and where this process read its file
CHILD_EXCLUDED: Any = {
    "config_file": True,
    "clickhouse_url": True,
    "clickhouse_password": True,
    "schema_registry_password": True,
    "kafka": {"sasl_password", "ssl_key_password"},
    "review": {"reviewers"},
}

#: environment variables that carry secrets: a child inherits them (its config file has none)
SECRET_VARIABLES = frozenset(
    {"CLICKHOUSE_URL", "EHRSTREAM_CLICKHOUSE_URL", "CLICKHOUSE_PASSWORD", "EHRSTREAM_CLICKHOUSE_PASSWORD"}
    | {"EHRSTREAM_KAFKA__SASL_PASSWORD", "EHRSTREAM_KAFKA__SSL_KEY_PASSWORD", "EHRSTREAM_SCHEMA_REGISTRY_PASSWORD"}
    | {name for _, names in SECRET_FILE_VARIABLES for name in names}
)
_ALIASED_VARIABLES = frozenset({"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_USER", "SCHEMA_REGISTRY_URL"})


def _sets_a_setting(name: str) -> bool:
    return name.startswith("EHRSTREAM_") or name in _ALIASED_VARIABLES


def _without_none(value: Any) -> Any:
    """TOML has no null: drop None values, recursively."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def write_child_config(settings: Settings, path: Path, bootstrap: str | None = None) -> Path:
    """:meth:`Settings.child_config` as a TOML file (mode 0600) for a child process's ``--config``."""
    import tomli_w

    write_private_file(path, tomli_w.dumps(settings.child_config(bootstrap)))
    return path
