"""The columnar Avro writer gives fastavro's bytes, on random records of the schemas the hot path writes."""

from __future__ import annotations

import io
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import numpy as np
import pytest

from schemas.avro_columns import Ragged, RecordWriter, array_blocks, concat_rows, utf8, varints
from schemas.codec import Codecs
from schemas.extraction import Extraction
from schemas.review_task import ReviewTask

WORDS = ["fever", "née", "Åland", "", "x" * 200, "咳嗽", "emoji 🩺", "a\nb", "no", "hypertension"]


def fastavro_bytes(schema: Any, record: Mapping[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, dict(record))
    return out.getvalue()


def columns_of(writer: RecordWriter, records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The simple way round: each field's values in a list; an array field's items written by its own writer, then
    grouped per record."""
    columns: dict[str, Any] = {}
    for name, _ in writer.fields:
        values = [r[name] for r in records]
        if name in writer._items:  # an array of records
            items = [item for v in values for item in v]
            owner = np.repeat(np.arange(len(values)), [len(v) for v in values])
            inner = writer.item(name)
            columns[name] = array_blocks(inner.rows(columns_of(inner, items)), owner, len(values))
        else:
            columns[name] = values
    return columns


def random_string(rng: random.Random) -> str:
    return rng.choice(WORDS) + rng.choice(WORDS)


def random_extraction(rng: random.Random) -> dict[str, Any]:
    def entity() -> dict[str, Any]:
        codes = [
            {"system": "ICD-10-CM", "code": rng.choice(["I10", "E11.9"]), "display": random_string(rng), "score": rng.random()}
            for _ in range(rng.choice([0, 0, 1, 3]))
        ]
        return {
            "label": rng.choice(["Disease", "Problem"]),
            "start": rng.randrange(0, 2**31 - 1),
            "end": rng.choice([0, 1, 63, 64, 8191, 8192, 2**31 - 1]),
            "text": random_string(rng),
            "confidence": rng.random(),
            "assertion": rng.choice(["present", "absent", "family"]),
            "assertion_cue": rng.choice([None, "denies", "no evidence of"]),
            "section": rng.choice([None, "Past Medical History", "Plan"]),
            "state": rng.choice(["accepted", "pending"]),
            "codes": codes,
        }

    def result() -> dict[str, Any]:
        return {
            "task": rng.choice(["disease", "condition"]),
            "kind": rng.choice(["ner", "classification"]),
            "model_name": "m",
            "model_version": random_string(rng),
            "label_state": rng.choice(["accepted", "pending", "reviewed"]),
            "labels": [{"label": random_string(rng), "probability": rng.random()} for _ in range(rng.choice([0, 5]))],
            "entities": [entity() for _ in range(rng.choice([0, 1, 2, 40, 130]))],
        }

    base = datetime(2024, 1, 1, tzinfo=UTC)
    return {
        "note_id": random_string(rng),
        "revision": rng.choice([0, 1, -1, 2**31 - 1, -(2**31)]),
        "patient_id": random_string(rng),
        "encounter_id": rng.choice([None, "", "enc-1"]),
        "note_type": "progress",
        "source": random_string(rng),
        "created_at": base + timedelta(microseconds=rng.randrange(-(10**15), 10**15)),
        "text": random_string(rng) * rng.randrange(0, 50),
        "status": rng.choice(["auto_accepted", "pending_review", "over_budget"]),
        "results": [result() for _ in range(rng.choice([0, 1, 2, 3]))],
        "processed_at": base - timedelta(days=rng.randrange(0, 30_000), milliseconds=rng.randrange(0, 10**6)),
    }


def random_review_task(rng: random.Random) -> dict[str, Any]:
    reasons = [
        {
            "task": random_string(rng),
            "kind": rng.choice(["document_label", "entity", "possible_entity", "code", "assertion"]),
            "label": random_string(rng),
            "start": rng.choice([None, 0, 5, 1 << 20]),
            "end": rng.choice([None, 3, 1 << 30]),
            "confidence": rng.choice([0.0, 1.0, rng.random(), 1e-40, 3.4e38]),
            "threshold": rng.random(),
        }
        for _ in range(rng.choice([0, 1, 67, 300]))
    ]
    return {
        "note_id": random_string(rng),
        "revision": 0,
        "note_type": "discharge",
        "created_at": datetime(2030, 5, 1, 12, 0, 0, 999_999, tzinfo=UTC),
        "audit": rng.random() < 0.5,
        "priority": rng.random() * 40,
        "reasons": reasons,
    }


@pytest.mark.parametrize(("model", "make"), [(Extraction, random_extraction), (ReviewTask, random_review_task)])
def test_rows_written_from_columns_are_fastavros_bytes(model: Any, make: Any) -> None:
    codec = Codecs().of(model)
    schema = codec.schema
    writer = RecordWriter(schema)
    rng = random.Random(15)
    for _ in range(6):
        records = [make(rng) for _ in range(rng.choice([1, 7, 40]))]
        written = writer.rows(columns_of(writer, records)).items()
        assert written == [fastavro_bytes(schema, r) for r in records]
        assert codec.encode_rows(columns_of(writer, records)) == [codec.header + b for b in written]  # framed as encode frames
        assert [fastavro.schemaless_reader(io.BytesIO(b), schema, None)["note_id"] for b in written] == [r["note_id"] for r in records]


def test_varints_match_fastavro_longs_at_every_width() -> None:
    values = [0, -1, 1, 63, -64, 64, 8191, -8192, 2**31 - 1, -(2**31), 2**62, -(2**63), 2**63 - 1]
    values += random.Random(3).sample(range(-(2**40), 2**40), 200)
    got = varints(values).items()
    assert got == [fastavro_bytes({"type": "record", "name": "L", "fields": [{"name": "v", "type": "long"}]}, {"v": v}) for v in values]
    assert varints([]).items() == [] and concat_rows(utf8([])).items() == []


def test_multibyte_text_and_empty_arrays() -> None:
    text = concat_rows(utf8(["", "é", "🩺" * 40]))
    assert text.items() == [b"\x00", b"\x04\xc3\xa9", b"\xc0\x02" + "🩺".encode() * 40]  # 160 bytes: zig-zag 320
    items = concat_rows(utf8(["a", "b", "c"]))
    blocks = concat_rows(array_blocks(items, np.array([1, 1, 3]), 5)).items()
    assert blocks == [b"\x00", b"\x04\x02a\x02b\x00", b"\x00", b"\x02\x02c\x00", b"\x00"]
    with pytest.raises(ValueError, match="grouped by their owner"):
        array_blocks(items, np.array([1, 0, 3]), 5)


def test_concat_keeps_each_rows_bytes() -> None:
    rows = concat_rows(utf8(["alpha", "", "βeta", "g"]))
    assert rows.items() == [b"\nalpha", b"\x00", "\x0aβeta".encode(), b"\x02g"]
    assert concat_rows([rows, Ragged.fixed(np.arange(4, dtype=np.uint8), 1)]).items() == [
        r + bytes([i]) for i, r in enumerate(rows.items())
    ]


def test_a_schema_with_a_type_not_written_from_columns_is_refused() -> None:
    for kind in (["null", "string", "int"], {"type": "map", "values": "string"}, "bytes", {"type": "array", "items": "string"}):
        with pytest.raises(ValueError, match=r"R\.f"):
            RecordWriter({"type": "record", "name": "R", "fields": [{"name": "f", "type": kind}]})
    with pytest.raises(KeyError, match="no column for f"):
        RecordWriter({"type": "record", "name": "R", "fields": [{"name": "f", "type": "int"}]}).rows({})
