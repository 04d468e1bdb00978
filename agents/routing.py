"""Routing, item by item: each decision is accepted or flagged on its own.

A decision is a document label's probability, an entity span's confidence, its code's score, its assertion's
confidence, or the probability of "no entity" for a word the model almost tagged (see ``agents.runners.spans``).
Thresholds are per task, with per-label overrides; the "no entity" decisions have their own per-task threshold (a
recall guard). An item (a document label, an entity) with any decision below its threshold is ``pending``; the others
are ``accepted`` and usable at once. A note with any flagged item is ``pending_review`` and gets a ReviewTask listing
only the flagged decisions, with the expected number of corrections (the sum of ``1 - confidence`` over them) as its
priority. A share of the notes that have accepted items (``audit_share``), chosen by a hash of the note id (so a
replay chooses the same), also gets a ReviewTask marked ``audit``: the reviewer checks every accepted item, which
measures what auto-accepted output is worth without the bias of looking only where the model doubted (a note with
nothing accepted has nothing to audit, so drawing among the others loses nothing and wastes no review).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from agents.config import TaskSettings
from agents.runners.columns import DecisionColumns
from agents.types import Decision
from schemas.extraction import ExtractionStatus, ItemState, TaskKind, TaskResult
from schemas.review_task import ReasonKind, ReviewReason

#: decisions about an entity: a flagged one flags the entity (the item)
ENTITY_KINDS = (ReasonKind.entity, ReasonKind.code, ReasonKind.assertion)


class RoutingPolicy:
    def __init__(self, tasks: Sequence[TaskSettings], audit_share: float = 0.0, audit_salt: str = "ehrstream-audit") -> None:
        if not 0.0 <= audit_share <= 1.0:
            raise ValueError(f"audit_share must be within [0, 1], got {audit_share}")
        self._tasks = {t.name: t for t in tasks}
        self.audit_share = audit_share
        self._salt = audit_salt.encode("utf-8")

    def replace(self, task: TaskSettings) -> None:
        """Route ``task`` with these settings from now on (a new model version's thresholds)."""
        self._tasks[task.name] = task

    def audited(self, note_ids: Sequence[str]) -> np.ndarray:
        """Which notes are audited: a uniform draw from each note id's hash below ``audit_share`` (the same note is
        always drawn the same way, so a replayed batch audits the same notes)."""
        if self.audit_share <= 0.0 or not note_ids:
            return np.zeros(len(note_ids), dtype=bool)
        draws = np.array(
            [int.from_bytes(hashlib.blake2b(self._salt + n.encode("utf-8"), digest_size=8).digest(), "big") for n in note_ids],
            dtype=np.uint64,
        )
        return (draws / np.float64(2**64)) < self.audit_share

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

    @staticmethod
    def with_states(results: Sequence[TaskResult], reasons: Sequence[ReviewReason]) -> list[TaskResult]:
        """One note's results with each item's state: ``pending`` where a reason is about it (the per-note definition
        of the states the pipeline sets from its columns), else ``accepted``."""
        spans = {(r.task, r.start, r.end) for r in reasons if r.kind in ENTITY_KINDS}
        labels = {r.task for r in reasons if r.kind is ReasonKind.document_label}
        out = []
        for result in results:
            if result.kind is TaskKind.classification:
                state = ItemState.pending if result.task in labels else ItemState.accepted
                out.append(result.model_copy(update={"label_state": state}))
                continue
            entities = [
                e.model_copy(update={"state": ItemState.pending if (result.task, e.start, e.end) in spans else ItemState.accepted})
                for e in result.entities
            ]
            out.append(result.model_copy(update={"entities": entities}))
        return out

    @staticmethod
    def priority(reasons: Sequence[ReviewReason]) -> float:
        """The expected number of corrections a review of these flagged decisions brings: the sum of ``1 -
        confidence`` (the queue serves the highest first)."""
        return float(sum(1.0 - r.confidence for r in reasons))
