"""Train a configured task's model from a labelled file or from ClickHouse: what `ehrstream train` runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.config import TaskSettings
from agents.errors import TrainingDataError
from agents.learning.datasets import DataFormat
from agents.learning.training import TrainConfig
from streams.settings import Settings


def train_task(
    settings: Settings,
    task: TaskSettings,
    data: str,
    dev: Path | None,
    out: Path | None,
    config: TrainConfig,
    confidence_floor: float,
    data_format: DataFormat | None,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """``data`` is a file (CoNLL, medical_abstracts CSV, ehrstream JSONL) or ``clickhouse``: reviewed rows plus
    auto-accepted rows at or above ``confidence_floor``. Writes a versioned model directory (default: the task's)."""
    from agents.learning.datasets import read_examples
    from agents.learning.training import train

    if data == "clickhouse":
        from streams.learning.training_data import examples_from_clickhouse

        source = examples_from_clickhouse(settings, task.name, task.kind, confidence_floor)
        echo(
            f"clickhouse: {source.reviewed} reviewed, {source.machine_labelled} auto-accepted >= {confidence_floor}, "
            f"{source.below_floor} below the floor left out"
        )
        examples = source.examples
    elif Path(data).is_file():
        examples = read_examples(Path(data), task.kind.value, data_format)
    else:
        raise TrainingDataError(data, "no such file (pass a labelled file or 'clickhouse')")
    dev_examples = read_examples(dev, task.kind.value) if dev else []
    result = train(config, examples, dev_examples, out or task.model_dir)
    return {
        "task": task.name,
        "out": str(result.out_dir),
        "version": result.manifest.version,
        "best_dev_f1": result.metrics["best_dev_f1"],
        "epoch_seconds": [h["epoch_seconds"] for h in result.metrics["history"]],
    }
