"""One micro-batch of raw notes in, the records to produce out.

This is everything the extraction agent does between receiving a batch and sending
its results, kept free of Faust so it runs in a worker thread (off the event loop)
and can be tested directly: decode each record (bad ones become DeadLetters), run
every configured task over the good notes in one batch per task, route each note,
and encode an Extraction (and a ReviewTask when needed) per note.
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
from agents.runners.windows import TokenCache
from agents.types import BatchResult, InRecord, OutRecord
from schemas._base import utc_now
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
class Routed:
    """A batch's routing: per note its flagged decisions (ReviewReason records) and priority; per task which items
    (document labels by note, or entities) are flagged."""

    reasons: list[list[dict[str, Any]]]
    priority: np.ndarray
    flagged: list[np.ndarray]
    #: per note, how many items are flagged (document labels, entities, possible missed entities): the review load
    items: np.ndarray
    #: per note, how many items are accepted (document labels, entities): what an audit checks
    accepted: np.ndarray


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
        per_task = []
        for runner in self.runners:
            with result.timed("tokenise"):
                windows = runner.preprocess(texts, tokens)
            wall, cpu = runner.forward_seconds, runner.forward_cpu_seconds
            with result.timed("infer"):
                probs = runner.window_probabilities(windows)
            result.stage_seconds["forward"] += runner.forward_seconds - wall  # the model alone, within infer
            result.stage_cpu_seconds["forward"] += runner.forward_cpu_seconds - cpu
            with result.timed("postprocess"):
                columns = runner.columns(texts, windows, probs)
            annotator = self.clinical.get(runner.task)
            if annotator is not None and columns.entities is not None:
                columns = annotator.annotate(result, texts, columns)
            per_task.append(columns)
        return per_task

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
        """The batch's decisions compared with their thresholds at once: per note, the ReviewReason records of its
        flagged decisions (in task and decision order) and its priority; per task, which items are flagged."""
        reasons: list[list[dict[str, Any]]] = [[] for _ in range(n_notes)]
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
                rows = zip(
                    group.note[picked].tolist(),
                    group.label[picked].tolist(),
                    confidence.tolist(),
                    thresholds[picked].tolist(),
                    group.start[picked].tolist(),
                    group.end[picked].tolist(),
                    strict=True,
                )
                kind, labels = group.kind.value, group.labels
                for note, label, conf, threshold, start, end in rows:
                    reasons[note].append(
                        {
                            "task": task.task,
                            "kind": kind,
                            "label": labels[label],
                            "start": None if start < 0 else start,
                            "end": None if end < 0 else end,
                            "confidence": conf,
                            "threshold": threshold,
                        }
                    )
        accepted = np.zeros(n_notes, dtype=np.int64)
        for task, items in zip(columns, flagged, strict=True):
            owner = np.arange(n_notes) if task.entities is None else task.entities.note
            per_note += np.bincount(owner[items], minlength=n_notes)
            accepted += np.bincount(owner[~items], minlength=n_notes)
        return Routed(reasons, priority, flagged, per_note, accepted)

    def _encode(self, result: BatchResult, notes: list[Note], columns: list[TaskColumns]) -> None:
        """Each note's Extraction (and ReviewTask) written as Avro straight from the columns."""
        now = utc_now()
        texts = [note.text for _, note in notes]
        routed = self._route(result, columns, len(notes))
        results = [task.result_records(texts, flags) for task, flags in zip(columns, routed.flagged, strict=True)]
        # an audit checks accepted items: drawn among the notes that have some (a ratio estimate over items stays unbiased)
        audited = (self.policy.audited([note.note_id for _, note in notes]) & (routed.accepted > 0)).tolist()
        priorities, items = routed.priority.tolist(), routed.items.tolist()
        for i, (record, note) in enumerate(notes):
            reasons = routed.reasons[i]
            status = ExtractionStatus.pending_review if reasons else ExtractionStatus.auto_accepted
            extraction = {
                "note_id": note.note_id,
                "revision": 0,
                "patient_id": note.patient_id,
                "encounter_id": note.encounter_id,
                "note_type": note.note_type,
                "source": note.source,
                "created_at": note.created_at,
                "text": note.text,
                "status": status.value,
                "results": [per_task[i] for per_task in results],
                "processed_at": now,
            }
            key = note.note_id.encode("utf-8")
            encoded = self._extraction_codec.encode_record(extraction)
            if len(encoded) > self.max_record_bytes:
                self._dead(
                    result,
                    record,
                    ErrorKind.oversized,
                    f"extraction of {len(encoded)} bytes exceeds max_record_bytes {self.max_record_bytes}",
                )
                continue
            result.records.append(OutRecord(self.topics.extractions, key, encoded))
            result.extracted += 1
            if reasons or audited[i]:
                task = {
                    "note_id": note.note_id,
                    "revision": 0,
                    "note_type": note.note_type,
                    "created_at": now,
                    "audit": audited[i],
                    "priority": priorities[i],
                    "reasons": reasons,
                }
                result.records.append(OutRecord(self.topics.review, key, self._review_codec.encode_record(task)))
                result.audited += int(audited[i])
            if reasons:
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
