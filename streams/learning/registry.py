"""The model registry: which versions of each task's model exist, their scores, and which one is live.

One JSON file (``Settings.registry_file()``, under the data directory, on shared storage in a cluster), changed under
an exclusive lock and replaced atomically, so a reader never sees half a write. Workers watch it
(``streams.runtime.model_watcher``) and switch to a newly promoted version between two batches, without a restart.
A task with no live version runs the model its config names. Nothing is ever deleted: a rolled-back or rejected
version stays listed with why.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.config import TaskSettings
from agents.errors import ModelLoadError
from agents.model_dir import read_manifest
from streams.errors import RegistryError

VersionState = Literal["candidate", "live", "retired", "rejected"]


class ModelVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    version: str
    model_dir: str
    state: VersionState = "candidate"
    registered_at: str
    #: the gate's numbers (dev F1, held-back reviewed F1, the live version's on the same data...)
    scores: dict[str, Any] = Field(default_factory=dict)
    #: why it was promoted, rejected or rolled back
    note: str = ""
    promoted_at: list[str] = Field(default_factory=list)


class Tightened(BaseModel):
    """A model version's auto-accept threshold raised because its audited precision fell below the target
    (``streams.review.tighten``): workers route with it from their next registry poll, without a restart."""

    model_config = ConfigDict(extra="forbid")

    task: str
    version: str
    threshold: float
    at: str
    note: str = ""
    #: the audited items behind the verdict that set it (the next tightening waits for more)
    audited_items: int = 0


class RegistryDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    versions: list[ModelVersion] = Field(default_factory=list)
    tightened: list[Tightened] = Field(default_factory=list)


def _tightened(doc: RegistryDoc, task: str, version: str) -> Tightened | None:
    return next((t for t in doc.tightened if t.task == task and t.version == version), None)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ModelRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> RegistryDoc:
        if not self.path.exists():
            return RegistryDoc()
        return RegistryDoc.model_validate_json(self.path.read_text(encoding="utf-8"))

    def mtime(self) -> float:
        """When the file last changed (0 when there is none): what a watcher polls."""
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    @contextmanager
    def _changing(self) -> Iterator[RegistryDoc]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = self.read()
            yield doc
            staged = self.path.with_suffix(f".{os.getpid()}.tmp")
            staged.write_text(doc.model_dump_json(indent=2) + "\n", encoding="utf-8")
            os.replace(staged, self.path)

    def versions(self, task: str | None = None) -> list[ModelVersion]:
        return [v for v in self.read().versions if task is None or v.task == task]

    def live(self, task: str) -> ModelVersion | None:
        return next((v for v in self.versions(task) if v.state == "live"), None)

    def register(self, task: str, model_dir: Path, scores: dict[str, Any] | None = None, note: str = "") -> ModelVersion:
        """Add a model directory as a candidate version of ``task`` (its version from its manifest)."""
        manifest = read_manifest(model_dir)
        if manifest is None:
            raise ModelLoadError(model_dir, "only ehrstream model directories (with a manifest) can be registered")
        if manifest.task != task:
            raise ModelLoadError(model_dir, f"the model is for task {manifest.task!r}, not {task!r}")
        entry = ModelVersion(
            task=task, version=manifest.version, model_dir=str(model_dir.resolve()), registered_at=_now(), scores=scores or {}, note=note
        )
        with self._changing() as doc:
            if any(v.task == task and v.version == entry.version for v in doc.versions):
                raise RegistryError(f"version {entry.version} of task {task} is already registered")
            doc.versions.append(entry)
        return entry

    def promote(self, task: str, version: str, note: str = "") -> ModelVersion:
        """Make ``version`` the live one (the previous live one is retired). Workers switch to it between batches."""
        with self._changing() as doc:
            chosen = next((v for v in doc.versions if v.task == task and v.version == version), None)
            if chosen is None:
                raise RegistryError(f"task {task} has no registered version {version}")
            for v in doc.versions:
                if v.task == task and v.state == "live":
                    v.state = "retired"
            chosen.state = "live"
            chosen.promoted_at.append(_now())
            chosen.note = note or chosen.note
        return chosen

    def reject(self, task: str, version: str, note: str) -> None:
        with self._changing() as doc:
            for v in doc.versions:
                if v.task == task and v.version == version:
                    v.state = "rejected"
                    v.note = note

    def rollback(self, task: str) -> ModelVersion:
        """Make the version that was live before the current one live again (the current one is rejected)."""
        history = sorted(((at, v) for v in self.versions(task) for at in v.promoted_at), key=lambda pair: pair[0], reverse=True)
        current = self.live(task)
        previous = next((v for _, v in history if current is None or v.version != current.version), None)
        if current is None or previous is None:
            raise RegistryError(f"task {task} has no earlier live version to roll back to")
        self.reject(task, current.version, "rolled back")
        return self.promote(task, previous.version, note="rolled back to")

    def tightened(self, task: str, version: str) -> Tightened | None:
        return _tightened(self.read(), task, version)

    def tighten(self, task: str, version: str, threshold: float, note: str, audited_items: int = 0) -> Tightened:
        """Raise the auto-accept threshold of ``task``'s model ``version`` to ``threshold`` (never lowers it)."""
        with self._changing() as doc:
            old = _tightened(doc, task, version)
            if old is not None and old.threshold >= threshold:
                return old
            entry = Tightened(task=task, version=version, threshold=threshold, at=_now(), note=note, audited_items=audited_items)
            doc.tightened = [t for t in doc.tightened if t is not old] + [entry]
        return entry

    def routing(self, task: TaskSettings) -> TaskSettings:
        """``task`` (its thresholds already those it routes with) with the entity and document-label thresholds raised
        to the tightened one of its model's version, when there is one; decisions about codes, assertions and possible
        missed entities keep theirs."""
        manifest = read_manifest(task.model_dir)
        found = None if manifest is None else self.tightened(task.name, manifest.version)
        if found is None:
            return task
        labels = {label: max(value, found.threshold) for label, value in task.label_thresholds.items()}
        return task.model_copy(update={"threshold": max(task.threshold, found.threshold), "label_thresholds": labels})

    def resolve(self, task: TaskSettings) -> TaskSettings:
        """The task with its live version's model directory, when it has one; else as configured."""
        live = self.live(task.name)
        return task if live is None else task.model_copy(update={"model_dir": Path(live.model_dir)})
