"""The contracts: every Avro schema and its pydantic model agree, and the wire format is Avro's own."""

from __future__ import annotations

import io
import itertools
import json
import types
import typing
from datetime import UTC, datetime

import avro.io
import avro.schema
import pytest
from pydantic import BaseModel

from schemas import ALL_MODELS, ClinicalNote, DeadLetter, Entity, ErrorKind, Extraction, ExtractionStatus, TaskKind, TaskResult
from schemas.codec import MARKER, AvroCodec, Codecs, rabin_fingerprint, schema_text
from schemas.errors import RecordError

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry

PRIMITIVES = {"string": str, "int": int, "long": int, "float": float, "double": float, "boolean": bool, "bytes": bytes}


def _check_type(avro_type: typing.Any, annotation: typing.Any, where: str) -> None:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(avro_type, list):  # union with null <-> Optional
        assert "null" in avro_type and origin in (typing.Union, types.UnionType), where
        assert type(None) in args, where
        (inner_avro,) = [t for t in avro_type if t != "null"]
        (inner_py,) = [a for a in args if a is not type(None)]
        _check_type(inner_avro, inner_py, where)
        return
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = args[0]
    if isinstance(avro_type, str) and avro_type not in PRIMITIVES:  # a named type defined earlier in the schema
        assert getattr(annotation, "__name__", None) == avro_type, f"{where}: {avro_type} vs {annotation}"
        return
    if isinstance(avro_type, str):
        assert annotation is PRIMITIVES[avro_type], f"{where}: {avro_type} vs {annotation}"
        return
    kind = avro_type["type"]
    if avro_type.get("logicalType") == "timestamp-millis":
        assert annotation is datetime, where
    elif kind == "array":
        assert origin is list, where
        _check_type(avro_type["items"], args[0], where + "[]")
    elif kind == "map":
        assert origin is dict and args[0] is str, where
        _check_type(avro_type["values"], args[1], where + "{}")
    elif kind == "enum":
        assert [m.value for m in annotation] == avro_type["symbols"], where
    elif kind == "record":
        _check_record(avro_type, annotation, where)
    else:
        raise AssertionError(f"{where}: unhandled Avro type {kind}")


def _check_record(schema: dict[str, typing.Any], model: type[BaseModel], where: str) -> None:
    hints = typing.get_type_hints(model, include_extras=True)
    avro_fields = {f["name"]: f for f in schema["fields"]}
    assert list(avro_fields) == list(model.model_fields), f"{where}: field names/order differ"
    for name, field in avro_fields.items():
        _check_type(field["type"], hints[name], f"{where}.{name}")
        pyd = model.model_fields[name]
        if "default" in field:
            assert not pyd.is_required(), f"{where}.{name}: Avro has a default, the model requires it"
        else:
            assert pyd.is_required(), f"{where}.{name}: the model has a default, Avro does not"


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_schema_and_model_agree_field_by_field(model: type) -> None:
    schema = json.loads(schema_text(model.avro_schema))
    assert schema["name"] == model.__name__
    _check_record(schema, model, model.__name__)


def _note(**update: typing.Any) -> ClinicalNote:
    base = dict(
        note_id="n-1",
        patient_id="p-1",
        encounter_id="e-1",
        note_type="progress_note",
        author=None,
        created_at=datetime(2026, 11, 1, 12, 30, 15, 123000, tzinfo=UTC),
        text="Patient has diabetes.",
        source="test",
        meta={"ward": "3B"},
    )
    base.update(update)
    return ClinicalNote(**base)


def _extraction() -> Extraction:
    return Extraction(
        note_id="n-1",
        patient_id="p-1",
        note_type="x",
        source="s",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        text="abc diabetes",
        status=ExtractionStatus.pending_review,
        processed_at=datetime(2026, 1, 2, tzinfo=UTC),
        results=[
            TaskResult(
                task="disease",
                kind=TaskKind.ner,
                model_name="m",
                model_version="v",
                entities=[Entity(label="Disease", start=4, end=12, text="diabetes", confidence=0.5)],
            )
        ],
    )


@pytest.mark.parametrize("obj", [_note(), _extraction()], ids=["note", "extraction"])
def test_single_object_encoding_round_trips_and_matches_the_reference_avro_library(obj: typing.Any) -> None:
    codec = PLAIN.of(type(obj))
    data = codec.encode(obj)
    assert data[:2] == MARKER and data[2:10] == codec.fingerprint
    assert codec.decode(data) == obj
    # the body is byte-identical to what the reference implementation writes
    reference = avro.schema.parse(schema_text(type(obj).avro_schema))
    buf = io.BytesIO()
    record = obj.model_dump()
    avro.io.DatumWriter(reference).write(record, avro.io.BinaryEncoder(buf))
    assert data[10:] == buf.getvalue()


