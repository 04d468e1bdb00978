"""DeadLetter: a record that could not be processed, kept whole (mirrors dead_letter.avsc)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from schemas._base import AvroModel, TimestampMillis


class ErrorKind(StrEnum):
    undecodable = "undecodable"
    invalid_json = "invalid_json"
    invalid_avro = "invalid_avro"
    unknown_schema = "unknown_schema"
    validation_error = "validation_error"
    empty_text = "empty_text"
    oversized = "oversized"
    processing_error = "processing_error"


class DeadLetter(AvroModel):
    avro_schema: ClassVar[str] = "dead_letter.avsc"

    raw: bytes
    key: bytes | None = None
    error_kind: ErrorKind
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    stage: str
    failed_at: TimestampMillis
