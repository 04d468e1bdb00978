"""One micro-batch of raw notes in, the records to produce out.

This is everything the extraction agent does between receiving a batch and sending
its results, kept free of Faust so it runs in a worker thread (off the event loop)
and can be tested directly: decode each record (bad ones become DeadLetters), run
every configured task over the good notes in one batch per task, route every decision
of the batch at once, and write the batch's Extractions (and ReviewTasks where needed)
as Avro straight from the columns (:mod:`schemas.avro_columns`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.clinical.annotator import ClinicalAnnotator
from agents.config import TaskSettings, TopicSettings
from agents.routing import RoutingPolicy
from agents.runners import ModelRunner
from agents.runners.columns import TaskColumns
from agents.runners.shared_trunk import forward_passes, shared_trunks
from agents.runners.windows import TokenCache, Windows
from agents.types import BatchResult, InRecord, OutRecord
from schemas._base import utc_now
from schemas.avro_columns import array_blocks, arrays
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.errors import RecordError
from schemas.extraction import Extraction, ExtractionStatus
from schemas.review_task import ReviewTask

log = logging.getLogger(__name__)

#: a decoded note with the record it came in
Note = tuple[InRecord, ClinicalNote]


@dataclass(frozen=True)
class Reasons:
    """A batch's flagged decisions as ReviewReason columns, in note order (within a note: task, then decision order)."""

    note: np.ndarray
    task: np.ndarray
    kind: np.ndarray
    label: np.ndarray
    #: character span, masked where the decision has none (a document label)
    start: np.ma.MaskedArray
    end: np.ma.MaskedArray
    confidence: np.ndarray
    threshold: np.ndarray

    @classmethod
    def of(cls, parts: list[tuple[np.ndarray, ...]]) -> Reasons:
        if not parts:
            none, names, values = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object), np.zeros(0, dtype=np.float64)
            parts = [(none, names, names, names, none, none, values, values)]
        note, task, kind, label, start, end, confidence, threshold = (np.concatenate(column) for column in zip(*parts, strict=True))
        order = np.argsort(note, kind="stable")
        start, end = start[order], end[order]
        return cls(
            note[order],
            task[order],
            kind[order],
            label[order],
            np.ma.MaskedArray(start, mask=start < 0),
            np.ma.MaskedArray(end, mask=end < 0),
            confidence[order],
            threshold[order],
        )

    def columns(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ("task", "kind", "label", "start", "end", "confidence", "threshold")}


@dataclass(frozen=True)
class Routed:
    """A batch's routing: its flagged decisions (ReviewReason columns) and per note their count and its priority; per
    task which items (document labels by note, or entities) are flagged."""

    reasons: Reasons
    priority: np.ndarray
    flagged: list[np.ndarray]
    #: per note, how many items are flagged (document labels, entities, possible missed entities): the review load
    items: np.ndarray
    #: per note, how many items are accepted (document labels, entities): what an audit checks
    accepted: np.ndarray

    @property
    def pending(self) -> np.ndarray:
        """Per note, whether any of its decisions is flagged (the note goes to review)."""
        flagged: np.ndarray = np.bincount(self.reasons.note, minlength=len(self.priority)) > 0
        return flagged


