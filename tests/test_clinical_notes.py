"""The shipped disease model with its clinical layer on notes written in four styles (discharge summary, radiology
report, progress note, ED note): names, headers and line breaks never come out, and what comes out reads right."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.clinical.annotator import ClinicalAnnotator
from agents.clinical.coding import Icd10Coder
from agents.pipeline import ExtractionPipeline
from agents.routing import RoutingPolicy
from agents.types import InRecord
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import Entity, Extraction
from streams.settings import Settings
from streams.worker import build_runners
from tests.conftest import REPO

NOTES = Path(__file__).parent / "data" / "clinical_notes"
PLAIN = Codecs()


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Entity]]:
    settings = Settings.load(REPO / "ehrstream.toml")
    settings = settings.model_copy(update={"tasks": [t for t in settings.tasks if t.name == "disease"], "device": "cpu"})
    index = tmp_path_factory.mktemp("icd") / "index"
    coder = Icd10Coder.build(index, prefixes=("C34", "C50", "I10", "I26", "I50", "J93", "J90", "K50", "R07", "R50", "E11", "J44"))
    pipeline = ExtractionPipeline(
        build_runners(settings),
        RoutingPolicy(settings.tasks),
        settings.topics,
        500_000,
        codecs=PLAIN,
        clinical={"disease": ClinicalAnnotator(coder)},
    )
    out = {}
    for path in sorted(NOTES.glob("*.txt")):
        note = ClinicalNote(
            note_id=path.stem, patient_id="p", note_type=path.stem, created_at="2026-11-01T00:00:00Z", text=path.read_text(), source="test"
        )
        result = pipeline.process([InRecord(PLAIN.of(ClinicalNote).encode(note), None, "notes", 0, 0)])
        (record,) = [r for r in result.records if r.topic == settings.topics.extractions]
        out[path.stem] = PLAIN.of(Extraction).decode(record.value).results[0].entities
    return out


def _find(entities: list[Entity], text: str) -> Entity:
    return next(e for e in entities if e.text.lower() == text.lower())


def test_no_entity_is_a_name_a_header_or_crosses_a_line(extracted: dict[str, list[Entity]]) -> None:
    everything = [e for found in extracted.values() for e in found]
    assert everything and all("\n" not in e.text for e in everything)
    assert not any(w in e.text for e in everything for w in ("Harold", "Wexler", "HISTORY", "DIAGNOSES", "IMPRESSION"))


def test_assertion_section_and_code_read_as_a_clinician_would(extracted: dict[str, list[Entity]]) -> None:
    summary, radiology = extracted["discharge_summary"], extracted["radiology_report"]
    chest_pain = [e for e in summary if e.text == "chest pain"]
    assert [(e.assertion.value, e.section) for e in chest_pain] == [("absent", "history_of_present_illness"), ("hypothetical", "plan")]
    hypertension = _find(summary, "Hypertension")
    assert (hypertension.assertion.value, hypertension.section, hypertension.codes[0].code) == ("historical", "past_medical_history", "I10")
    assert _find(summary, "breast cancer").assertion.value == "family"
    assert _find(radiology, "pneumothorax").assertion.value == "absent"
    cancer = _find(radiology, "lung cancer")
    assert (cancer.assertion.value, cancer.assertion_cue, cancer.codes[0].code[:3]) == ("possible", "cannot be excluded", "C34")
    assert _find(extracted["ed_note"], "Crohn disease").assertion.value == "family"
