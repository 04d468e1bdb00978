"""One micro-batch of raw notes in, the records to produce out.

This is everything the extraction agent does between receiving a batch and sending
its results, kept free of Faust so it runs in a worker thread (off the event loop)
and can be tested directly: decode each record (bad ones become DeadLetters), run
every configured task over the good notes in one batch per task, route each note,
and encode an Extraction (and a ReviewTask when needed) per note.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agents.config import TopicSettings
from agents.routing import RoutingPolicy
from agents.runners import ModelRunner
from agents.runners.windows import TokenCache
from agents.types import BatchResult, InRecord, OutRecord, TaskOutput
from schemas._base import utc_now
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.errors import RecordError
from schemas.extraction import Extraction
from schemas.review_task import ReviewTask

log = logging.getLogger(__name__)


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
    ) -> None:
        self.runners = list(runners)
        self.policy = policy
        self.topics = topics
        self.max_note_bytes = max_note_bytes
        self.max_record_bytes = max_record_bytes
        self.codecs = codecs
        self._extraction_codec = codecs.of(Extraction)
        self._review_codec = codecs.of(ReviewTask)
        self._dead_codec = codecs.of(DeadLetter)

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        result = BatchResult()
        notes: list[tuple[InRecord, ClinicalNote]] = []
        with result.timed("decode"):
            for record in records:
                try:
                    notes.append((record, self.codecs.decode_note(record.value, self.max_note_bytes)))
                except RecordError as exc:
                    self._dead(result, record, exc.kind, exc.message)
        if notes:
            outputs = self._infer(result, notes)
            self._emit(result, notes, outputs)
        return result

    def _infer(self, result: BatchResult, notes: list[tuple[InRecord, ClinicalNote]]) -> list[list[TaskOutput] | None]:
        """Every task over the batch; a failing batch is retried note by note so one bad note cannot sink the rest."""
        texts = [note.text for _, note in notes]
        tokens = TokenCache(texts)  # one tokenizer pass per distinct tokenizer, shared by the tasks
        try:
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
                    per_task.append(runner.postprocess(texts, windows, probs))
            outputs: list[list[TaskOutput] | None] = [list(row) for row in zip(*per_task, strict=True)] if per_task else [[] for _ in notes]
        except Exception:
            log.exception("inference failed for a batch of %d notes; retrying one by one", len(notes))
            outputs = []
            with result.timed("infer"):
                for record, note in notes:
                    try:
                        outputs.append([runner([note.text])[0] for runner in self.runners])
                    except Exception as exc:
                        log.error("inference failed for %s[%d]@%d: %s", record.topic, record.partition, record.offset, type(exc).__name__)
                        outputs.append(None)
        return outputs

    def _emit(self, result: BatchResult, notes: list[tuple[InRecord, ClinicalNote]], outputs: list[list[TaskOutput] | None]) -> None:
        with result.timed("encode"):
            self._encode(result, notes, outputs)

    def _encode(self, result: BatchResult, notes: list[tuple[InRecord, ClinicalNote]], outputs: list[list[TaskOutput] | None]) -> None:
        now = utc_now()
        for (record, note), task_outputs in zip(notes, outputs, strict=True):
            if task_outputs is None:
                self._dead(result, record, ErrorKind.processing_error, "model inference failed for this note")
                continue
            status, reasons = self.policy.route([d for out in task_outputs for d in out.decisions])
            extraction = Extraction.of_note(note, status, [out.result for out in task_outputs], now)
            key = note.note_id.encode("utf-8")
            encoded = self._extraction_codec.encode(extraction)
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
            if reasons:
                task = ReviewTask(note_id=note.note_id, revision=0, note_type=note.note_type, created_at=now, reasons=reasons)
                result.records.append(OutRecord(self.topics.review, key, self._review_codec.encode(task)))
                result.routed_to_review += 1
                for reason in reasons:
                    result.review_reasons[(reason.task, reason.kind.value, reason.label)] += 1
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
