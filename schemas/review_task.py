"""ReviewTask: a note that needs a human, and why (mirrors review_task.avsc)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from schemas._base import AvroModel, TimestampMillis


class ReasonKind(StrEnum):
    #: the document label's probability is below the threshold
    document_label = "document_label"
    #: an extracted span's confidence is below the threshold
    entity = "entity"
    #: a word tagged O whose probability of O is below the threshold (a possible missed entity)
    possible_entity = "possible_entity"
    #: an entity's best code scores below the code threshold (the span is the entity's)
    code = "code"
    #: cues of more than one status govern an entity, so its assertion is a guess (the span is the entity's)
    assertion = "assertion"


class ReviewReason(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    kind: ReasonKind
    label: str
    start: int | None = None
    end: int | None = None
    confidence: float
    threshold: float


class ReviewTask(AvroModel):
    avro_schema: ClassVar[str] = "review_task.avsc"

    note_id: str
    revision: int
    note_type: str
    created_at: TimestampMillis
    #: chosen at random for an audit: the reviewer checks every accepted item of the note, not only the flagged ones
    audit: bool = False
    #: expected value of reviewing it (uncertainty of its flagged items); the queue serves the highest first
    priority: float = 0.0
    reasons: list[ReviewReason]
