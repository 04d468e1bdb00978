"""A batch of records from a topic, handed to ClickHouse as one Avro object container.

The records' Avro bodies are not read in Python: each becomes one container record (the Kafka partition and offset,
the body as it came, a framing constant) and one ``INSERT ... SELECT`` has ClickHouse's Avro reader parse the block
and build the table's rows. fastavro, pydantic and a row dict per record cost about 1.45 ms of CPU per tiny-model
extraction on the 2-vCPU EPYC; this path 0.32 ms in a 200-record batch (docs/performance/hot-path.md, "tenth session").

Only records in single-object framing with the current schema's fingerprint are taken (:meth:`AvroIntake.takes`);
the codec reads the rest. The statement refuses the whole batch when a body has bytes missing or left over (the
framing constant after it is not read back) or holds what the pydantic models refuse and Avro cannot say
(probabilities, confidences and scores outside [0, 1], negative offsets, invalid UTF-8): the sink then reads that
batch record by record, storing the good records and dead-lettering the rest.

``STRUCTURES`` mirror extraction.avsc and review_task.avsc as ClickHouse reads them: ``tests/test_sink_avro.py``
fails when they drift apart.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import fastavro
import numpy as np

from schemas.avro_columns import Ragged, concat_rows, varints
from schemas.codec import HEADER_SIZE, AvroCodec, schema_text

#: written after every body and checked by the statement
FRAMING = 4242

_STATE = "Enum8('accepted' = 0, 'pending' = 1, 'reviewed' = 2, 'over_budget' = 3)"

#: per table: the container's columns as ClickHouse reads them
STRUCTURES = {
    "extractions": f"""kafka_partition Int32, kafka_offset Int64, record Tuple(
        note_id String, revision Int32, patient_id String, encounter_id Nullable(String), note_type String, source String,
        created_at DateTime64(3), text String,
        status Enum8('auto_accepted' = 0, 'pending_review' = 1, 'reviewed' = 2, 'over_budget' = 3),
        results Array(Tuple(
            task String, kind Enum8('classification' = 0, 'ner' = 1), model_name String, model_version String,
            label_state {_STATE}, labels Array(Tuple(label String, probability Float32)),
            entities Array(Tuple(
                label String, start Int32, end Int32, text String, confidence Float32,
                assertion Enum8('present' = 0, 'absent' = 1, 'possible' = 2, 'hypothetical' = 3, 'historical' = 4, 'family' = 5),
                assertion_cue Nullable(String), section Nullable(String), state {_STATE},
                codes Array(Tuple(system String, code String, display String, score Float32)))))),
        processed_at DateTime64(3)), framing Int32""",
    "review_tasks": """kafka_partition Int32, kafka_offset Int64, record Tuple(
        note_id String, revision Int32, note_type String, created_at DateTime64(3), audit Bool, priority Float32,
        reasons Array(Tuple(
            task String, kind Enum8('document_label' = 0, 'entity' = 1, 'possible_entity' = 2, 'code' = 3, 'assertion' = 4),
            label String, start Nullable(Int32), end Nullable(Int32), confidence Float32, threshold Float32))), framing Int32""",
}

#: per table: the row of each container record, in the order of ``streams.sink.rows.TABLE_COLUMNS``
SELECTS = {
    "extractions": """
    record.note_id, record.revision, record.patient_id, record.encounter_id, record.note_type, record.source,
    record.created_at, record.text, toString(record.status),
    mapFromArrays(arrayMap(r -> r.task, record.results), arrayMap(r -> concat(r.model_name, '@', r.model_version), record.results)),
    arrayFlatten(arrayMap(r -> arrayMap(l -> (r.task, l.label, l.probability), r.labels), record.results)),
    arrayFlatten(arrayMap(r -> arrayMap(e -> (r.task, e.label, e.start, e.end, e.text, e.confidence), r.entities), record.results)),
    arrayFlatten(arrayMap(r -> arrayMap(
        e -> (toString(e.assertion), e.assertion_cue, e.section, arrayMap(c -> (c.system, c.code, c.display, c.score), e.codes)),
        r.entities), record.results)),
    arrayFlatten(arrayMap(r -> arrayMap(e -> toString(e.state), r.entities), record.results)),
    mapFromArrays(
        arrayMap(r -> r.task, arrayFilter(r -> notEmpty(r.labels), record.results)),
        arrayMap(r -> toString(r.label_state), arrayFilter(r -> notEmpty(r.labels), record.results))),
    record.processed_at, kafka_partition, kafka_offset""",
    "review_tasks": """
    record.note_id, record.revision, record.note_type, record.created_at, record.audit, record.priority,
    arrayMap(r -> (r.task, toString(r.kind), r.label, r.start, r.end, r.confidence, r.threshold), record.reasons)""",
}

#: per table: what a record must hold beyond what Avro says (the framing constant read back; the pydantic models' constraints)
CHECKS = {
    "extractions": f"""framing = {FRAMING} AND isValidUTF8(record.note_id) AND isValidUTF8(record.patient_id) AND isValidUTF8(record.text)
    AND arrayAll(r -> arrayAll(l -> l.probability >= 0 AND l.probability <= 1, r.labels)
        AND arrayAll(e -> e.start >= 0 AND e.end >= 0 AND e.confidence >= 0 AND e.confidence <= 1
            AND isValidUTF8(e.text) AND arrayAll(c -> c.score >= 0 AND c.score <= 1, e.codes), r.entities), record.results)""",
    "review_tasks": f"framing = {FRAMING} AND isValidUTF8(record.note_id)",
}


@dataclass
class Pending:
    """One table's records waiting for the next write, as they came from the topic."""

    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    size: int = 0

    def __len__(self) -> int:
        return len(self.values)

    def add(self, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.keys.append(key)
        self.values.append(value)
        self.size += len(value)

    def clear(self) -> None:
        for column in (self.partitions, self.offsets, self.keys, self.values):
            column.clear()
        self.size = 0


class AvroIntake:
    """One table's columnar intake (``table``: ``extractions`` or ``review_tasks``)."""

    def __init__(self, codec: AvroCodec[Any], table: str) -> None:
        self.table = table
        self.header = codec.header
        self.structure = " ".join(STRUCTURES[table].split())
        wrapper = {
            "type": "record",
            "name": "SinkRecord",
            "namespace": "org.ehrstream.sink",
            "fields": [
                {"name": "kafka_partition", "type": "int"},
                {"name": "kafka_offset", "type": "long"},
                {"name": "record", "type": json.loads(schema_text(codec.model.avro_schema))},
                {"name": "framing", "type": "int"},
            ],
        }
        out = io.BytesIO()
        fastavro.writer(out, fastavro.parse_schema(wrapper), [], codec="null")
        #: the container's header: magic, the wrapper schema, and the sync marker (its last 16 bytes) every block ends with
        self.container_header = out.getvalue()
        self._sync = self.container_header[-16:]

    def statement(self, db: str, columns: list[str]) -> str:
        """The ``INSERT ... SELECT`` with ``{source}`` where the backend puts the table function that reads the container
        (only identifiers and this module's constants are interpolated: ``tests/test_sql_safety.py``)."""
        table = self.table
        cols = ", ".join(f"`{c}`" for c in columns)
        select = " ".join(SELECTS[table].split())
        check = " ".join(CHECKS[table].split())
        return (
            f"INSERT INTO {db}.{table} ({cols}) SELECT {select} FROM {{source}} "  # noqa: S608
            f"WHERE throwIf(NOT ({check}), 'a record the models refuse, or bytes missing or left over') = 0"
        )

    def takes(self, value: bytes) -> bool:
        """Single-object framing with the current schema's fingerprint (an older writer schema needs resolving, and
        Confluent framing a registry lookup: the codec reads those)."""
        return value[:HEADER_SIZE] == self.header

    def container(self, pending: Pending) -> bytes:
        """The pending records as one Avro object container of one block."""
        bodies = [v[HEADER_SIZE:] for v in pending.values]
        lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        rows = concat_rows(
            [
                varints(pending.partitions),
                varints(pending.offsets),
                Ragged(np.frombuffer(b"".join(bodies), dtype=np.uint8), lengths),
                varints(np.full(len(bodies), FRAMING, dtype=np.int64)),
            ]
        )
        block = rows.data.tobytes()
        count_and_size = varints([len(bodies), len(block)]).data.tobytes()
        return self.container_header + count_and_size + block + self._sync
