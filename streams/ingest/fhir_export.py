"""The other resources of a FHIR bulk export (``$export`` NDJSON) that checks and silver labels read beside the notes:
each patient's and each encounter's coded conditions, and the patients' names (for checks that names never come out)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.clinical.terms import without_tag


@dataclass(frozen=True)
class CodedCondition:
    code: str
    #: the display without its semantic tag: how the condition reads in a note
    name: str


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def reference_id(reference: str) -> str:
    """``Patient/abc`` -> ``abc``."""
    return reference.rsplit("/", 1)[-1]


def _conditions(export_dir: Path, by: str) -> dict[str, list[CodedCondition]]:
    out: dict[str, list[CodedCondition]] = {}
    for resource in read_ndjson(export_dir / "Condition.ndjson"):
        owner = resource.get(by, {}).get("reference")
        coding = (resource.get("code", {}).get("coding") or [{}])[0]
        if owner and coding.get("display"):
            out.setdefault(reference_id(owner), []).append(CodedCondition(str(coding.get("code", "")), without_tag(coding["display"])))
    return out


def patient_conditions(export_dir: Path) -> dict[str, list[CodedCondition]]:
    return _conditions(export_dir, "subject")


def encounter_conditions(export_dir: Path) -> dict[str, list[CodedCondition]]:
    return _conditions(export_dir, "encounter")


def patient_name_words(export_dir: Path) -> set[str]:
    """Every given and family name of the export's patients, lower case."""
    words: set[str] = set()
    for patient in read_ndjson(export_dir / "Patient.ndjson"):
        for name in patient.get("name", []):
            words.update(w.lower() for w in [*name.get("given", []), name.get("family", "")] if w)
    return words
