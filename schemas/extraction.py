"""Extraction: every task's result for one note (mirrors extraction.avsc)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas._base import AvroModel, TimestampMillis
from schemas.clinical_note import ClinicalNote


class ExtractionStatus(StrEnum):
    auto_accepted = "auto_accepted"
    pending_review = "pending_review"
    reviewed = "reviewed"
    #: the review budget ran out before a reviewer reached the note: its flagged items stay as the model gave them,
    #: marked ``over_budget``
    over_budget = "over_budget"


class ItemState(StrEnum):
    """Where one item (an entity, a document label) stands: items are routed one by one, not note by note."""

    #: the model's item cleared every threshold it is judged by: usable now
    accepted = "accepted"
    #: flagged: some decision about it fell below its threshold; it waits for a reviewer
    pending = "pending"
    #: a reviewer decided it (kept, corrected or added it)
    reviewed = "reviewed"
    #: flagged, but the review budget ran out before a reviewer reached it: kept as the model gave it, unreviewed
    over_budget = "over_budget"


class TaskKind(StrEnum):
    classification = "classification"
    ner = "ner"


class Assertion(StrEnum):
    """What a mention asserts about the patient (the ConText / i2b2 assertion classes)."""

    #: the condition is there now
    present = "present"
    #: negated: "no pneumonia", "denies chest pain"
    absent = "absent"
    #: uncertain: "possible pneumonia", "rule out MI", "cannot exclude"
    possible = "possible"
    #: conditional or future: "return if fever develops"
    hypothetical = "hypothetical"
    #: in the past: "history of MI", a Past Medical History section
    historical = "historical"
    #: about someone else: "mother with breast cancer", a Family History section
    family = "family"


class Code(BaseModel):
    """A candidate code for an entity, from a code system (ICD-10-CM), with the coder's score in [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str
    code: str
    display: str
    score: float = Field(ge=0.0, le=1.0)


class DocumentLabel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    probability: float = Field(ge=0.0, le=1.0)


class Entity(BaseModel):
    """A span of the note's text: ``text == note.text[start:end]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str
    confidence: float = Field(ge=0.0, le=1.0)
    assertion: Assertion = Assertion.present
    #: the phrase that decided the assertion ("denies", "history of"), or the section header it came from
    assertion_cue: str | None = None
    #: the canonical section the entity is in (``agents.clinical.sections``), ``None`` before any header
    section: str | None = None
    state: ItemState = ItemState.accepted
    #: code candidates, best first (the first is the entity's code)
    codes: list[Code] = Field(default_factory=list)


class TaskResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    kind: TaskKind
    model_name: str
    model_version: str
    #: classification: the document label's state (NER tasks: accepted; each entity has its own)
    label_state: ItemState = ItemState.accepted
    #: classification: every label with its probability, most probable first
    labels: list[DocumentLabel] = Field(default_factory=list)
    #: ner: entity spans in text order
    entities: list[Entity] = Field(default_factory=list)


class Extraction(AvroModel):
    avro_schema: ClassVar[str] = "extraction.avsc"

    note_id: str
    revision: int = 0
    patient_id: str
    encounter_id: str | None = None
    note_type: str
    source: str
    created_at: TimestampMillis
    text: str
    status: ExtractionStatus
    results: list[TaskResult]
    processed_at: TimestampMillis

    @classmethod
    def of_note(cls, note: ClinicalNote, status: ExtractionStatus, results: list[TaskResult], processed_at: datetime) -> Extraction:
        """The model's revision (0) of a note's extraction, carrying the note's identity and text."""
        return cls(
            note_id=note.note_id,
            revision=0,
            patient_id=note.patient_id,
            encounter_id=note.encounter_id,
            note_type=note.note_type,
            source=note.source,
            created_at=note.created_at,
            text=note.text,
            status=status,
            results=results,
            processed_at=processed_at,
        )
