"""What every command shares: options with their environment-variable twins, and the context that reads the
settings once and finds the broker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agents.config import TaskSettings
from streams.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def option(*names: str, envvar: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option whose environment-variable twin is shown in --help."""
    return click.option(*names, envvar=envvar, show_envvar=True, **kwargs)


def datasets_option(help_text: str) -> Callable[[F], F]:
    """--datasets (EHRSTREAM_DATASETS), the shared corpora beside the checkout, as `demo` and `bench` take it."""
    return option(
        "--datasets",
        envvar="EHRSTREAM_DATASETS",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("../shared/datasets"),
        show_default=True,
        help=help_text,
    )


def data_format_option(prefix: str) -> Callable[[F], F]:
    """--format of a labelled data file (EHRSTREAM_<prefix>_FORMAT); inferred from its name or first line when absent."""
    from agents.learning.datasets import DATA_FORMATS

    return option(
        "--format",
        "data_format",
        envvar=f"EHRSTREAM_{prefix}_FORMAT",
        type=click.Choice(DATA_FORMATS),
        default=None,
        help="Format of --data (conll: token<TAB>tag; pubtator; jsonl: ehrstream JSONL; csv: medical_abstracts) [default: from the name].",
    )


def task_model_data(prefix: str, data_help: str, clickhouse_ok: bool = False) -> Callable[[F], F]:
    """--task, --model, --data and --format, as `evaluate` and `calibrate` share them (env vars EHRSTREAM_<prefix>_...);
    ``clickhouse_ok``: --data may also be ``clickhouse`` (then it is passed as text, checked by the command)."""
    options = [
        option("--task", envvar=f"EHRSTREAM_{prefix}_TASK", required=True, help="Task name, as configured."),
        option(
            "--model",
            envvar=f"EHRSTREAM_{prefix}_MODEL",
            type=click.Path(path_type=Path, file_okay=False, exists=True),
            help="Model directory (default: the task's configured model_dir, the one the worker loads).",
        ),
        option(
            "--data",
            envvar=f"EHRSTREAM_{prefix}_DATA",
            required=True,
            type=str if clickhouse_ok else click.Path(path_type=Path, exists=True, dir_okay=False),
            help=data_help,
        ),
        data_format_option(prefix),
    ]

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def format_option() -> Callable[[F], F]:
    """--format: what the input files hold, as `publish` and `demo --input` take it."""
    return option(
        "--format",
        "fmt",
        envvar="EHRSTREAM_INPUT_FORMAT",
        type=click.Choice(["notes", "fhir", "hl7v2"]),
        default="notes",
        show_default=True,
        help="notes: ehrstream JSONL/CSV; fhir: FHIR R4 Bundles/DocumentReferences (JSON, NDJSON); hl7v2: MDM^T02/ORU^R01.",
    )


class CliContext:
    """What the group's options give every command: the config file, log level and data directory."""

    def __init__(self, config: Path | None, log_level: str | None, data_dir: Path | None) -> None:
        self.config = config
        self.log_level = log_level
        self.data_dir = data_dir
        self._settings: Settings | None = None

    def settings(self, **overrides: Any) -> Settings:
        """Read once (``overrides``: a command's own flags, read again with them)."""
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


def report(table: str, json_line: str, as_json: bool) -> None:
    """A benchmark's result: the table (on stderr with --json), then the JSON line on stdout when asked."""
    click.echo(table, err=as_json)
    if as_json:
        click.echo(json_line)


def configured_task(obj: CliContext, name: str) -> TaskSettings:
    """The task named on the command line, as configured; a usage error names the configured ones."""
    task = next((t for t in obj.settings().tasks if t.name == name), None)
    if task is None:
        raise click.UsageError(f"unknown task {name!r}; configured: {[t.name for t in obj.settings().tasks]}")
    return task