def test_fingerprint_is_crc64_avro_little_endian() -> None:
    # same canonical text -> same 8 bytes as the reference implementation
    for text in ['"int"', '{"type":"record","name":"a.B","fields":[{"name":"x","type":"long"}]}']:
        parsed = avro.schema.parse(text)
        assert rabin_fingerprint(parsed.canonical_form) == parsed.fingerprint()
    # spec: the canonical form drops logicalType, so a timestamp-millis field fingerprints as plain "long"
    codec = PLAIN.of(ClinicalNote)
    assert '"created_at","type":"long"' in codec.canonical_form


def test_reader_resolves_records_written_with_an_older_schema() -> None:
    old = json.loads(schema_text("clinical_note.avsc"))
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("author", "meta")]
    old_codec = AvroCodec(ClinicalNote)
    old_codec.schema = AvroCodec._parse(json.dumps(old))
    import fastavro.schema

    old_codec.header = MARKER + rabin_fingerprint(fastavro.schema.to_parsing_canonical_form(old_codec.schema))
    written = io.BytesIO()
    written.write(old_codec.header)
    record = _note().model_dump(exclude={"author", "meta"})
    fastavro.schemaless_writer(written, old_codec.schema, record)

    with pytest.raises(RecordError) as unknown:
        PLAIN.of(ClinicalNote).decode(written.getvalue())
    assert unknown.value.kind is ErrorKind.unknown_schema

    reader = AvroCodec(ClinicalNote, writer_schemas=[json.dumps(old)])
    decoded = reader.decode(written.getvalue())
    assert decoded.author is None and decoded.meta == {} and decoded.text == "Patient has diabetes."


def test_notes_topic_accepts_avro_and_json() -> None:
    note = _note()
    assert PLAIN.decode_note(PLAIN.of(ClinicalNote).encode(note), 10_000) == note
    assert PLAIN.decode_note(note.model_dump_json().encode(), 10_000) == note


SECRET = "Jane Roe has HIV"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"\xff\xfe\x00garbage", ErrorKind.undecodable),
        (b"plain text, not json", ErrorKind.undecodable),
        (b'{"note_id": "x", ', ErrorKind.invalid_json),
        (b"[1, 2]", ErrorKind.undecodable),
        (json.dumps({"note_id": "x", "patient_id": 7, "text": SECRET}).encode(), ErrorKind.validation_error),
        (_note(text="   \n\t").model_dump_json().encode(), ErrorKind.empty_text),
        (MARKER + b"\x01" * 8 + b"\x00", ErrorKind.unknown_schema),
        (MARKER[:1], ErrorKind.undecodable),
        (b"x" * 20_000, ErrorKind.oversized),
    ],
)
def test_bad_notes_raise_a_record_error_with_kind_and_no_content(raw: bytes, kind: ErrorKind) -> None:
    with pytest.raises(RecordError) as info:
        PLAIN.decode_note(raw, max_bytes=10_000)
    assert info.value.kind is kind
    assert SECRET not in str(info.value) and "Jane" not in info.value.message


def test_truncated_and_padded_avro_are_invalid() -> None:
    data = PLAIN.of(ClinicalNote).encode(_note(text=SECRET))
    for damaged in (data[:-5], data + b"\x00\x01"):
        with pytest.raises(RecordError) as info:
            PLAIN.decode_note(damaged, 10_000)
        assert info.value.kind is ErrorKind.invalid_avro
        assert SECRET not in str(info.value)


def test_dead_letter_keeps_raw_bytes_exactly() -> None:
    raw = bytes(range(256))
    letter = DeadLetter(
        raw=raw,
        key=None,
        error_kind=ErrorKind.undecodable,
        message="m",
        source_topic="t",
        source_partition=1,
        source_offset=42,
        stage="worker",
        failed_at=datetime.now(UTC),
    )
    assert PLAIN.of(DeadLetter).decode(PLAIN.of(DeadLetter).encode(letter)).raw == raw


def test_review_decisions_written_before_results_existed_still_decode() -> None:
    """history/review_decision.v1.avsc (no ``results``) is a registered writer schema of the current codec."""
    import fastavro.schema

    from schemas.codec import schema_history
    from schemas.review_decision import Change, ChangeAction, ReviewDecision

    v1 = schema_history("review_decision.avsc")[0]
    parsed = AvroCodec._parse(v1)
    old = ReviewDecision(
        decision_id="d1",
        note_id="n1",
        base_revision=0,
        reviewer_id="alice",
        decided_at="2026-11-01T08:00:00Z",
        changes=[Change(task="disease", action=ChangeAction.accept, before="{}", after="{}")],
    )
    written = io.BytesIO()
    written.write(MARKER + rabin_fingerprint(fastavro.schema.to_parsing_canonical_form(parsed)))
    fastavro.schemaless_writer(written, parsed, old.model_dump(exclude={"results"}))
    decoded = PLAIN.of(ReviewDecision).decode(written.getvalue())
    assert decoded == old and decoded.results == []


