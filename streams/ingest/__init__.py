"""Input formats EHR feeds send notes in: ehrstream's own JSONL/CSV, FHIR R4 and HL7 v2.

Each reader yields ``(position, fields)`` per note, or ``(position, reason)`` for one that cannot be
a note; ``streams.ingest.publish`` validates the fields as a ClinicalNote and accounts for every position.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from streams.ingest.base import Record
from streams.ingest.fhir import read_fhir
from streams.ingest.hl7v2 import read_hl7v2
from streams.ingest.notes import read_records

InputFormat = Literal["notes", "fhir", "hl7v2"]
#: the files a directory input contributes, per format
SUFFIXES: dict[str, tuple[str, ...]] = {"notes": (".jsonl", ".json", ".csv"), "fhir": (".json", ".ndjson"), "hl7v2": (".hl7", ".txt")}


def input_files(path: Path, fmt: InputFormat) -> list[Path]:
    """A file, or the format's files in a directory (sorted, not recursive)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES[fmt])
    return [path]


def read_format(path: Path, fmt: InputFormat) -> Iterator[Record]:
    if fmt == "fhir":
        return read_fhir(path)
    if fmt == "hl7v2":
        return read_hl7v2(path)
    return read_records(path)