class ExtractionPipeline:
    def __init__(
        self,
        runners: Sequence[ModelRunner],
        policy: RoutingPolicy,
        topics: TopicSettings,
        max_note_bytes: int,
        max_record_bytes: int = 1_000_000,
        *,
        codecs: Codecs,
        clinical: Mapping[str, ClinicalAnnotator] | None = None,
    ) -> None:
        self.runners = list(runners)
        self.policy = policy
        self.topics = topics
        self.max_note_bytes = max_note_bytes
        self.max_record_bytes = max_record_bytes
        self.codecs = codecs
        #: per NER task name: its clinical annotator (layout, sections, assertion, codes); tasks not named get none
        self.clinical = dict(clinical or {})
        self._extraction_codec = codecs.of(Extraction)
        self._review_codec = codecs.of(ReviewTask)
        self._dead_codec = codecs.of(DeadLetter)
        self._staged: dict[str, tuple[ModelRunner, TaskSettings]] = {}
        self._staged_routing: dict[str, TaskSettings] = {}
        self._staged_lock = threading.Lock()
        #: groups of tasks whose models share their first layers: one pass through those per batch
        self._trunks = shared_trunks(self.runners)

    def stage(self, runner: ModelRunner, task: TaskSettings) -> None:
        """Hand over a new model version for one task, from any thread (the model watcher): it takes over, with the
        thresholds of ``task``, at the start of the next batch, so a batch is never split between two versions."""
        with self._staged_lock:
            self._staged[runner.task] = (runner, task)

    def stage_routing(self, task: TaskSettings) -> None:
        """Route ``task`` with these thresholds from the start of the next batch (a tightened threshold), any thread."""
        with self._staged_lock:
            self._staged_routing[task.name] = task

    def _take_staged(self) -> None:
        with self._staged_lock:
            staged, self._staged = self._staged, {}
            routing, self._staged_routing = self._staged_routing, {}
        for task in routing.values():
            self.policy.replace(task)
            log.info("task %s: routing with threshold %.3f from this batch on", task.name, task.threshold)
        for name, (runner, task) in staged.items():
            i = next(k for k, r in enumerate(self.runners) if r.task == name)
            before = self.runners[i].loaded.version
            self.runners[i] = runner
            self.policy.replace(task)
            log.info("task %s: model version %s replaces %s from this batch on", name, runner.loaded.version, before)
        if staged:
            self._trunks = shared_trunks(self.runners)

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        self._take_staged()
        result = BatchResult()
        notes: list[Note] = []
        with result.timed("decode"):
            for record in records:
                try:
                    notes.append((record, self.codecs.decode_note(record.value, self.max_note_bytes)))
                except RecordError as exc:
                    self._dead(result, record, exc.kind, exc.message)
        if notes:
            for chunk, columns in self._infer(result, notes):
                with result.timed("encode"):
                    self._encode(result, chunk, columns)
        return result

    def _columns(self, result: BatchResult, texts: list[str]) -> list[TaskColumns]:
        tokens = TokenCache(texts)  # one tokenizer pass per distinct tokenizer, shared by the tasks
        per_task: dict[str, TaskColumns] = {}
        for forward in forward_passes(self.runners, self._trunks):  # the tasks of a pass cut the same windows
            with result.timed("tokenise"):
                windows = forward.runners[0].preprocess(texts, tokens)
            wall, cpu = forward.forward_seconds, forward.forward_cpu_seconds
            with result.timed("infer"):
                probs = forward.window_probabilities(windows)
            result.stage_seconds["forward"] += forward.forward_seconds - wall  # the models alone, within infer
            result.stage_cpu_seconds["forward"] += forward.forward_cpu_seconds - cpu
            for runner, task_probs in zip(forward.runners, probs, strict=True):
                per_task[runner.task] = self._task_columns(result, runner, texts, windows, task_probs)
        return [per_task[runner.task] for runner in self.runners]

    def _task_columns(
        self, result: BatchResult, runner: ModelRunner, texts: list[str], windows: Windows, probs: list[np.ndarray]
    ) -> TaskColumns:
        with result.timed("postprocess"):
            columns = runner.columns(texts, windows, probs)
        annotator = self.clinical.get(runner.task)
        if annotator is not None and columns.entities is not None:
            columns = annotator.annotate(result, texts, columns)
        return columns

    def _infer(self, result: BatchResult, notes: list[Note]) -> list[tuple[list[Note], list[TaskColumns]]]:
        """Every task over the batch, as (notes, their columns per task); a failing batch is retried note by note so
        one bad note cannot sink the rest (a note that fails alone is dead-lettered)."""
        try:
            return [(notes, self._columns(result, [note.text for _, note in notes]))]
        except Exception:
            log.exception("inference failed for a batch of %d notes; retrying one by one", len(notes))
        chunks = []
        for record, note in notes:
            try:
                chunks.append(([(record, note)], self._columns(result, [note.text])))
            except Exception as exc:
                log.error("inference failed for %s[%d]@%d: %s", record.topic, record.partition, record.offset, type(exc).__name__)
                self._dead(result, record, ErrorKind.processing_error, "model inference failed for this note")
        return chunks

    def _route(self, result: BatchResult, columns: list[TaskColumns], n_notes: int) -> Routed:
        """The batch's decisions compared with their thresholds at once: the ReviewReason columns of the flagged ones,
        per note their count and its priority; per task, which items are flagged."""
        parts: list[tuple[np.ndarray, ...]] = []
        priority = np.zeros(n_notes, dtype=np.float64)
        per_note = np.zeros(n_notes, dtype=np.int64)
        flagged: list[np.ndarray] = []
        for task in columns:
            n_items = n_notes if task.entities is None else len(task.entities)
            items = np.zeros(n_items, dtype=bool)
            flagged.append(items)
            for group in task.decisions():
                below, thresholds = self.policy.below(task.task, group)
                picked = np.nonzero(below)[0]
                if not len(picked):
                    continue
                mine = group.item[picked]
                items[mine[mine >= 0]] = True
                per_note += np.bincount(group.note[picked][mine < 0], minlength=n_notes)  # possible missed: items of their own
                confidence = np.round(group.confidence[picked], 6)
                np.add.at(priority, group.note[picked], 1.0 - confidence)
                for label, count in zip(*np.unique(group.label[picked], return_counts=True), strict=True):
                    result.review_reasons[(task.task, group.kind.value, group.labels[int(label)])] += int(count)
                k = len(picked)
                parts.append(
                    (
                        group.note[picked],
                        np.full(k, task.task, dtype=object),
                        np.full(k, group.kind.value, dtype=object),
                        np.asarray(group.labels, dtype=object)[group.label[picked]],
                        group.start[picked],
                        group.end[picked],
                        confidence,
                        thresholds[picked],
                    )
                )
        accepted = np.zeros(n_notes, dtype=np.int64)
        for task, items in zip(columns, flagged, strict=True):
            owner = np.arange(n_notes) if task.entities is None else task.entities.note
            per_note += np.bincount(owner[items], minlength=n_notes)
            accepted += np.bincount(owner[~items], minlength=n_notes)
        return Routed(Reasons.of(parts), priority, flagged, per_note, accepted)

    def _encode(self, result: BatchResult, notes: list[Note], columns: list[TaskColumns]) -> None:
        """The batch's Extractions (and ReviewTasks) written as Avro straight from the columns, all notes at once."""
        now = utc_now()
        n = len(notes)
        texts = [note.text for _, note in notes]
        routed = self._route(result, columns, n)
        writer = self._extraction_codec.columns_writer
        per_task = [task.result_rows(texts, writer.item("results"), flags) for task, flags in zip(columns, routed.flagged, strict=True)]
        pending = routed.pending
        extractions = self._extraction_codec.encode_rows(
            {
                "note_id": [note.note_id for _, note in notes],
                "revision": np.zeros(n, dtype=np.int64),
                "patient_id": [note.patient_id for _, note in notes],
                "encounter_id": [note.encounter_id for _, note in notes],
                "note_type": [note.note_type for _, note in notes],
                "source": [note.source for _, note in notes],
                "created_at": [note.created_at for _, note in notes],
                "text": texts,
                "status": np.where(pending, ExtractionStatus.pending_review.value, ExtractionStatus.auto_accepted.value),
                "results": arrays(per_task, np.full(n, len(per_task))),
                "processed_at": [now] * n,
            }
        )
        # an audit checks accepted items: drawn among the notes that have some (a ratio estimate over items stays unbiased)
        audited = self.policy.audited([note.note_id for _, note in notes]) & (routed.accepted > 0)
        tasked = np.nonzero(pending | audited)[0]
        reasons = self._review_codec.columns_writer.item("reasons").rows(routed.reasons.columns())
        # every note with a reason has a task: each reason's note, as an index among the tasks
        blocks = array_blocks(reasons, np.searchsorted(tasked, routed.reasons.note), len(tasked))
        reviews = self._review_codec.encode_rows(
            {
                "note_id": [notes[i][1].note_id for i in tasked.tolist()],
                "revision": np.zeros(len(tasked), dtype=np.int64),
                "note_type": [notes[i][1].note_type for i in tasked.tolist()],
                "created_at": [now] * len(tasked),
                "audit": audited[tasked],
                "priority": routed.priority[tasked],
                "reasons": blocks,
            }
        )
        review_of = dict(zip(tasked.tolist(), reviews, strict=True))
        items = routed.items.tolist()
        for i, ((record, note), encoded) in enumerate(zip(notes, extractions, strict=True)):
            if len(encoded) > self.max_record_bytes:
                self._dead(
                    result,
                    record,
                    ErrorKind.oversized,
                    f"extraction of {len(encoded)} bytes exceeds max_record_bytes {self.max_record_bytes}",
                )
                continue
            key = note.note_id.encode("utf-8")
            result.records.append(OutRecord(self.topics.extractions, key, encoded))
            result.extracted += 1
            if i in review_of:
                result.records.append(OutRecord(self.topics.review, key, review_of[i]))
                result.audited += int(audited[i])
            if pending[i]:
                result.routed_to_review += 1
                result.flagged_items += items[i]
            else:
                result.auto_accepted += 1

    def _dead(self, result: BatchResult, record: InRecord, kind: ErrorKind, message: str) -> None:
        log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, kind.value)
        letter = DeadLetter.of_record(
            record.value, record.key, record.topic, record.partition, record.offset, kind, message, "worker", self.max_record_bytes // 2
        )
        result.records.append(OutRecord(self.topics.deadletter, record.key, self._dead_codec.encode(letter)))
        result.dead_lettered += 1
        result.dead_kinds[kind.value] += 1
