"""``ehrstream clinical-check``: what the NER task with its clinical layer makes of a FHIR bulk export's notes, scored
against the export's own coded conditions (Synthea writes each encounter's conditions into its note).

Reported (counts over every entity of every note):

- layout: entities that contain a line break, touch a section header, touch a patient's name (the export's Patient
  names, used here only to check), or are only a terminology tag ("disorder", "finding");
- "No Known Allergies": entities inside it that are asserted present;
- recall: of each (note, coded condition of the note's encounter) whose display occurs in the note's text, the share
  an entity overlaps;
- codes: for those, the share whose entity's first ICD-10-CM code is in the category (first three characters) of the
  condition's code in the mapping file (SNOMED code -> ICD-10-CM, ``-`` where none exists), and the full-code share;
- assertion counts by status.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.clinical.sections import find_sections
from agents.pipeline import ExtractionPipeline
from schemas.clinical_note import ClinicalNote
from schemas.extraction import Extraction
from streams.ingest.fhir_export import CodedCondition, encounter_conditions, patient_name_words


@dataclass
class CheckResult:
    notes: int = 0
    entities: int = 0
    with_line_break: int = 0
    in_header: int = 0
    with_name: int = 0
    only_tag: int = 0
    no_known_allergies_present: int = 0
    condition_mentions: int = 0
    found: int = 0
    coded: int = 0
    category_right: int = 0
    code_right: int = 0
    assertions: Counter[str] = field(default_factory=Counter)
    misses: Counter[str] = field(default_factory=Counter)
    wrong_codes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not isinstance(v, Counter)}
        out["recall"] = round(self.found / self.condition_mentions, 4) if self.condition_mentions else None
        out["category_accuracy"] = round(self.category_right / self.coded, 4) if self.coded else None
        out["code_accuracy"] = round(self.code_right / self.coded, 4) if self.coded else None
        out["assertions"] = dict(self.assertions.most_common())
        out["missed_conditions"] = dict(self.misses.most_common(10))
        out["wrong_codes"] = dict(self.wrong_codes.most_common(10))
        return out


def load_mapping(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as fh:
        return {row["snomed"]: row["icd10cm"] for row in csv.DictReader(fh, delimiter="\t") if row["icd10cm"] != "-"}


def run_check(
    pipeline: ExtractionPipeline, notes: list[ClinicalNote], export_dir: Path, mapping: dict[str, str], task: str, batch: int = 32
) -> CheckResult:
    conditions = encounter_conditions(export_dir)
    names = patient_name_words(export_dir)
    codec = pipeline.codecs.of(Extraction)
    result = CheckResult()
    for lo in range(0, len(notes), batch):
        chunk = notes[lo : lo + batch]
        records = [_record(pipeline, note) for note in chunk]
        out = pipeline.process(records)
        extractions = [codec.decode(r.value) for r in out.records if r.topic == pipeline.topics.extractions]
        for extraction in extractions:
            _score(result, extraction, task, conditions, names, mapping)
    return result


def _record(pipeline: ExtractionPipeline, note: ClinicalNote) -> Any:
    from agents.types import InRecord

    return InRecord(pipeline.codecs.of(ClinicalNote).encode(note), note.note_id.encode(), "check", 0, 0)


def _score(
    result: CheckResult,
    extraction: Extraction,
    task: str,
    conditions: dict[str, list[CodedCondition]],
    names: set[str],
    mapping: dict[str, str],
) -> None:
    text = extraction.text
    entities = [e for r in extraction.results if r.task == task for e in r.entities]
    result.notes += 1
    result.entities += len(entities)
    sections = find_sections(text)
    starts = np.array([e.start for e in entities], dtype=np.int64)
    ends = np.array([e.end for e in entities], dtype=np.int64)
    in_header = sections.in_header(starts, ends) if entities else np.zeros(0, dtype=bool)
    result.in_header += int(in_header.sum())
    allergy = [(m.start(), m.end()) for m in re.finditer(r"no known allergies", text, re.IGNORECASE)]
    for e in entities:
        result.assertions[e.assertion.value] += 1
        result.with_line_break += "\n" in e.text
        result.with_name += any(w.lower() in names for w in re.findall(r"[\w']+", e.text))
        result.only_tag += e.text.strip().lower() in {"disorder", "finding", "situation", "procedure"}
        if e.assertion.value == "present" and any(a <= e.start < b for a, b in allergy):
            result.no_known_allergies_present += 1
    lower = text.lower()
    for condition in conditions.get(extraction.encounter_id or "", []):
        snomed, name = condition.code, condition.name.lower()
        for m in re.finditer(re.escape(name), lower):
            result.condition_mentions += 1
            hit = [e for e in entities if e.start < m.end() and e.end > m.start()]
            if not hit:
                result.misses[name] += 1
                continue
            result.found += 1
            gold = mapping.get(snomed)
            if gold is None:
                continue
            result.coded += 1
            best = max(hit, key=lambda e: min(e.end, m.end()) - max(e.start, m.start()))
            got = best.codes[0].code if best.codes else ""
            result.category_right += got[:3] == gold[:3]
            result.code_right += got == gold
            if got != gold:
                result.wrong_codes[f"{name}: {got or '-'} (want {gold})"] += 1


def check_export(settings: Any, export_dir: Path, mapping_file: Path, task: str, device: str, held_out: bool = False) -> dict[str, Any]:
    """:func:`run_check` with the configured task (its model, quantisation and clinical layer) on ``device``.
    ``held_out``: only the patients ``ehrstream silver-labels`` keeps out of training (its dev split)."""
    import time

    from agents.model_dir import with_model_thresholds
    from agents.routing import RoutingPolicy
    from streams.errors import ConfigError
    from streams.ingest.publish import read_notes
    from streams.kafka.schema_registry import build_codecs
    from streams.worker import build_clinical, build_runners

    settings = settings.model_copy(update={"tasks": [t for t in settings.tasks if t.name == task], "device": device})
    if not settings.tasks:
        raise ConfigError("task", f"no task named {task!r} in the settings")
    pipeline = ExtractionPipeline(
        build_runners(settings),
        RoutingPolicy([with_model_thresholds(t) for t in settings.tasks], settings.review.audit_share),
        settings.topics,
        settings.max_note_bytes,
        settings.max_record_bytes,
        codecs=build_codecs(settings),
        clinical=build_clinical(settings),
    )
    notes = [n for _, _, n in read_notes(export_dir / "DocumentReference.ndjson", "fhir") if not isinstance(n, str)]
    if held_out:
        from streams.learning.silver_labels import dev_patients

        kept = dev_patients(sorted({n.patient_id for n in notes}))
        notes = [n for n in notes if n.patient_id in kept]
    started = time.perf_counter()
    result = run_check(pipeline, notes, export_dir, load_mapping(mapping_file), task)
    return {**result.as_dict(), "patients": len({n.patient_id for n in notes}), "seconds": round(time.perf_counter() - started, 1)}
