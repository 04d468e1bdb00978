"""ehrstream's contracts: Avro schemas, the pydantic models that mirror them, and the codecs."""

from schemas.clinical_note import ClinicalNote
from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.extraction import DocumentLabel, Entity, Extraction, ExtractionStatus, TaskKind, TaskResult
from schemas.review_decision import Change, ChangeAction, ReviewDecision
from schemas.review_task import ReasonKind, ReviewReason, ReviewTask

ALL_MODELS = (ClinicalNote, Extraction, ReviewTask, ReviewDecision, DeadLetter)

__all__ = [
    "ALL_MODELS",
    "Change",
    "ChangeAction",
    "ClinicalNote",
    "DeadLetter",
    "DocumentLabel",
    "Entity",
    "ErrorKind",
    "Extraction",
    "ExtractionStatus",
    "ReasonKind",
    "ReviewDecision",
    "ReviewReason",
    "ReviewTask",
    "TaskKind",
    "TaskResult",
]
