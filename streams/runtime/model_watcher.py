"""Hot reload: a worker thread that watches the model registry and hands a newly promoted version to the pipeline.

The new model is loaded here, off the inference thread, while the old one keeps serving; the pipeline takes it over at
the start of its next batch (``ExtractionPipeline.stage``), with the thresholds stored with that version. A batch is
never split between versions, nothing is re-read or skipped (the offsets are the stream's, not the model's), and every
row names the version that produced it. A version that does not load is logged and the old one keeps serving. A
threshold the review app tightened for the serving version (``ModelRegistry.tighten``) is taken over the same way, at
the start of the next batch, without reloading the model.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from agents.config import TaskSettings
from agents.model_dir import with_model_thresholds
from agents.pipeline import ExtractionPipeline
from streams.learning.registry import ModelRegistry
from streams.settings import Settings

log = logging.getLogger(__name__)


class ModelWatcher:
    def __init__(self, settings: Settings, pipeline: ExtractionPipeline, serving: list[TaskSettings]) -> None:
        """``serving``: each task as the pipeline was built (its model directory and the thresholds it routes with)."""
        self.settings = settings
        self.pipeline = pipeline
        self.registry = ModelRegistry(settings.registry_file())
        #: each task as last handed to the pipeline: its model directory and the thresholds it routes with
        self.serving = {t.name: t for t in serving}
        #: per task, the model directory of a promoted version that failed to load (not retried on every poll)
        self.failed: dict[str, Path] = {}
        self._seen = -1.0  # the first poll checks: a promotion made while the worker was starting is not missed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def check(self) -> list[str]:
        """Load and stage every task whose live version changed; returns the tasks staged."""
        from streams.worker import build_runner_for  # the worker module builds this watcher

        staged = []
        for task in self.settings.tasks:
            wanted = self.registry.routing(with_model_thresholds(self.registry.resolve(task)))
            current = self.serving.get(task.name)
            if current is not None and wanted.model_dir == current.model_dir:
                if (wanted.threshold, wanted.label_thresholds) != (current.threshold, current.label_thresholds):
                    self.pipeline.stage_routing(wanted)  # only the thresholds moved (tightened): no reload
                    self.serving[task.name] = wanted
                continue
            if wanted.model_dir == self.failed.get(task.name):
                continue
            try:
                runner = build_runner_for(self.settings, wanted)
            except Exception as exc:  # a broken promotion must not stop the stream: the old version keeps serving
                log.error("task %s: the promoted model could not be loaded (%s); keeping the one serving", task.name, type(exc).__name__)
                self.failed[task.name] = wanted.model_dir  # and keeps its own thresholds
                continue
            self.pipeline.stage(runner, wanted)
            self.serving[task.name] = wanted
            staged.append(task.name)
        return staged

    def _run(self) -> None:
        while not self._stop.wait(self.settings.model_poll_seconds):
            changed = self.registry.mtime()
            if changed == self._seen:
                continue
            self._seen = changed
            try:
                self.check()
            except Exception as exc:  # an unreadable registry (being replaced by hand): try at the next change
                log.warning("model registry not read: %s", type(exc).__name__)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
