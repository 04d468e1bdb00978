"""Tightening: when the audited precision of a task's auto-accepted items is ``low`` (``streams.review.audit``) for the
model version that is serving, and ``review.tighten_thresholds`` is on, raise that version's auto-accept threshold.

The new threshold comes from every item the model had accepted and a reviewer then judged (the data of the live
estimate, ``streams.review.estimate``): the lowest confidence above the current threshold at which the judged items at
or above it reach the target precision, over at least ``min_audit_items`` of them, and at least ``tighten_step`` above
the current one (when the judged items disagree with the audits, the audits win). Never above 0.99, never lowered here
(a new model version, calibrated on its own, starts from its own thresholds). A version is tightened again only once
``min_audit_items`` more audited items came in since its last tightening: the audits behind a low verdict stay in the
view, and without new evidence every refresh would raise the threshold again. The result is written to the model
registry (``ModelRegistry.tighten``); workers pick it up at their next registry poll and route with it from their next
batch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from agents.model_dir import read_manifest, with_model_thresholds
from streams.learning.registry import ModelRegistry
from streams.query.reader import Reader
from streams.review.estimate import judged_items
from streams.settings import Settings

log = logging.getLogger(__name__)

#: the highest threshold tightening sets: above it nearly nothing would be accepted
CEILING = 0.99


def next_threshold(confidence: np.ndarray, correct: np.ndarray, current: float, target: float, min_items: int, step: float) -> float:
    """The raised threshold (see the module's docstring)."""
    above = confidence >= current
    order = np.argsort(-confidence[above], kind="stable")
    ranked, right = confidence[above][order], correct[above][order].astype(np.float64)
    count = np.arange(1, len(ranked) + 1)
    reaches = (count >= min_items) & (np.cumsum(right) / count >= target)
    # the items at or above ranked[i] are the first i + 1 (ties resolved to the lower end): the lowest such confidence
    candidates = ranked[reaches & (ranked > current)]
    raised = max(float(candidates.min()) if candidates.size else 0.0, current + step)
    return round(min(CEILING, raised), 4)


class Tightener:
    """Built by the review app when ``review.tighten_thresholds`` is on; called with the ``low`` rows of each refresh."""

    def __init__(self, settings: Settings, reader: Reader) -> None:
        self.settings = settings
        self.reader = reader
        self.registry = ModelRegistry(settings.registry_file())

    def __call__(self, low: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tighten each task whose serving version's row is low; returns what was set (task, version, from, to)."""
        review = self.settings.review
        done = []
        for task in self.settings.tasks:
            routing = self.registry.routing(with_model_thresholds(self.registry.resolve(task)))
            manifest = read_manifest(routing.model_dir)
            if manifest is None:
                continue
            serving = f"{manifest.name}@{manifest.version}"
            row = next((r for r in low if str(r["task"]) == task.name and str(r["model"]) == serving), None)
            if row is None:
                continue
            last = self.registry.tightened(task.name, manifest.version)
            if last is not None and int(row["items"]) < last.audited_items + review.min_audit_items:
                continue  # no new evidence since the last tightening
            confidence, correct = judged_items(self.reader, task.name)
            raised = next_threshold(
                confidence, correct, routing.threshold, review.target_precision, review.min_audit_items, review.tighten_step
            )
            if raised <= routing.threshold:
                continue
            note = f"audited precision below {review.target_precision:.2f}"
            self.registry.tighten(task.name, manifest.version, raised, note, audited_items=int(row["items"]))
            log.warning(
                "task %s (model %s): auto-accept threshold tightened %.3f -> %.3f (%s, %d judged items)",
                task.name,
                serving,
                routing.threshold,
                raised,
                note,
                len(confidence),
            )
            done.append({"task": task.name, "version": manifest.version, "from": routing.threshold, "to": raised})
        return done
