"""The ``ehrstream`` command line, split by audience: serving, data, ML, ops. Every flag has an environment-variable
twin, shown in ``--help``; every command is a thin call into a function that tests can call without the CLI."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from schemas.errors import EhrstreamError
from streams.cli import clinical, data, ml, models, ops, serving
from streams.cli.options import CliContext, option

log = logging.getLogger("ehrstream")

DEFAULT_CONFIG = Path("ehrstream.toml")


def _setup_logging(level: str) -> None:
    from streams.logs import configure_logging

    configure_logging(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "EHRSTREAM"})
@option(
    "--config",
    envvar="EHRSTREAM_CONFIG",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file of settings (tasks, models, topics).",
)
@option("--log-level", envvar="EHRSTREAM_LOG_LEVEL", type=click.Choice(["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]), default=None)
@option(
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
    ctx.obj = CliContext(config, log_level, data_dir)
    _setup_logging(log_level or "INFO")


def run() -> None:
    """Console entry point: user-facing errors become one line and exit code 2, never a traceback."""
    try:
        main(standalone_mode=True)
    except EhrstreamError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


for command in (
    serving.worker,
    serving.sink,
    serving.up,
    serving.review_ui,
    serving.init,
    serving.topics,
    serving.schemas,
):
    main.add_command(command)
for command in (
    data.publish,
    data.query,
    data.export,
    data.reviewer,
    data.review_health,
    data.silver_labels,
):
    main.add_command(command)
for command in (
    ml.train,
    ml.evaluate,
    ml.calibrate,
    ml.label,
    ml.learn,
    models.models,
):
    main.add_command(command)
for command in (
    clinical.assertion,
    clinical.codes,
    clinical.clinical_check,
):
    main.add_command(command)
for command in (
    ops.demo,
    ops.bench,
    ops.soak,
    ops.simulate,
):
    main.add_command(command)
