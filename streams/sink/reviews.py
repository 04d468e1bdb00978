"""Applying review decisions: a decision becomes the note's next revision, status ``reviewed``.

The decision carries the reviewed results; the note's identity and text come from the
base revision already in ClickHouse (the review app showed the reviewer that row), so
the decision topic never repeats the note text. The new revision is deterministic
(``base_revision + 1``, ``processed_at = decided_at``), so a replayed decision writes the
same row and the ReplacingMergeTree keeps one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.dead_letter import ErrorKind
from schemas.errors import RecordError
from schemas.extraction import Extraction, ExtractionStatus
from schemas.review_decision import DecisionOutcome, ReviewDecision
from streams.sink.backend import ClickHouseBackend, as_utc

_BASE_COLUMNS = "note_id, revision, patient_id, encounter_id, note_type, source, created_at, text"


@dataclass(frozen=True)
class PendingDecision:
    decision: ReviewDecision
    partition: int
    offset: int
    raw: bytes
    key: bytes | None


def base_rows(backend: ClickHouseBackend, note_ids: Sequence[str]) -> dict[tuple[str, int], list[Any]]:
    """Every stored revision of these notes, keyed by (note_id, revision)."""
    db = backend.database  # validated identifier; values are bound
    result = backend.query(
        f"SELECT {_BASE_COLUMNS} FROM {db}.extractions FINAL WHERE note_id IN {{ids:Array(String)}}",  # noqa: S608
        {"ids": sorted(set(note_ids))},
    )
    return {(str(row[0]), int(row[1])): row for row in result.rows}


def reviewed_revision(base: list[Any] | None, decision: ReviewDecision) -> Extraction:
    """The note's revision ``base_revision + 1`` holding the decision's results; RecordError if it cannot be built."""
    if base is None:
        raise RecordError(
            ErrorKind.unknown_note,
            f"revision {decision.base_revision} of the decision's note is not in ClickHouse (decision_id {decision.decision_id})",
        )
    note_id, _revision, patient_id, encounter_id, note_type, source, created_at, text = base
    for result in decision.results:
        for entity in result.entities:
            if entity.end > len(text) or text[entity.start : entity.end] != entity.text:
                raise RecordError(
                    ErrorKind.validation_error,
                    f"decision {decision.decision_id}: {result.task} span {entity.start}-{entity.end} does not match the note text",
                )
    return Extraction(
        note_id=note_id,
        revision=decision.base_revision + 1,
        patient_id=patient_id,
        encounter_id=encounter_id,
        note_type=note_type,
        source=source,
        created_at=as_utc(created_at),
        text=text,
        status=ExtractionStatus.over_budget if decision.outcome is DecisionOutcome.over_budget else ExtractionStatus.reviewed,
        results=decision.results,
        processed_at=decision.decided_at,
    )
