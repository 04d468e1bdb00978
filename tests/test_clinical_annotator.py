"""The clinical layer on a batch of model spans: layout, sections, assertion and the review decisions it adds."""

from __future__ import annotations

import numpy as np

from agents.clinical.annotator import ClinicalAnnotator
from agents.runners.columns import CODED_ASSERTIONS, TaskColumns
from agents.runners.spans import SpanArrays
from agents.types import BatchResult
from schemas.extraction import Entity, TaskKind
from schemas.review_task import ReasonKind
from streams.settings import Settings

NOTES = [
    "CHIEF COMPLAINT: cough.\nHISTORY OF PRESENT ILLNESS: No fever. History of COPD.\nFAMILY HISTORY: Mother with diabetes.",
    "# Assessment and Plan\nPneumonia versus atelectasis; no history of asthma.",
]
SPANS = [(0, "cough"), (0, "fever"), (0, "COPD"), (0, "diabetes"), (1, "Pneumonia"), (1, "asthma"), (0, "HISTORY OF PRESENT")]


class FixedCoder:
    def candidates(self, mentions: list[str]) -> list[list[dict[str, object]]]:
        return [[{"system": "ICD10CM", "code": "X00", "display": m, "score": 0.9 if m != "COPD" else 0.4}] for m in mentions]


def _columns() -> TaskColumns:
    note = np.array([n for n, _ in SPANS], dtype=np.int64)
    start = np.array([NOTES[n].index(w) for n, w in SPANS], dtype=np.int64)
    end = start + np.array([len(w) for _, w in SPANS], dtype=np.int64)
    spans = SpanArrays(note, np.zeros(len(SPANS), dtype=np.int64), start, end, np.full(len(SPANS), 0.95))
    return TaskColumns("disease", TaskKind.ner, "m", "1", ["Disease"], len(NOTES), entities=spans, possible=SpanArrays.none())


def test_every_entity_gets_its_section_assertion_cue_and_code() -> None:
    result = BatchResult()
    columns = ClinicalAnnotator(FixedCoder()).annotate(result, NOTES, _columns())
    records = columns.result_records(NOTES)
    got = {(i, e["text"]): (e["section"], e["assertion"], e["assertion_cue"]) for i, r in enumerate(records) for e in r["entities"]}
    assert got == {
        (0, "cough"): ("chief_complaint", "present", None),
        (0, "fever"): ("history_of_present_illness", "absent", "No"),
        (0, "COPD"): ("history_of_present_illness", "historical", "History of"),
        (0, "diabetes"): ("family_history", "family", "Mother"),
        (1, "Pneumonia"): ("assessment_and_plan", "possible", "versus"),
        (1, "asthma"): ("assessment_and_plan", "absent", "no history of"),
    }  # the header span is gone
    assert all(Entity.model_validate(e).codes[0].code == "X00" for r in records for e in r["entities"])
    assert {"sections", "assertion", "coding"} <= set(result.stage_seconds)


def test_doubtful_codes_and_ambiguous_assertions_are_review_decisions() -> None:
    columns = ClinicalAnnotator(FixedCoder()).annotate(BatchResult(), NOTES, _columns())
    decided = {group.kind: group for group in columns.decisions()}
    code = decided[ReasonKind.code]
    # a code is a decision only where it counts (present or historical mentions): the absent, possible and family
    # mentions' codes are not worth a reviewer's time
    assert columns.context is not None
    statuses = columns.context.assertion
    assert sorted(statuses) == ["absent", "absent", "family", "historical", "possible", "present"]
    assert sorted(code.confidence.tolist()) == [0.4, 0.9]
    assert code.item.tolist() == [k for k, s in enumerate(statuses) if s in CODED_ASSERTIONS]
    # "Pneumonia versus atelectasis; no history of asthma": only one status governs each entity
    assert decided[ReasonKind.assertion].confidence.tolist() == [1.0] * 6
    ambiguous = ClinicalAnnotator().annotate(BatchResult(), ["No pneumonia suspected."], _one("No pneumonia suspected.", "pneumonia"))
    (conf,) = {g.kind: g for g in ambiguous.decisions()}[ReasonKind.assertion].confidence.tolist()
    assert conf == 0.5


