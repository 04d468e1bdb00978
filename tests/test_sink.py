"""The ClickHouse side on real chdb (and the real broker for the sink loop)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, TopicPartition

from schemas.codec import Codecs
from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.extraction import Entity, Extraction, ExtractionStatus, TaskKind, TaskResult
from streams.errors import QueryRefusedError
from streams.kafka.clients import ensure_topics, producer
from streams.query.endpoint import QueryServer, check_read_only, remote_query
from streams.query.reader import run_query
from streams.runtime.broker import TansuBroker
from streams.runtime.sink_thread import SinkThread
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row
from streams.waiting import poll_until

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry


def extraction(
    note_id: str, revision: int = 0, status: ExtractionStatus = ExtractionStatus.auto_accepted, text: str = "Has asthma."
) -> Extraction:
    return Extraction(
        note_id=note_id,
        revision=revision,
        patient_id="p",
        note_type="progress_note",
        source="s",
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        text=text,
        status=status,
        processed_at=datetime.now(UTC),
        results=[
            TaskResult(
                task="disease",
                kind=TaskKind.ner,
                model_name="m",
                model_version="v1",
                entities=[Entity(label="Disease", start=4, end=10, text="asthma", confidence=0.97)],
            ),
        ],
    )


def test_migrations_are_idempotent(database: ChdbBackend) -> None:
    assert migrate(database) == [
        "001_tables.sql",
        "002_review.sql",
        "003_analytics.sql",
        "004_clinical.sql",
        "005_items.sql",
        "006_merges.sql",
    ]
    assert migrate(database) == []
    tables = {r[0] for r in database.query("SELECT name FROM system.tables WHERE database = {db:String}", {"db": database.database}).rows}
    assert {"extractions", "review_tasks", "dead_letters", "extractions_final", "schema_migrations", "review_decisions"} <= tables
    assert {"review_queue", "review_backlog", "review_throughput", "review_agreement"} <= tables
    assert {"note_nlp", "patient_problems"} <= tables
    assert {"entity_counts_daily", "document_labels_daily", "model_versions", "model_agreement"} <= tables


def test_replays_are_collapsed_and_revisions_are_kept(database: ChdbBackend) -> None:
    migrate(database)
    rows = [extraction_row(extraction(f"n{i}"), 0, i) for i in range(5)]
    payload = json_each_row(rows)
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], payload)
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], payload)  # at-least-once replay
    reviewed = extraction_row(extraction("n0", revision=1, status=ExtractionStatus.reviewed), 0, 99)
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row([reviewed]))
    db = database.database
    assert database.query(f"SELECT count() FROM {db}.extractions_final").scalar() == 5
    assert database.query(f"SELECT status FROM {db}.extractions_final WHERE note_id = {{id:String}}", {"id": "n0"}).scalar() == "reviewed"
    assert database.query(f"SELECT count() FROM {db}.extractions FINAL WHERE note_id = 'n0'").scalar() == 2  # audit trail
    entity = database.query(
        f"SELECT e.label, e.text, e.start FROM {db}.extractions_final ARRAY JOIN entities AS e WHERE note_id = 'n1'"
    ).rows
    assert entity == [["Disease", "asthma", 4]]


def test_parameters_are_bound_not_formatted(database: ChdbBackend) -> None:
    migrate(database)
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row([extraction_row(extraction("x"), 0, 0)]))
    hostile = "x' OR '1'='1"
    assert (
        database.query(f"SELECT count() FROM {database.database}.extractions_final WHERE note_id = {{id:String}}", {"id": hostile}).scalar()
        == 0
    )


@pytest.mark.parametrize("sql", ["DROP TABLE t", "INSERT INTO t VALUES (1)", "SELECT 1; DROP TABLE t", "ALTER TABLE t DELETE WHERE 1", ""])
def test_query_refuses_writes(sql: str) -> None:
    with pytest.raises(QueryRefusedError):
        check_read_only(sql)


def test_query_endpoint_requires_its_token_and_is_read_only(database: ChdbBackend, tmp_path: Path) -> None:
    migrate(database)
    server = QueryServer(database, tmp_path)
    server.start()
    try:
        endpoint = json.loads((tmp_path / "sink.json").read_text())
        assert (tmp_path / "sink.json").stat().st_mode & 0o777 == 0o600
        assert remote_query(endpoint, "SELECT 1 AS one", None).rows == [[1]]
        with pytest.raises(QueryRefusedError):
            remote_query(endpoint, f"DROP DATABASE {database.database}", None)
        from streams.errors import SinkError

        with pytest.raises(SinkError, match="unauthorised"):
            remote_query({**endpoint, "token": "wrong"}, "SELECT 1", None)
        settings = Settings(data_dir=tmp_path)
        assert run_query(settings, "SELECT 2", None).rows == [[2]]  # the CLI path finds the running endpoint
    finally:
        server.stop()
    assert not (tmp_path / "sink.json").exists()


@pytest.mark.slow
def test_sink_writes_rows_then_commits_and_dead_letters_what_it_cannot_read(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend
) -> None:
    settings = tiny_settings
    ensure_topics(settings, broker.bootstrap)
    p = producer(settings, broker.bootstrap)
    for i in range(20):
        p.send(settings.topics.extractions, key=f"n{i}".encode(), value=PLAIN.of(Extraction).encode(extraction(f"n{i}")))
    p.send(settings.topics.extractions, key=b"bad", value=b"not avro")
    p.flush()
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    sink.start()
    try:
        db = database.database
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stored = database.query(f"SELECT count() FROM {db}.extractions_final").scalar()
            dead = database.query(f"SELECT count() FROM {db}.dead_letters").scalar()
            if stored == 20 and dead == 1:
                break
            time.sleep(0.5)
        assert (stored, dead) == (20, 1)
        row = database.query(f"SELECT error_kind, stage, source_topic FROM {db}.dead_letters").rows[0]
        assert row == [ErrorKind.invalid_avro.value, "sink", settings.topics.extractions]
    finally:
        sink.stop()
    # offsets were committed for everything written
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    committed = admin.list_group_offsets(settings.sink_group)[settings.sink_group]
    admin.close()
    extraction_offsets = sum(o.offset for tp, o in committed.items() if tp.topic == settings.topics.extractions)
    assert extraction_offsets == 21
    assert sum(o.offset for tp, o in committed.items() if tp.topic == settings.topics.deadletter) == 1  # the letter it stored
    # only partitions a batch read from are committed (each commit is a durable write on the broker)
    assert not [tp for tp in committed if tp.topic == settings.topics.review_decisions]


def test_a_busy_sink_writes_at_most_once_per_interval_and_a_quiet_one_at_once(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend
) -> None:
    """``sink_min_write_interval_seconds``: records arriving 0.1 s apart (twice the linger) are written in a few
    batches, not one each; the first record of a quiet topic is written without waiting out the interval."""
    bounds = {"sink_flush_seconds": 30.0, "sink_linger_seconds": 0.05, "sink_min_write_interval_seconds": 2.0}
    settings = tiny_settings.model_copy(update=bounds)
    ensure_topics(settings, broker.bootstrap)
    p = producer(settings, broker.bootstrap)
    codec = PLAIN.of(Extraction)
    db = database.database

    def stored(n: int) -> Callable[[], bool]:
        return lambda: int(database.query(f"SELECT count() FROM {db}.extractions").scalar()) >= n

    sink = SinkThread(settings, broker.bootstrap, backend=database)
    sink.start()
    try:
        p.send(settings.topics.extractions, key=b"warm", value=codec.encode(extraction("warm")))
        p.flush()
        poll_until(stored(1), 60, "the sink to join and write", interval_s=0.05)
        time.sleep(2.1)  # quiet for longer than the interval
        p.send(settings.topics.extractions, key=b"first", value=codec.encode(extraction("first")))
        p.flush()
        sent = time.monotonic()
        poll_until(stored(2), 30, "the first record after a quiet spell", interval_s=0.02)
        first_stored_s = time.monotonic() - sent
        for i in range(12):
            p.send(settings.topics.extractions, key=f"n{i}".encode(), value=codec.encode(extraction(f"n{i}")))
            p.flush()
            time.sleep(0.1)
        poll_until(stored(14), 60, "the busy records", interval_s=0.2)
    finally:
        sink.stop()
    # the quiet topic's record did not wait for the 2 s interval (the broker's fetch wait and the linger only)
    assert first_stored_s < 1.5
    # 12 records over about 1.2 s after that write: one write per 2 s interval, so at most two more
    assert sink.sink.stats.batches <= 4


@pytest.mark.slow
def test_the_sink_skips_a_batch_it_cannot_read_dead_letters_it_and_commits_past_it(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A CRC-corrupt batch between good extractions on one partition (and one on the dead-letter topic, which the sink
    also reads): every good row is stored, each bad batch is one dead letter naming its offsets, and the sink neither
    crashes nor stops the partition. Without the skip, kafka-python raises CorruptRecordError on every poll."""
    from tests.kafka_raw import corrupt_batch, produce_batch

    settings = tiny_settings
    ensure_topics(settings, broker.bootstrap)
    p = producer(settings, broker.bootstrap)
    codec = PLAIN.of(Extraction)
    for i in range(4):
        p.send(settings.topics.extractions, partition=0, value=codec.encode(extraction(f"before{i}"))).get(10)
    assert produce_batch(broker.bootstrap, settings.topics.extractions, 0, corrupt_batch([b"Zebulon's secret"] * 2)) == 0
    assert produce_batch(broker.bootstrap, settings.topics.deadletter, 0, corrupt_batch([b"Zebulon's secret"] * 3)) == 0
    for i in range(4):
        p.send(settings.topics.extractions, partition=0, value=codec.encode(extraction(f"after{i}"))).get(10)
    p.close()
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    db = database.database
    with caplog.at_level(logging.INFO):
        sink.start()
        try:

            def stored() -> bool:
                rows = database.query(f"SELECT count() FROM {db}.extractions_final").scalar()
                return rows == 8 and database.query(f"SELECT count() FROM {db}.dead_letters").scalar() == 2

            poll_until(stored, 60, "8 extractions and 2 dead letters")
            sql = f"SELECT error_kind, stage, source_topic, source_offset, message FROM {db}.dead_letters"
            letters = database.query(sql).rows
            assert sorted(r[:4] for r in letters) == sorted(
                [["undecodable", "sink", settings.topics.extractions, 4], ["undecodable", "sink", settings.topics.deadletter, 0]]
            )
            assert any("offsets 4-5" in str(r[4]) and "CRC mismatch" in str(r[4]) for r in letters)
            assert sink.error is None
        finally:
            sink.stop()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    committed = admin.list_group_offsets(settings.sink_group)[settings.sink_group]
    admin.close()
    assert committed[TopicPartition(settings.topics.extractions, 0)].offset == 10  # 4 + the skipped 2 + 4
    text = caplog.text
    assert f"undecodable record batch {settings.topics.extractions}[0]@4-5 (CRC mismatch)" in text and "Zebulon" not in text


