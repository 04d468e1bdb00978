"""Models to ClickHouse rows (JSONEachRow), one function per table."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson

from schemas.dead_letter import DeadLetter
from schemas.extraction import Extraction
from schemas.review_decision import Change, ReviewDecision
from schemas.review_task import ReviewTask

TABLE_COLUMNS: dict[str, list[str]] = {
    "extractions": [
        "note_id",
        "revision",
        "patient_id",
        "encounter_id",
        "note_type",
        "source",
        "created_at",
        "text",
        "status",
        "models",
        "doc_labels",
        "entities",
        "entity_context",
        "entity_state",
        "label_state",
        "processed_at",
        "kafka_partition",
        "kafka_offset",
    ],
    "review_tasks": ["note_id", "revision", "note_type", "created_at", "audit", "priority", "reasons"],
    "review_decisions": [
        "decision_id",
        "note_id",
        "base_revision",
        "reviewer_id",
        "decided_at",
        "changes",
        "comment",
        "kafka_partition",
        "kafka_offset",
    ],
    "dead_letters": [
        "source_topic",
        "source_partition",
        "source_offset",
        "stage",
        "error_kind",
        "message",
        "raw_base64",
        "key_base64",
        "failed_at",
    ],
}


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def extraction_row(e: Extraction, partition: int, offset: int) -> dict[str, Any]:
    return {
        "note_id": e.note_id,
        "revision": e.revision,
        "patient_id": e.patient_id,
        "encounter_id": e.encounter_id,
        "note_type": e.note_type,
        "source": e.source,
        "created_at": _ts(e.created_at),
        "text": e.text,
        "status": e.status.value,
        "models": {r.task: f"{r.model_name}@{r.model_version}" for r in e.results},
        "doc_labels": [{"task": r.task, "label": lab.label, "probability": lab.probability} for r in e.results for lab in r.labels],
        "entities": [
            {"task": r.task, "label": en.label, "start": en.start, "end": en.end, "text": en.text, "confidence": en.confidence}
            for r in e.results
            for en in r.entities
        ],
        "entity_context": [
            {
                "assertion": en.assertion.value,
                "assertion_cue": en.assertion_cue,
                "section": en.section,
                "codes": [{"system": c.system, "code": c.code, "display": c.display, "score": c.score} for c in en.codes],
            }
            for r in e.results
            for en in r.entities
        ],
        "entity_state": [en.state.value for r in e.results for en in r.entities],
        "label_state": {r.task: r.label_state.value for r in e.results if r.labels},
        "processed_at": _ts(e.processed_at),
        "kafka_partition": partition,
        "kafka_offset": offset,
    }


def review_task_row(t: ReviewTask) -> dict[str, Any]:
    return {
        "note_id": t.note_id,
        "revision": t.revision,
        "note_type": t.note_type,
        "created_at": _ts(t.created_at),
        "audit": t.audit,
        "priority": t.priority,
        "reasons": [
            {
                "task": r.task,
                "kind": r.kind.value,
                "label": r.label,
                "start": r.start,
                "end": r.end,
                "confidence": r.confidence,
                "threshold": r.threshold,
            }
            for r in t.reasons
        ],
    }


def _change_label(change: Change) -> str:
    """The label a change is about: the model's (before) or, for an added span, the reviewer's (after)."""
    for side in (change.before, change.after):
        if side:
            try:
                label = json.loads(side).get("label")
            except (ValueError, AttributeError):
                continue
            if isinstance(label, str):
                return label
    return ""


def review_decision_row(d: ReviewDecision, partition: int, offset: int) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id,
        "note_id": d.note_id,
        "base_revision": d.base_revision,
        "reviewer_id": d.reviewer_id,
        "decided_at": _ts(d.decided_at),
        "changes": [
            {"task": c.task, "action": c.action.value, "label": _change_label(c), "before": c.before, "after": c.after} for c in d.changes
        ],
        "comment": d.comment,
        "kafka_partition": partition,
        "kafka_offset": offset,
    }


def dead_letter_row(d: DeadLetter) -> dict[str, Any]:
    return {
        "source_topic": d.source_topic,
        "source_partition": d.source_partition,
        "source_offset": d.source_offset,
        "stage": d.stage,
        "error_kind": d.error_kind.value,
        "message": d.message,
        "raw_base64": base64.b64encode(d.raw).decode("ascii"),
        "key_base64": base64.b64encode(d.key).decode("ascii") if d.key is not None else None,
        "failed_at": _ts(d.failed_at),
    }


def json_each_row(rows: Iterable[dict[str, Any]]) -> bytes:
    """JSONEachRow data (UTF-8, one object per line). orjson: about 9x faster than ``json`` on these rows (0.03 against
    0.28 ms per note of the tiny-model bench, whose review tasks are long), and this runs for every row the sink writes."""
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)
