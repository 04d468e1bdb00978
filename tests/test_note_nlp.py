"""The analyst views of clinical meaning on chdb: OMOP-shaped ``note_nlp`` and ``patient_problems``, from rows the sink
writes (and rows written before entities had assertion, section and codes)."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.extraction import Assertion, Code, Entity, Extraction, ExtractionStatus, TaskKind, TaskResult
from streams.sink.backend import ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row

TEXT = "HPI: No fever. History of COPD.\nFamily history: mother with diabetes. Asthma today."


def _entity(
    phrase: str, assertion: Assertion, cue: str | None, code: str | None, section: str | None = "history_of_present_illness"
) -> Entity:
    start = TEXT.index(phrase)
    codes = [Code(system="ICD10CM", code=code, display=f"display of {code}", score=0.9)] if code else []
    return Entity(
        label="Disease",
        start=start,
        end=start + len(phrase),
        text=phrase,
        confidence=0.95,
        assertion=assertion,
        assertion_cue=cue,
        section=section,
        codes=codes,
    )


def _extraction(note_id: str, patient: str, day: int, entities: list[Entity]) -> Extraction:
    at = datetime(2026, 11, day, 8, 0, tzinfo=UTC)
    result = TaskResult(task="disease", kind=TaskKind.ner, model_name="disease-lora", model_version="abc123", entities=entities)
    return Extraction(
        note_id=note_id,
        patient_id=patient,
        note_type="progress_note",
        source="test",
        created_at=at,
        text=TEXT,
        status=ExtractionStatus.auto_accepted,
        results=[result],
        processed_at=at,
    )


def _store(database: ChdbBackend, *extractions: Extraction) -> None:
    migrate(database)
    rows = [extraction_row(e, 0, i) for i, e in enumerate(extractions)]
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row(rows))


def test_note_nlp_has_one_omop_row_per_entity_with_assertion_section_and_code(database: ChdbBackend) -> None:
    entities = [
        _entity("fever", Assertion.absent, "No", "R50.9"),
        _entity("COPD", Assertion.historical, "History of", "J44.9"),
        _entity("diabetes", Assertion.family, "mother", "E11.9", "family_history"),
        _entity("Asthma", Assertion.present, None, "J45.909", "family_history"),
    ]
    _store(database, _extraction("n1", "p1", 1, entities))
    rows = database.query(
        "SELECT note_id, patient_id, offset, lexical_variant, section, assertion, term_exists, term_temporal, term_modifiers, "
        "code_system, code, code_display, nlp_system, position(snippet, lexical_variant) > 0 "
        f"FROM {database.database}.note_nlp ORDER BY offset"
    ).rows
    assert rows == [
        [
            "n1",
            "p1",
            TEXT.index("fever"),
            "fever",
            "history_of_present_illness",
            "absent",
            "N",
            "",
            "assertion=absent,cue=No",
            "ICD10CM",
            "R50.9",
            "display of R50.9",
            "disease-lora@abc123",
            1,
        ],
        [
            "n1",
            "p1",
            TEXT.index("COPD"),
            "COPD",
            "history_of_present_illness",
            "historical",
            "Y",
            "past",
            "assertion=historical,cue=History of",
            "ICD10CM",
            "J44.9",
            "display of J44.9",
            "disease-lora@abc123",
            1,
        ],
        [
            "n1",
            "p1",
            TEXT.index("diabetes"),
            "diabetes",
            "family_history",
            "family",
            "Y",
            "",
            "assertion=family,cue=mother",
            "ICD10CM",
            "E11.9",
            "display of E11.9",
            "disease-lora@abc123",
            1,
        ],
        [
            "n1",
            "p1",
            TEXT.index("Asthma"),
            "Asthma",
            "family_history",
            "present",
            "Y",
            "",
            "assertion=present",
            "ICD10CM",
            "J45.909",
            "display of J45.909",
            "disease-lora@abc123",
            1,
        ],
    ]


def test_patient_problems_count_present_mentions_about_the_patient_with_first_and_last_seen(database: ChdbBackend) -> None:
    first = _extraction(
        "n1", "p1", 1, [_entity("COPD", Assertion.historical, "History of", "J44.9"), _entity("fever", Assertion.absent, "No", "R50.9")]
    )
    second = _extraction(
        "n2", "p1", 5, [_entity("COPD", Assertion.present, None, "J44.1"), _entity("diabetes", Assertion.family, "mother", "E11.9")]
    )
    _store(database, first, second)
    rows = database.query(
        f"SELECT patient_id, category, codes, mentions, notes, historical_mentions, toDate(first_seen), toDate(last_seen) "
        f"FROM {database.database}.patient_problems ORDER BY category"
    ).rows
    # fever was negated, diabetes is the mother's, and the asthma's code is doubtful: none is a problem to group on
    assert len(rows) == 1
    patient, category, codes, mentions, notes, historical, first_seen, last_seen = rows[0]
    assert (patient, category, sorted(codes), mentions, notes, historical) == ("p1", "J44", ["J44.1", "J44.9"], 2, 2, 1)
    assert (str(first_seen), str(last_seen)) == ("2026-11-01", "2026-11-05")


def test_rows_written_before_clinical_meaning_read_as_present_and_uncoded(database: ChdbBackend) -> None:
    _store(database, _extraction("old", "p9", 1, [_entity("COPD", Assertion.historical, "History of", "J44.9")]))
    database.command(f"ALTER TABLE {database.database}.extractions UPDATE entity_context = [] WHERE 1 SETTINGS mutations_sync = 2")
    rows = database.query(f"SELECT lexical_variant, assertion, term_exists, code, section FROM {database.database}.note_nlp").rows
    assert rows == [["COPD", "present", "Y", "", None]]