def test_dead_letter_rows_keep_raw_bytes(database: ChdbBackend) -> None:
    import base64

    from streams.sink.rows import dead_letter_row

    migrate(database)
    letter = DeadLetter(
        raw=b"\xff\x00raw",
        key=None,
        error_kind=ErrorKind.undecodable,
        message="m",
        source_topic="t",
        source_partition=0,
        source_offset=7,
        stage="worker",
        failed_at=datetime.now(UTC),
    )
    database.insert_json("dead_letters", TABLE_COLUMNS["dead_letters"], json_each_row([dead_letter_row(letter)]))
    stored = database.query(f"SELECT raw_base64 FROM {database.database}.dead_letters").scalar()
    assert base64.b64decode(stored) == b"\xff\x00raw"


def test_review_decisions_become_reviewed_revisions_with_an_audit_row(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend
) -> None:
    from schemas.review_decision import Change, ChangeAction, ReviewDecision
    from schemas.review_task import ReasonKind, ReviewReason, ReviewTask

    settings = tiny_settings
    ensure_topics(settings, broker.bootstrap)
    migrate(database)
    db = database.database
    base = extraction("n1", status=ExtractionStatus.pending_review, text="Has asthma and gout.")
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row([extraction_row(base, 0, 0)]))
    from streams.sink.rows import review_task_row

    task = ReviewTask(
        note_id="n1",
        revision=0,
        note_type="progress_note",
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        reasons=[ReviewReason(task="disease", kind=ReasonKind.entity, label="Disease", start=4, end=10, confidence=0.4, threshold=0.5)],
    )
    database.insert_json("review_tasks", TABLE_COLUMNS["review_tasks"], json_each_row([review_task_row(task)]))
    assert database.query(f"SELECT note_id FROM {db}.review_queue").rows == [["n1"]]
    assert database.query(f"SELECT task, pending FROM {db}.review_backlog").rows == [["disease", 1]]

    reviewed = [
        TaskResult(
            task="disease",
            kind=TaskKind.ner,
            model_name="m",
            model_version="v1",
            entities=[Entity(label="Disease", start=15, end=19, text="gout", confidence=1.0)],
        )
    ]
    decision = ReviewDecision(
        decision_id="d1",
        note_id="n1",
        base_revision=0,
        reviewer_id="alice",
        decided_at=datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
        changes=[
            Change(task="disease", action=ChangeAction.reject_span, before='{"label": "Disease", "start": 4, "end": 10}'),
            Change(task="disease", action=ChangeAction.add_span, after='{"label": "Disease", "start": 15, "end": 19}'),
        ],
        results=reviewed,
    )
    orphan = decision.model_copy(update={"decision_id": "d2", "note_id": "no-such-note"})
    p = producer(settings, broker.bootstrap)
    codec = PLAIN.of(ReviewDecision)
    for d in (decision, decision, orphan):  # the first one twice: a replay
        p.send(settings.topics.review_decisions, key=d.note_id.encode(), value=codec.encode(d))
    p.flush()
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    sink.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = database.query(f"SELECT count() FROM {db}.review_decisions FINAL").scalar()
            dead = database.query(f"SELECT count() FROM {db}.dead_letters").scalar()
            if done == 1 and dead == 1:
                break
            time.sleep(0.5)
        assert (done, dead) == (1, 1)
    finally:
        sink.stop()
    final = database.query(f"SELECT revision, status, entities, processed_at FROM {db}.extractions_final WHERE note_id = 'n1'").rows
    entity = {"task": "disease", "label": "Disease", "start": 15, "end": 19, "text": "gout", "confidence": 1}
    assert final == [[1, "reviewed", [entity], "2026-11-02 09:30:00.000"]]
    assert database.query(f"SELECT count() FROM {db}.extractions FINAL WHERE note_id = 'n1'").scalar() == 2  # revision 0 kept
    assert database.query(f"SELECT count() FROM {db}.review_queue").scalar() == 0
    row = database.query(f"SELECT reviewer_id, base_revision, changes.action, changes.label FROM {db}.review_decisions FINAL").rows
    assert row == [["alice", 0, ["reject_span", "add_span"], ["Disease", "Disease"]]]
    agreement = database.query(f"SELECT task, label, items, accepted, corrected, added, agreement FROM {db}.review_agreement").rows
    assert agreement == [["disease", "Disease", 2, 0, 1, 1, 0]]
    assert database.query(f"SELECT reviewer_id, decisions, with_corrections FROM {db}.review_throughput").rows == [["alice", 1, 1]]
    letter = database.query(f"SELECT error_kind, source_topic FROM {db}.dead_letters").rows
    assert letter == [[ErrorKind.unknown_note.value, settings.topics.review_decisions]]
    # the analyst layer (migration 003) over the same rows
    assert database.query(f"SELECT toString(day), task, label, mentions, notes FROM {db}.entity_counts_daily").rows == [
        ["2026-11-01", "disease", "Disease", 1, 1]  # the reviewed revision's one span, not the model's
    ]
    versions = database.query(f"SELECT task, model, notes, auto_accepted, entities_per_note FROM {db}.model_versions").rows
    assert versions == [["disease", "m@v1", 1, 0, 1]]  # revision 0: what the model itself produced
    model_agreement = database.query(f"SELECT task, model, items, accepted, corrected, added, agreement FROM {db}.model_agreement").rows
    assert model_agreement == [["disease", "m@v1", 2, 0, 1, 1, 0]]
