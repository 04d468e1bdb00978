"""Publishing notes from files: validate each record, send the good ones, account for every record.

Reads ehrstream's own JSONL (one note object per line) or CSV (a header naming the ClinicalNote
fields; ``meta`` as a JSON object), FHIR R4 (Bundles or DocumentReferences) and HL7 v2 (MDM^T02,
ORU^R01) through ``streams.ingest``; a directory means its files of that format. Each valid
note is sent as Avro single-object encoding (or JSON with ``wire="json"``), keyed by
``note_id`` so a note's versions stay in order. Rejected records are reported by position
(line, Bundle note or message number) and reason, never by content.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from tqdm import tqdm

from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs, validation_summary
from streams.ingest import InputFormat, input_files, read_format
from streams.kafka.clients import producer as make_producer
from streams.kafka.schema_registry import build_codecs
from streams.settings import Settings

Wire = Literal["avro", "json"]


@dataclass
class PublishSummary:
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    #: (position, reason, file) of the first rejected records; the file when the input was a directory
    examples: list[tuple[int, str, str | None]] = field(default_factory=list)

    def reject(self, position: int, reason: str, file: str | None = None) -> None:
        self.rejected += 1
        self.reasons[reason.split(":", 1)[0]] += 1
        if len(self.examples) < 20:
            self.examples.append((position, reason, file))

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
            "examples": [{"line": n, "reason": r, **({"file": f} if f else {})} for n, r, f in self.examples],
        }


def validate(record: dict[str, Any] | str) -> ClinicalNote | str:
    if isinstance(record, str):
        return record
    try:
        note = ClinicalNote.model_validate(record)
    except ValidationError as exc:
        return f"validation_error: {validation_summary(exc)}"
    if not note.text.strip():
        return "empty_text: note text is empty or whitespace only"
    return note


def encode(note: ClinicalNote, wire: Wire, codecs: Codecs) -> bytes:
    if wire == "json":
        return note.model_dump_json().encode("utf-8")
    return codecs.of(ClinicalNote).encode(note)


def read_notes(path: Path, fmt: InputFormat = "notes") -> Iterator[tuple[str | None, int, ClinicalNote | str]]:
    """(file name when ``path`` is a directory, position, note or the reason it was rejected) for every record."""
    for file in input_files(path, fmt):
        name = file.name if path.is_dir() else None
        for number, record in read_format(file, fmt):
            yield name, number, validate(record)


def publish_file(
    path: Path,
    settings: Settings,
    bootstrap: str,
    topic: str,
    wire: Wire = "avro",
    progress: bool = True,
    fmt: InputFormat = "notes",
    codecs: Codecs | None = None,
) -> PublishSummary:
    codecs = codecs or build_codecs(settings)
    summary = PublishSummary()
    total = None
    if progress and fmt == "notes" and path.is_file():
        total = sum(1 for _ in path.open(encoding="utf-8", errors="replace"))
    producer = make_producer(settings, bootstrap)
    try:
        records = read_notes(path, fmt)
        for file, number, note in tqdm(records, total=total, desc=f"publishing {path.name}", unit="note", disable=not progress):
            if isinstance(note, str):
                summary.reject(number, note, file)
                continue
            producer.send(topic, key=note.note_id.encode("utf-8"), value=encode(note, wire, codecs))
            summary.accepted += 1
        producer.flush()
    finally:
        producer.close(timeout=10)
    return summary