def test_records_written_from_columns_with_codes_are_fastavros_bytes() -> None:
    """The hot path writes each note's TaskResult from the columns (sections, assertion cues, code arrays included):
    the same bytes fastavro writes for the dicts of ``result_records``, whatever is flagged."""
    import io

    import fastavro

    from schemas.codec import Codecs
    from schemas.extraction import Extraction

    writer = Codecs().of(Extraction).columns_writer.item("results")
    schema = Codecs().of(Extraction).schema["fields"][9]["type"]["items"]
    texts = [*NOTES, "no entity here", "naïve 中文 😀 COPD"]
    mentions = [(0, "cough"), (0, "fever"), (0, "COPD"), (0, "diabetes"), (1, "Pneumonia"), (1, "asthma"), (3, "COPD")]
    start = np.array([texts[i].index(w) for i, w in mentions])
    note = np.array([i for i, _ in mentions], dtype=np.int64)
    ends = start + np.array([len(w) for _, w in mentions])
    spans = SpanArrays(note, np.zeros(7, dtype=np.int64), start, ends, np.array([0.95, 0.5, 1.0, 0.25, 0.7, 0.125, 0.9]))
    plain = TaskColumns("disease", TaskKind.ner, "m", "1", ["Disease"], len(texts), entities=spans, possible=SpanArrays.none())
    for columns in (plain, ClinicalAnnotator(FixedCoder()).annotate(BatchResult(), texts, plain)):
        assert columns.entities is not None
        for flagged in (None, np.arange(len(columns.entities)) % 2 == 0):
            want = []
            for record in columns.result_records(texts, flagged):
                out = io.BytesIO()
                fastavro.schemaless_writer(out, schema, record)
                want.append(out.getvalue())
            assert columns.result_rows(texts, writer, flagged).items() == want
    assert any(e["codes"] for r in columns.result_records(texts) for e in r["entities"])  # the code arrays were written


def _one(text: str, word: str) -> TaskColumns:
    start = text.index(word)
    spans = SpanArrays(np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([start]), np.array([start + len(word)]), np.array([0.9]))
    return TaskColumns("disease", TaskKind.ner, "m", "1", ["Disease"], 1, entities=spans, possible=SpanArrays.none())


def test_on_real_fhir_notes_no_entity_crosses_layout_whatever_the_model_tags(tiny_settings: Settings) -> None:
    """``ehrstream clinical-check`` with a random tiny NER model (it tags arbitrary words, names and headers included)
    on the held-out Synthea patients: the layer alone guarantees the layout rules and the "No Known Allergies" reading."""
    from streams.clinical.synthea_check import check_export
    from tests.conftest import DATASETS, REPO

    export = DATASETS / "synthea_fhir"
    result = check_export(tiny_settings, export, REPO / "tests/data/icd10cm/synthea_conditions.tsv", "disease", "cpu", held_out=True)
    assert result["patients"] == 3 and result["notes"] > 100 and result["entities"] > 100
    layout = {k: result[k] for k in ("with_line_break", "in_header", "with_name", "only_tag", "no_known_allergies_present")}
    assert layout == dict.fromkeys(layout, 0)


def test_a_span_that_starts_with_its_own_negation_starts_after_it() -> None:
    text = "# Allergies\nNo Known Allergies.\nDenies chest pain."
    columns = ClinicalAnnotator().annotate(BatchResult(), [text], _one(text, "No Known Allergies"))
    (entity,) = columns.result_records([text])[0]["entities"]
    assert (entity["text"], entity["assertion"], entity["assertion_cue"], entity["section"]) == (
        "Allergies",
        "absent",
        "No Known",
        "allergies",
    )
    only_cue = ClinicalAnnotator().annotate(BatchResult(), [text], _one(text, "Denies"))
    assert only_cue.result_records([text])[0]["entities"] == []
