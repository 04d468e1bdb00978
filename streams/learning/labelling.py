"""``ehrstream label``: LLM pre-labels in, training data and review tasks out.

Confident labels (>= ``min_confidence``) are written as training data (ehrstream JSONL, which
``ehrstream train --data FILE`` reads); the rest go to review: written to ``review.jsonl`` and,
with ``publish``, sent as a ``pending_review`` Extraction plus a ReviewTask, so they enter the
review queue and ClickHouse like any other note. Outputs the LLM got wrong (invalid JSON,
wrong schema, a mention not in the note) are rejected records with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from agents.learning.llm_labeller import Labelled, LlmLabeller, training_record
from schemas._base import utc_now
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import DocumentLabel, Entity, Extraction, ExtractionStatus, TaskKind, TaskResult
from schemas.review_task import ReasonKind, ReviewReason, ReviewTask
from streams.ingest.notes import read_records
from streams.ingest.publish import validate
from streams.kafka.clients import producer as make_producer
from streams.kafka.schema_registry import build_codecs
from streams.settings import Settings


@dataclass
class LabelSummary:
    notes: int = 0
    training: int = 0
    review: int = 0
    rejected: int = 0
    invalid_input: int = 0


def review_records(note: ClinicalNote, labelled: Labelled, labeller: LlmLabeller, threshold: float) -> tuple[Extraction, ReviewTask]:
    if labeller.kind is TaskKind.classification:
        ranked = sorted(labelled.distribution.items(), key=lambda kv: -kv[1])
        result = TaskResult(
            task=labeller.task,
            kind=labeller.kind,
            model_name=labeller.name,
            model_version="prelabel",
            labels=[DocumentLabel(label=k, probability=min(1.0, v)) for k, v in ranked],
        )
        reasons = [
            ReviewReason(
                task=labeller.task, kind=ReasonKind.document_label, label=ranked[0][0], confidence=labelled.confidence, threshold=threshold
            )
        ]
    else:
        entities = [
            Entity(label=lab, start=s, end=e, text=note.text[s:e], confidence=min(1.0, labelled.confidence)) for s, e, lab in labelled.spans
        ]
        result = TaskResult(task=labeller.task, kind=labeller.kind, model_name=labeller.name, model_version="prelabel", entities=entities)
        reasons = [
            ReviewReason(
                task=labeller.task,
                kind=ReasonKind.entity,
                label=e.label,
                start=e.start,
                end=e.end,
                confidence=labelled.confidence,
                threshold=threshold,
            )
            for e in entities
        ]
        if not reasons:
            reasons = [
                ReviewReason(
                    task=labeller.task,
                    kind=ReasonKind.possible_entity,
                    label=labeller.labels[0],
                    confidence=labelled.confidence,
                    threshold=threshold,
                )
            ]
    now = utc_now()
    extraction = Extraction.of_note(note, ExtractionStatus.pending_review, [result], now)
    return extraction, ReviewTask(note_id=note.note_id, revision=0, note_type=note.note_type, created_at=now, reasons=reasons)


def label_file(
    labeller: LlmLabeller,
    input_file: Path,
    out_dir: Path,
    min_confidence: float,
    batch_size: int,
    publish_to: tuple[Settings, str] | None = None,
) -> LabelSummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = LabelSummary()
    notes: list[ClinicalNote] = []
    for _line, record in read_records(input_file):
        note = validate(record)
        if isinstance(note, str):
            summary.invalid_input += 1
        else:
            notes.append(note)
    producer = make_producer(*publish_to) if publish_to else None
    codecs = build_codecs(publish_to[0]) if publish_to else Codecs()
    with (
        (out_dir / "train.jsonl").open("w", encoding="utf-8") as train,
        (out_dir / "review.jsonl").open("w", encoding="utf-8") as review,
        (out_dir / "rejected.jsonl").open("w", encoding="utf-8") as rejected,
    ):
        for first in tqdm(range(0, len(notes), batch_size), desc=f"labelling with {labeller.name}", unit="batch"):
            batch = notes[first : first + batch_size]
            for note, labelled in zip(batch, labeller([n.text for n in batch]), strict=True):
                summary.notes += 1
                if labelled.rejected is not None:
                    rejected.write(json.dumps({"note_id": note.note_id, "reason": labelled.rejected}) + "\n")
                    summary.rejected += 1
                elif labelled.confidence >= min_confidence:
                    train.write(json.dumps(training_record(note.note_id, note.text, labeller.kind, labelled, labeller.name)) + "\n")
                    summary.training += 1
                else:
                    review.write(json.dumps(training_record(note.note_id, note.text, labeller.kind, labelled, labeller.name)) + "\n")
                    summary.review += 1
                    if producer is not None and publish_to is not None:
                        extraction, task = review_records(note, labelled, labeller, min_confidence)
                        key = note.note_id.encode()
                        producer.send(publish_to[0].topics.extractions, key=key, value=codecs.of(Extraction).encode(extraction))
                        producer.send(publish_to[0].topics.review, key=key, value=codecs.of(ReviewTask).encode(task))
    if producer is not None:
        producer.flush()
        producer.close()
    return summary
