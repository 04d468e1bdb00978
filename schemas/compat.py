"""Avro schema evolution, checked the way a reader meets it: can data written with one schema be read with another?

``can_read`` writes generated records with the writer schema (every branch of every union, empty and
filled arrays and maps, by drawing many records) and reads each back through Avro schema resolution
with the reader schema. A reader that lacks a default for a field the writer does not have, a type
change that resolution cannot promote, or a dropped enum symbol makes a read fail. It is a sampling
check, not a proof; it is what the loopback registry in the tests and ``ehrstream schemas`` use.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import fastavro.schema
from fastavro.utils import generate_many


def can_read(writer: Any, reader: Any, samples: int = 50) -> bool:
    writer_parsed = fastavro.schema.parse_schema(writer, _write_hint=False)
    reader_parsed = fastavro.schema.parse_schema(reader, _write_hint=False)
    for record in generate_many(writer_parsed, samples):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, writer_parsed, record)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, writer_parsed, reader_parsed)
        except Exception:  # fastavro raises SchemaResolutionError and others for data it cannot resolve
            return False
    return True
