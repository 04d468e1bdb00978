"""DeadLetter: a record that could not be processed, kept whole (mirrors dead_letter.avsc)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from schemas._base import AvroModel, TimestampMillis, utc_now


class ErrorKind(StrEnum):
    undecodable = "undecodable"
    invalid_json = "invalid_json"
    invalid_avro = "invalid_avro"
    unknown_schema = "unknown_schema"
    validation_error = "validation_error"
    empty_text = "empty_text"
    oversized = "oversized"
    processing_error = "processing_error"
    #: a review decision whose base revision of the note is not in ClickHouse
    unknown_note = "unknown_note"


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

    @classmethod
    def of_record(
        cls,
        raw: bytes,
        key: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        kind: ErrorKind,
        message: str,
        stage: str,
        max_raw_bytes: int,
    ) -> DeadLetter:
        """A letter for the record at ``topic[partition]@offset``. Raw bytes beyond ``max_raw_bytes`` are cut so the
        letter itself can be produced; the message then says so, and the whole original stays where it is."""
        raw = bytes(raw)
        if len(raw) > max_raw_bytes:
            message += f" (raw cut from {len(raw)} to {max_raw_bytes} bytes; the original is at {topic}[{partition}]@{offset})"
            raw = raw[:max_raw_bytes]
        return cls(
            raw=raw,
            key=key,
            error_kind=kind,
            message=message,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            stage=stage,
            failed_at=utc_now(),
        )
