"""Evaluate and calibrate a configured task's model: what `ehrstream evaluate` and `ehrstream calibrate` run.

Both read a labelled file, run the production runner over it, and either score it (P/R/F1, calibration, the review
trade-off at the configured threshold, optional plots) or fit a temperature and the least-review thresholds that
reach a target precision (written into the model directory and the config file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agents.config import TaskSettings
from agents.errors import TrainingDataError
from agents.learning.datasets import DataFormat, Example
from streams.settings import Settings


def evaluate_task(
    task: TaskSettings,
    model: Path | None,
    data: Path,
    device: str,
    plots: Path | None = None,
    threshold: float | None = None,
    data_format: DataFormat | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, full report) of the task's model (or ``model``) on ``data``; PNG plots and report.json in ``plots``."""
    from agents.learning import plots as charts
    from agents.learning.datasets import read_examples
    from agents.learning.evaluation import Run, report
    from agents.model_dir import load_model, read_manifest, with_model_thresholds
    from agents.runners import build_runner

    model_dir = model or task.model_dir
    loaded = load_model(model_dir, task.kind)
    examples = read_examples(data, task.kind.value, data_format)
    runner = build_runner(task.name, loaded, device=device, quantization=task.quantization)
    result = report(Run.of(runner, examples), guard=task.possible_entity_threshold)
    manifest = read_manifest(model_dir)
    stored = manifest is not None and manifest.routing is not None and task.thresholds_from == "model"
    chosen = threshold if threshold is not None else with_model_thresholds(task, model_dir).threshold
    at = min(result["tradeoff"], key=lambda r: abs(r["threshold"] - chosen))
    summary: dict[str, Any] = {
        "task": task.name,
        "model": loaded.name,
        "version": loaded.version,
        "temperature": loaded.temperature,
        "quantization": runner.quantization,
        "data": str(data),
        "n": result["n"],
        "f1": result["f1"],
        "precision": result["precision"],
        "recall": result["recall"],
        **({"accuracy": result["accuracy"]} if "accuracy" in result else {"overlap_f1": result["overlap"]["f1"]}),
        "macro_f1": result["macro"]["f1"],
        "ece": result["calibration"]["ece"],
        "threshold": chosen,
        "thresholds_from": "--threshold" if threshold is not None else ("model" if stored else "config"),
        "review_share": at["review_share"],
        "auto_precision": at["auto_precision"],
    }
    if plots is not None:
        title = f"{task.name} ({loaded.name} {loaded.version}) on {data.name}"
        plots.mkdir(parents=True, exist_ok=True)
        (plots / "report.json").write_text(json.dumps({**summary, "report": result}, indent=2) + "\n")
        charts.reliability_diagram(result, plots / "reliability.png", title)
        charts.confusion_matrix(result, plots / "confusion.png", title)
        charts.tradeoff_curve(result, plots / "tradeoff.png", title, chosen)
        summary["plots"] = str(plots)
    return summary, result


def format_evaluation(summary: dict[str, Any], result: dict[str, Any]) -> str:
    lines = [f"{key:>15}: {value:.4f}" if isinstance(value, float) else f"{key:>15}: {value}" for key, value in summary.items()]
    for label, scores in result.get("per_label", {}).items():
        row = scores.get("strict", scores)
        lines.append(f"  {label:<35} P {row['precision']:.3f}  R {row['recall']:.3f}  F1 {row['f1']:.3f}")
    return "\n".join(lines)


def calibrate_task(
    settings: Settings,
    task: TaskSettings,
    model: Path | None,
    data: str,
    target_precision: float,
    device: str,
    data_format: DataFormat | None = None,
) -> dict[str, Any]:
    """Fit temperature scaling on ``data`` (a dev split, or ``clickhouse``: the reviewed notes of the live stream,
    audits included) and choose the least-review thresholds that reach ``target_precision``; both are written into
    the model directory's manifest (they belong to that version). Returns what was chosen."""
    from agents.learning.calibration import write_calibration
    from agents.learning.evaluation import Run, choose_thresholds, fit_temperature
    from agents.model_dir import load_model
    from agents.runners import build_runner

    model_dir = model or task.model_dir
    loaded = load_model(model_dir, task.kind)
    runner = build_runner(task.name, loaded, device=device, quantization=task.quantization)
    run = Run.of(runner, labelled_examples(settings, task, data, data_format))
    before = run.nll(1.0)
    temperature = fit_temperature(run)
    chosen = choose_thresholds(run, target_precision, temperature, guard=task.possible_entity_threshold)
    write_calibration(model_dir, temperature, chosen, target_precision, data)
    return {
        "task": task.name,
        "model": str(model_dir),
        "version": loaded.version,
        "data": data,
        "n": len(run.examples),
        "temperature": temperature,
        "nll_before": round(before, 4),
        "nll_after": round(run.nll(temperature), 4),
        "target_precision": target_precision,
        **chosen,
    }


def labelled_examples(settings: Settings, task: TaskSettings, data: str, data_format: DataFormat | None) -> list[Example]:
    """A labelled file, or ``clickhouse``: the notes reviewers decided (their reviewed revisions, audits included;
    machine labels are never taken as truth here)."""
    from agents.learning.datasets import read_examples

    if data == "clickhouse":
        from streams.learning.training_data import examples_from_clickhouse

        return examples_from_clickhouse(settings, task.name, task.kind, floor=1.0, reviewed_only=True).examples
    if not Path(data).is_file():
        raise TrainingDataError(data, "no such file (pass a labelled file or 'clickhouse')")
    return read_examples(Path(data), task.kind.value, data_format)