def test_review_decision_results_are_the_extraction_task_result_record() -> None:
    def task_result(file_name: str) -> object:
        fields = json.loads(schema_text(file_name))["fields"]
        return next(f for f in fields if f["name"] == "results")["type"]["items"]

    assert task_result("review_decision.avsc") == task_result("extraction.avsc")


def _written_with(schema_json: str, record: dict[str, object]) -> bytes:
    import fastavro.schema

    parsed = AvroCodec._parse(schema_json)
    out = io.BytesIO()
    out.write(MARKER + rabin_fingerprint(fastavro.schema.to_parsing_canonical_form(parsed)))
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def test_extractions_written_before_clinical_meaning_existed_still_decode_as_present_uncoded() -> None:
    """history/extraction.v1.avsc (entities without assertion, cue, section or codes) stays readable: its entities come
    back present, with no cue, section or code."""
    from schemas.codec import schema_history

    v1 = schema_history("extraction.avsc")[0]
    entity = {"label": "Disease", "start": 3, "end": 8, "text": "colds", "confidence": 0.9}
    result = {"task": "disease", "kind": "ner", "model_name": "m", "model_version": "1", "labels": [], "entities": [entity]}
    old = {
        "note_id": "n1",
        "revision": 0,
        "patient_id": "p1",
        "encounter_id": None,
        "note_type": "progress",
        "source": "test",
        "created_at": datetime(2026, 11, 1, tzinfo=UTC),
        "text": "No colds.",
        "status": "auto_accepted",
        "results": [result],
        "processed_at": datetime(2026, 11, 1, tzinfo=UTC),
    }
    decoded = PLAIN.of(Extraction).decode(_written_with(v1, old))
    (read,) = decoded.results[0].entities
    assert (read.text, read.assertion.value, read.assertion_cue, read.section, read.codes) == ("colds", "present", None, None, [])


def test_each_schema_version_reads_records_of_the_one_before() -> None:
    """Backward compatible, as a registry's BACKWARD check: every version reads what the version before it wrote (new
    readers meet old records on every topic). Extraction v2 and v3 added defaulted fields, so what the workers write is
    forward compatible too; review decisions and tasks gained enum symbols that older readers cannot know."""
    from schemas.codec import schema_history
    from schemas.compat import can_read

    for name in ("extraction.avsc", "review_decision.avsc", "review_task.avsc"):
        versions = [json.loads(v) for v in schema_history(name)] + [json.loads(schema_text(name))]
        assert len(versions) >= 2
        for older, newer in itertools.pairwise(versions):
            assert can_read(older, newer), name
    # forward: what the workers write to the extractions topic stays readable by v1 readers. The status over_budget
    # (v3) is written only by the sink, to ClickHouse, never to the topic: the topic's records use v1's statuses.
    v1 = json.loads(schema_history("extraction.avsc")[0])
    current = json.loads(schema_text("extraction.avsc"))
    status = next(f for f in current["fields"] if f["name"] == "status")
    assert status["type"]["symbols"] == ["auto_accepted", "pending_review", "reviewed", "over_budget"]
    status["type"]["symbols"] = status["type"]["symbols"][:3]
    assert can_read(current, v1)


def test_clinical_fields_round_trip() -> None:
    from schemas.extraction import Assertion, Code

    entity = Entity(
        label="Disease",
        start=0,
        end=4,
        text="COPD",
        confidence=0.9,
        assertion=Assertion.historical,
        assertion_cue="history of",
        section="past_medical_history",
        codes=[Code(system="ICD10CM", code="J44.9", display="Chronic obstructive pulmonary disease, unspecified", score=0.93)],
    )
    result = TaskResult(task="disease", kind=TaskKind.ner, model_name="m", model_version="1", entities=[entity])
    extraction = Extraction(
        note_id="n",
        patient_id="p",
        note_type="t",
        source="s",
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        text="COPD",
        status=ExtractionStatus.auto_accepted,
        results=[result],
        processed_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    codec = PLAIN.of(Extraction)
    (back,) = codec.decode(codec.encode(extraction)).results[0].entities
    assert back.assertion is Assertion.historical and back.codes[0].code == "J44.9" and back.codes[0].score == pytest.approx(0.93)
