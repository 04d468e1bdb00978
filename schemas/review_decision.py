"""ReviewDecision: a reviewer's verdict on one note (mirrors review_decision.avsc)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas._base import AvroModel, TimestampMillis
from schemas.extraction import TaskResult


class ChangeAction(StrEnum):
    accept = "accept"
    reject_span = "reject_span"
    add_span = "add_span"
    relabel_span = "relabel_span"
    set_document_label = "set_document_label"
    #: the reviewer changed a kept span's assertion status
    set_assertion = "set_assertion"
    #: the reviewer changed a kept span's code (or removed it)
    set_code = "set_code"


class DecisionOutcome(StrEnum):
    #: a reviewer decided the note
    reviewed = "reviewed"
    #: nobody did: the queue was past its budget and the note was released with its flagged items marked over_budget
    over_budget = "over_budget"


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    action: ChangeAction
    #: JSON of the span or label before the change (None when added)
    before: str | None = None
    #: JSON of the span or label after the change (None when removed)
    after: str | None = None


class ReviewDecision(AvroModel):
    avro_schema: ClassVar[str] = "review_decision.avsc"

    decision_id: str
    note_id: str
    base_revision: int
    reviewer_id: str
    decided_at: TimestampMillis
    changes: list[Change]
    comment: str | None = None
    #: the reviewed result of every task: the note's new revision (``base_revision + 1``, status ``reviewed``)
    results: list[TaskResult] = Field(default_factory=list)
    outcome: DecisionOutcome = DecisionOutcome.reviewed
