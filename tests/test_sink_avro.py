"""The sink's columnar path: ClickHouse reads a batch's Avro itself (``streams.sink.avro_intake``, migration 007).

The rows it stores must be the rows the record-by-record path stores (random records of both schemas: multi-byte
text, empty and long arrays, nulls, codes); the intake tables must mirror the Avro schemas; and a batch ClickHouse
refuses must still store its good records and dead-letter the bad ones, on the real broker and sink."""

from __future__ import annotations

import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas.codec import Codecs
from schemas.dead_letter import ErrorKind
from schemas.extraction import Extraction
from schemas.review_task import ReviewTask
from streams.kafka.clients import ensure_topics, producer
from streams.runtime.broker import TansuBroker
from streams.runtime.sink_thread import SinkThread
from streams.settings import Settings
from streams.sink.avro_intake import AvroIntake, Pending
from streams.sink.backend import SPOOL_FOLDER, ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row, review_task_row
from tests.test_avro_columns import random_extraction, random_review_task
from tests.test_sink import extraction

PLAIN = Codecs()
CASES = [
    (Extraction, "extractions", random_extraction, lambda m, p, o: extraction_row(m, p, o)),
    (ReviewTask, "review_tasks", random_review_task, lambda m, p, o: review_task_row(m)),
]


def stored(database: ChdbBackend, table: str) -> list[list[Any]]:
    columns = ", ".join(f"`{c}`" for c in TABLE_COLUMNS[table])
    return database.query(f"SELECT {columns} FROM {database.database}.{table} ORDER BY note_id, revision").rows


@pytest.mark.parametrize(("model", "table", "make", "row"), CASES, ids=["extractions", "review_tasks"])
def test_clickhouse_reading_the_avro_stores_the_rows_python_stores(
    database: ChdbBackend, model: Any, table: str, make: Any, row: Any
) -> None:
    migrate(database)
    rng = random.Random(11)
    codec = PLAIN.of(model)
    values = []
    for k in range(80):
        record = make(rng)
        # one row per note (the tables collapse on note_id and revision); revision within the table's UInt32
        record.update(note_id=f"{k:03d} {record['note_id']}", revision=rng.choice([0, 1, 2**31 - 1]))
        values.append(codec.encode(model.model_validate(record)))
    pending = Pending()
    for i, value in enumerate(values):
        pending.add(i % 3, 10**9 + i, None, value)
    intake = AvroIntake(codec, table)
    database.insert_avro(intake.statement(database.database, TABLE_COLUMNS[table]), intake.structure, intake.container(pending))
    by_clickhouse = stored(database, table)

    database.command(f"TRUNCATE TABLE {database.database}.{table}")
    rows = [row(codec.decode(v), p, o) for v, p, o in zip(values, pending.partitions, pending.offsets, strict=True)]
    database.insert_json(table, TABLE_COLUMNS[table], json_each_row(rows))
    by_python = stored(database, table)

    assert len(by_clickhouse) == 80
    assert by_clickhouse == by_python


def _normalised(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize(("model", "table"), [(Extraction, "extractions"), (ReviewTask, "review_tasks")])
def test_the_structures_are_how_clickhouse_reads_the_avro_schemas(database: ChdbBackend, tmp_path: Path, model: Any, table: str) -> None:
    """ClickHouse's own reading of a container of the current schema must be the structure the sink declares: an Avro
    schema changed without changing ``STRUCTURES`` fails here."""
    codec = PLAIN.of(model)
    intake = AvroIntake(codec, table)
    pending = Pending()
    pending.add(0, 0, None, codec.encode(model.model_validate(CASES[0 if model is Extraction else 1][2](random.Random(1)))))
    path = tmp_path / "one.avro"
    path.write_bytes(intake.container(pending))
    inferred = database.query(f"DESCRIBE file('{path}', Avro)").rows
    declared = database.query("DESCRIBE format(Avro, {s:String}, '')", {"s": intake.structure}).rows
    assert [(r[0], _normalised(r[1])) for r in declared] == [(r[0], _normalised(r[1])) for r in inferred]


def _raw(value: dict[str, Any]) -> bytes:
    """An Extraction's bytes as another producer could write them: Avro-valid, unchecked by the models."""
    codec = PLAIN.of(Extraction)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, codec.schema, value)
    return codec.header + out.getvalue()


