"""ClinicalNote: one note as an EHR feed publishes it (mirrors clinical_note.avsc)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas._base import AvroModel, TimestampMillis


class ClinicalNote(AvroModel):
    avro_schema: ClassVar[str] = "clinical_note.avsc"

    note_id: str = Field(min_length=1, max_length=256)
    patient_id: str = Field(min_length=1, max_length=256)
    encounter_id: str | None = None
    note_type: str = Field(min_length=1, max_length=128)
    author: str | None = None
    created_at: TimestampMillis
    text: str
    source: str = Field(min_length=1, max_length=256)
    meta: dict[str, str] = Field(default_factory=dict)
