"""Encode+decode cost of one ~2 KB ClinicalNote: fastavro (what ehrstream uses) vs the reference avro package.

Run: .venv/bin/python benchmarks/codec_bench.py [--json]
"""

from __future__ import annotations

import io
import json
import sys
import timeit
from datetime import UTC, datetime

import avro.io
import avro.schema
import fastavro

from schemas.clinical_note import ClinicalNote
from schemas.codec import HEADER_SIZE, Codecs, schema_text

NOTE = ClinicalNote(
    note_id="bench-000001",
    patient_id="p-123456",
    encounter_id="e-98765",
    note_type="discharge_summary",
    author="dr-x",
    created_at=datetime(2026, 11, 1, 9, 30, tzinfo=UTC),
    source="bench",
    meta={"ward": "4A", "facility": "north"},
    text=("Patient admitted with community-acquired pneumonia and type 2 diabetes mellitus. " * 25)[:2000],
)


def main() -> None:
    plain = Codecs()
    codec = plain.of(ClinicalNote)
    reference = avro.schema.parse(schema_text(ClinicalNote.avro_schema))
    writer, reader = avro.io.DatumWriter(reference), avro.io.DatumReader(reference)
    record = NOTE.model_dump()

    def fast() -> None:
        codec.decode(codec.encode(NOTE))

    def fast_raw() -> None:  # the codec without pydantic model construction/validation
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, codec.schema, record)
        buf.seek(0)
        fastavro.schemaless_reader(buf, codec.schema, codec.schema)

    def ref() -> None:
        buf = io.BytesIO()
        writer.write(record, avro.io.BinaryEncoder(buf))
        buf.seek(0)
        reader.read(avro.io.BinaryDecoder(buf))

    def notes_topic() -> None:  # what the worker does per record: decode + validate
        plain.decode_note(encoded, 1_000_000)

    encoded = codec.encode(NOTE)
    results = {}
    for name, fn in [("fastavro+pydantic", fast), ("fastavro", fast_raw), ("avro (reference)", ref), ("decode_note", notes_topic)]:
        n = 2000
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n
        results[name] = round(best * 1e6, 1)
    print(f"record: {len(encoded)} bytes ({HEADER_SIZE}-byte single-object header)")
    for name, us in results.items():
        print(f"{name:>20}: {us:8.1f} us per encode+decode" if name != "decode_note" else f"{name:>20}: {us:8.1f} us per decode")
    if "--json" in sys.argv:
        print(json.dumps({"bytes": len(encoded), "us": results}))


if __name__ == "__main__":
    main()