@pytest.mark.slow
def test_a_batch_clickhouse_refuses_stores_its_good_records_and_dead_letters_the_rest(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tiny_settings.model_copy(update={"sink_avro_min_bytes": 0})  # every batch as Avro, however small
    ensure_topics(settings, broker.bootstrap)
    codec = PLAIN.of(Extraction)
    p = producer(settings, broker.bootstrap)
    for i in range(5):
        p.send(settings.topics.extractions, key=f"a{i}".encode(), value=codec.encode(extraction(f"a{i}")))
    p.flush()
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    db = database.database

    def counts() -> tuple[int, int]:
        stored = database.query(f"SELECT count() FROM {db}.extractions_final").scalar()
        dead = database.query(f"SELECT count() FROM {db}.dead_letters").scalar()
        return int(stored or 0), int(dead or 0)

    def wait_for(target: tuple[int, int]) -> tuple[int, int]:
        deadline = time.monotonic() + 60
        while (now := counts()) != target and time.monotonic() < deadline:
            time.sleep(0.3)
        return now

    caplog.set_level(logging.WARNING, logger="streams.sink.consumer")
    sink.start()
    try:
        assert wait_for((5, 0)) == (5, 0)
        assert "did not take" not in caplog.text  # clean batches went in as Avro

        overconfident = extraction("bad-confidence").model_dump()
        overconfident["results"][0]["entities"][0]["confidence"] = 1.5
        for i in range(10):
            p.send(settings.topics.extractions, key=f"b{i}".encode(), value=codec.encode(extraction(f"b{i}")))
        p.send(settings.topics.extractions, key=b"c", value=_raw(overconfident))
        p.flush()
        assert wait_for((15, 1)) == (15, 1)
        assert "did not take" in caplog.text
        # a record with a byte left over, mid-batch: the framing constant after it is not read back
        for i in range(3):
            if i == 1:
                p.send(settings.topics.extractions, key=b"e", value=codec.encode(extraction("trailing")) + b"\x00")
            p.send(settings.topics.extractions, key=f"d{i}".encode(), value=codec.encode(extraction(f"d{i}")))
        p.flush()
        assert wait_for((18, 2)) == (18, 2)
        kinds = database.query(f"SELECT error_kind, stage FROM {db}.dead_letters ORDER BY error_kind").rows
        assert kinds == [[ErrorKind.invalid_avro.value, "sink"], [ErrorKind.validation_error.value, "sink"]]
        assert "bad-confidence" not in caplog.text and "Has asthma" not in caplog.text
        ids = {r[0] for r in database.query(f"SELECT note_id FROM {db}.extractions_final").rows}
        assert ids == {f"{k}{i}" for k, n in (("a", 5), ("b", 10), ("d", 3)) for i in range(n)}
    finally:
        sink.stop()
        p.close()


SPOOL_PROBE = r"""
import os, random, signal, sys
from pathlib import Path
from schemas.codec import Codecs
from schemas.extraction import Extraction
from streams.sink.avro_intake import AvroIntake, Pending
from streams.sink.backend import SPOOL_FOLDER, ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS
from tests.test_avro_columns import random_extraction

backend = ChdbBackend(Path(sys.argv[1]), "ehrstream")
if sys.argv[2] != "none":
    migrate(backend)
    codec = Codecs().of(Extraction)
    pending = Pending()
    pending.add(0, 10**9, None, codec.encode(Extraction.model_validate(random_extraction(random.Random(3)))))
    intake = AvroIntake(codec, "extractions")
    backend.insert_avro(intake.statement("ehrstream", TABLE_COLUMNS["extractions"]), intake.structure, intake.container(pending))
    print(backend.query("SELECT count() FROM ehrstream.extractions").scalar(), flush=True)
if sys.argv[2] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
# otherwise exits without closing the backend
"""


@pytest.mark.parametrize("work", ["insert", "none", "killed"])
def test_a_process_that_never_closes_its_chdb_leaves_no_spool_behind(tmp_path: Path, work: str) -> None:
    """The columnar insert's spool is a folder of the chdb data directory, emptied after each batch: nothing goes to the
    system's temporary directory, where each test run and each killed sink used to leave an ``ehrstream-intake-*``
    directory, closed, unclosed or killed; the next process on the directory reuses the folder."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}
    data = tmp_path / "chdb"
    for round_ in (1, 2):  # a second process on the same data directory
        done = subprocess.run([sys.executable, "-c", SPOOL_PROBE, str(data), work], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == (-signal.SIGKILL if work == "killed" else 0), done.stderr[-2000:]
        if work != "none":
            assert done.stdout.split()[-1] == str(round_)  # the batch went through the spool: one more row each time
    assert list(temporary.iterdir()) == []
    spool = data / SPOOL_FOLDER
    assert not spool.exists() if work == "none" else list(spool.iterdir()) == []
