"""Retrain, evaluate, promote: the learning loop's one cycle, and the process that runs it every N reviewed notes.

A cycle (``candidate_cycle``), in its own process (``ehrstream learn``), never in a worker:

1. **Data.** The notes reviewers decided (their reviewed revisions, audits included) for the task, split by a hash
   of the note id: ``held_back`` of them (20%) never train and judge the candidate; the rest train it, together with
   the original training set when one is given (``--base-data``), so the model does not forget what it knew.
2. **Train.** A LoRA candidate continued from the task's origin model (its first registered version: the model the
   stream started with) on every reviewed note so far, a few epochs, best dev epoch kept. Starting each candidate from
   the same origin, not from the last candidate, keeps candidates from compounding each other's errors.
3. **Calibrate.** Its own temperature and thresholds on the fixed dev set, for the target precision, stored with it.
4. **Gate.** The candidate and the live version are scored on the same data: strict span F1 (NER) or macro F1
   (classification) on the fixed dev set and on the held-back reviewed notes. The candidate is **promoted only when
   it is not worse on either** (each score at least the live one's minus ``tolerance``, 0 by default); else it is
   registered as rejected with the scores that stopped it. MedCATtrainer's maintainers warn that training on every
   submission can make a model worse: the gate is the answer, and the registry keeps every version for a rollback.
5. **Promote.** Through the registry: running workers switch at their next batch (``streams.runtime.model_watcher``).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.config import TaskSettings
from agents.learning.datasets import Example
from streams.errors import RegistryError
from streams.learning.registry import ModelRegistry
from streams.settings import Settings


@dataclass(frozen=True)
class LoopConfig:
    dev: Path
    base_data: Path | None = None
    #: new reviewed notes per candidate (``ehrstream learn`` waits for this many)
    every: int = 100
    held_back: float = 0.2
    tolerance: float = 0.01
    target_precision: float = 0.9
    #: 8 epochs at 1e-3: the best of four settings on the BC5CDR replay's reviewed sentences (README)
    epochs: int = 8
    learning_rate: float = 1e-3
    device: str = "auto"


def held_back(note_id: str, share: float) -> bool:
    """Whether a reviewed note is held back from training (stable: the same note always falls on the same side)."""
    digest = hashlib.blake2b(note_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def score(settings: Settings, task: TaskSettings, model_dir: Path, examples: list[Example], device: str) -> float:
    """Strict span F1 (NER) or macro F1 (classification) of a model on labelled examples, as the worker runs it."""
    from agents.learning.evaluation import Run, report
    from agents.model_dir import load_model
    from agents.runners import build_runner

    if not examples:
        return float("nan")
    runner = build_runner(task.name, load_model(model_dir, task.kind), device=device, quantization=task.quantization)
    result = report(Run.of(runner, examples), guard=task.possible_entity_threshold)
    return round(float(result["f1"] if task.kind.value == "ner" else result["macro"]["f1"]), 4)


def candidate_cycle(settings: Settings, task: TaskSettings, config: LoopConfig, echo: Callable[[str], None]) -> dict[str, Any]:
    """One candidate, trained, calibrated, judged against the live version and promoted or rejected."""
    from agents.learning.datasets import read_examples
    from agents.learning.training import TrainConfig, train
    from agents.model_dir import read_manifest
    from streams.learning.model_checks import calibrate_task
    from streams.learning.training_data import examples_from_clickhouse

    registry = ModelRegistry(settings.registry_file())
    live = registry.resolve(task)
    live_manifest = read_manifest(live.model_dir)
    if live_manifest is None:
        raise RegistryError(f"task {task.name}: the live model {live.model_dir} has no manifest; register an ehrstream model first")
    if registry.live(task.name) is None:  # the configured model becomes the first registered version, so rollback works
        registry.register(task.name, live.model_dir, note="the configured model, live before the first candidate")
        registry.promote(task.name, live_manifest.version, note="baseline")
    origin = Path(registry.versions(task.name)[0].model_dir)
    origin_manifest = read_manifest(origin) or live_manifest
    reviewed = examples_from_clickhouse(settings, task.name, task.kind, floor=1.0, reviewed_only=True)
    pairs = list(zip(reviewed.note_ids, reviewed.examples, strict=True))
    held = [ex for note_id, ex in pairs if held_back(note_id, config.held_back)]
    learn = [ex for note_id, ex in pairs if not held_back(note_id, config.held_back)]
    base = read_examples(config.base_data, task.kind.value) if config.base_data else []
    dev = read_examples(config.dev, task.kind.value)
    echo(f"{task.name}: {len(learn)} reviewed notes to train on (+{len(base)} base), {len(held)} held back, {len(dev)} dev")
    out = settings.registry_file().parent / task.name / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"  # never reused
    train_config = TrainConfig(
        task=task.name,
        kind=task.kind,
        base=origin_manifest.base,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_length=origin_manifest.max_length,
        stride=origin_manifest.stride,
        device=config.device,
        init_from=origin if origin_manifest.format == "lora" else None,
        method="lora" if origin_manifest.format == "lora" else "full",
    )
    started = time.monotonic()
    trained = train(train_config, base + learn, dev, out)
    train_seconds = round(time.monotonic() - started, 1)
    candidate = task.model_copy(update={"model_dir": out})
    calibrate_task(settings, candidate, out, str(config.dev), config.target_precision, config.device)
    scores = {
        "dev_f1": score(settings, candidate, out, dev, config.device),
        "held_back_f1": score(settings, candidate, out, held, config.device),
        "live_dev_f1": score(settings, live, live.model_dir, dev, config.device),
        "live_held_back_f1": score(settings, live, live.model_dir, held, config.device),
        "reviewed": len(reviewed.examples),
        "held_back": len(held),
        "train_seconds": train_seconds,
    }
    better_dev = scores["dev_f1"] >= scores["live_dev_f1"] - config.tolerance
    better_held = not held or scores["held_back_f1"] >= scores["live_held_back_f1"] - config.tolerance
    if any(v.version == trained.manifest.version for v in registry.versions(task.name)):  # same data, same settings
        echo(f"{task.name}: candidate {trained.manifest.version} is a version already registered; nothing changes")
        return {"task": task.name, "version": trained.manifest.version, "model_dir": str(out), "promoted": False, **scores}
    entry = registry.register(task.name, out, scores=scores)
    if better_dev and better_held:
        registry.promote(task.name, entry.version, note=f"gate passed after {len(reviewed.examples)} reviewed notes")
    else:
        registry.reject(task.name, entry.version, note="gate: worse than the live version on " + ("dev" if not better_dev else "held-back"))
    echo(f"{task.name}: candidate {entry.version} {'promoted' if better_dev and better_held else 'rejected'}: {scores}")
    return {"task": task.name, "version": trained.manifest.version, "model_dir": str(out), "promoted": better_dev and better_held, **scores}


def reviewed_count(settings: Settings) -> int:
    from streams.query.reader import run_query

    db = settings.clickhouse_database  # validated identifier
    return int(run_query(settings, f"SELECT count() FROM {db}.extractions_final WHERE status = 'reviewed'", None).scalar() or 0)  # noqa: S608


def run_learning_loop(
    settings: Settings,
    task: TaskSettings,
    config: LoopConfig,
    echo: Callable[[str], None],
    poll_seconds: float = 30.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """``ehrstream learn``: a cycle each time ``every`` more notes have been reviewed than at the last cycle."""
    last = reviewed_count(settings)
    echo(f"{task.name}: {last} reviewed notes now; a candidate after every {config.every} more")
    while not should_stop():
        now = reviewed_count(settings)
        if now >= last + config.every:
            candidate_cycle(settings, task, config, echo)
            last = now
        time.sleep(poll_seconds)
