"""Routing: auto-accept a note only when every decision clears its threshold.

A decision is a document label's probability, an entity span's confidence, or the
probability of "no entity" for a word the model almost tagged (see
``agents.runners.spans``). Thresholds are per task, with per-label overrides; the
"no entity" decisions have their own per-task threshold (a recall guard). A note
with any decision below its threshold is stored as ``pending_review`` and gets a
ReviewTask listing each such decision, so nothing is hidden from analysts or reviewers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agents.config import TaskSettings
from agents.runners.columns import DecisionColumns
from agents.types import Decision
from schemas.extraction import ExtractionStatus
from schemas.review_task import ReasonKind, ReviewReason


class RoutingPolicy:
    def __init__(self, tasks: Sequence[TaskSettings]) -> None:
        self._tasks = {t.name: t for t in tasks}

    def threshold(self, task: str, label: str, kind: ReasonKind) -> float:
        return self._tasks[task].threshold_for(label, kind)

    def below(self, task: str, group: DecisionColumns) -> tuple[np.ndarray, np.ndarray]:
        """For a batch's decisions of one task and kind: which fall below their threshold, and each one's threshold
        (looked up once per label, compared with numpy)."""
        per_label = np.array([self.threshold(task, label, group.kind) for label in group.labels], dtype=np.float64)
        thresholds = per_label[group.label] if len(group.label) else np.zeros(0, dtype=np.float64)
        return group.confidence < thresholds, thresholds

    def route(self, decisions: Sequence[Decision]) -> tuple[ExtractionStatus, list[ReviewReason]]:
        """One note's decisions, one by one: the definition :meth:`below` computes for a whole batch (the pipeline
        uses that; ``tests/test_pipeline.py`` checks the two agree)."""
        reasons = []
        for d in decisions:
            threshold = self.threshold(d.task, d.label, d.kind)
            if d.confidence < threshold:
                reasons.append(
                    ReviewReason(
                        task=d.task,
                        kind=d.kind,
                        label=d.label,
                        start=d.start,
                        end=d.end,
                        confidence=round(float(d.confidence), 6),
                        threshold=threshold,
                    )
                )
        status = ExtractionStatus.pending_review if reasons else ExtractionStatus.auto_accepted
        return status, reasons
