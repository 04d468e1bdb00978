"""``ehrstream calibrate``: fit a temperature and choose thresholds on a dev split, then write them where they are read.

The temperature goes into the model directory's manifest (the worker divides logits by
it); the thresholds go into the config file's ``[[tasks]]`` entry (the worker's routing
reads them). Both are plain files, reviewed and versioned like any other config change.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from agents.errors import ModelLoadError
from agents.model_dir import MANIFEST, read_manifest, write_manifest


def write_temperature(model_dir: Path, temperature: float) -> None:
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise ModelLoadError(model_dir, f"calibration needs an ehrstream model directory ({MANIFEST})")
    write_manifest(model_dir, manifest.model_copy(update={"temperature": temperature}))


def write_thresholds(
    config_file: Path, task: str, kind: str, model_dir: Path, threshold: float, label_thresholds: dict[str, float]
) -> None:
    """Create or update the task's entry in a TOML config file, keeping everything else in it."""
    doc: dict[str, Any] = tomllib.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    tasks: list[dict[str, Any]] = doc.setdefault("tasks", [])
    entry = next((t for t in tasks if t.get("name") == task), None)
    if entry is None:
        entry = {"name": task, "kind": kind, "model_dir": _relative(model_dir, config_file.parent)}
        tasks.append(entry)
    entry["threshold"] = threshold
    entry["label_thresholds"] = dict(sorted(label_thresholds.items()))
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(tomli_w.dumps(doc), encoding="utf-8")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())
