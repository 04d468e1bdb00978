"""``ehrstream models``: the model registry for ML engineers and operators (list, register, promote, roll back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from streams.cli.options import CliContext, configured_task, option

if TYPE_CHECKING:
    from streams.learning.registry import ModelRegistry


def _registry(obj: CliContext) -> ModelRegistry:
    from streams.learning.registry import ModelRegistry  # loads torch: only when a models command runs

    return ModelRegistry(obj.settings().registry_file())


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per version.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """Model versions per task, their scores, which one is live (workers switch to a promoted one between batches,
    without a restart), and thresholds the review app tightened. Without a subcommand: the list."""
    if ctx.invoked_subcommand is not None:
        return
    obj: CliContext = ctx.obj
    registry = _registry(obj)
    for task in obj.settings().tasks:
        versions = registry.versions(task.name)
        if as_json:
            for v in versions:
                click.echo(v.model_dump_json())
            continue
        live = registry.live(task.name)
        click.echo(f"{task.name}: live {live.version if live else '(none: the configured model ' + str(task.model_dir) + ')'}")
        for v in versions:
            scores = ", ".join(f"{k} {val}" for k, val in v.scores.items() if isinstance(val, int | float))
            click.echo(f"  {v.version}  {v.state:<9}  {v.registered_at}  {scores}  {v.note}".rstrip())
        for t in (t for t in registry.read().tightened if t.task == task.name):
            click.echo(f"  {t.version}  threshold tightened to {t.threshold} at {t.at} ({t.note}, {t.audited_items} audited items)")


@models.command()
@option("--task", envvar="EHRSTREAM_MODELS_TASK", required=True, help="Task name, as configured.")
@option("--model", envvar="EHRSTREAM_MODELS_MODEL", required=True, type=click.Path(path_type=Path, file_okay=False, exists=True))
@option("--note", envvar="EHRSTREAM_MODELS_NOTE", default="", help="Why it is registered.")
@click.pass_obj
def register(obj: CliContext, task: str, model: Path, note: str) -> None:
    """Add a model directory as a candidate version of a task."""
    entry = _registry(obj).register(configured_task(obj, task).name, model, note=note)
    click.echo(json.dumps(entry.model_dump()))


@models.command()
@option("--task", envvar="EHRSTREAM_MODELS_TASK", required=True, help="Task name, as configured.")
@option("--version", "version", envvar="EHRSTREAM_MODELS_VERSION", required=True, help="A registered version.")
@click.pass_obj
def promote(obj: CliContext, task: str, version: str) -> None:
    """Make a registered version live; running workers switch to it at their next batch."""
    entry = _registry(obj).promote(configured_task(obj, task).name, version, note="promoted by hand")
    click.echo(json.dumps(entry.model_dump()))


@models.command()
@option("--task", envvar="EHRSTREAM_MODELS_TASK", required=True, help="Task name, as configured.")
@click.pass_obj
def rollback(obj: CliContext, task: str) -> None:
    """Make the version live before the current one live again (the current one is marked rejected)."""
    entry = _registry(obj).rollback(configured_task(obj, task).name)
    click.echo(json.dumps(entry.model_dump()))
