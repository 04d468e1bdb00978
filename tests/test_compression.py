"""Compressed batches from the client most feeds use: librdkafka (confluent-kafka) with each Kafka codec.

A producer's ``compression.type`` is its own choice (gzip, snappy, lz4 and zstd are all common defaults), so every
topic ehrstream reads must take all four: the worker's notes topic (Faust/aiokafka) and the sink's topics (kafka-python).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer, TopicPartition

from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from streams.runtime.broker import TansuBroker
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.waiting import poll_until
from tests.conftest import running_stream, wait_for_final

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CODECS = ("gzip", "snappy", "lz4", "zstd")
PLAIN = Codecs()
PER_CODEC = 10


def _produce(bootstrap: str, topic: str, codec: str, values: list[bytes]) -> None:
    """One idempotent librdkafka producer per codec; linger lets a whole batch be compressed together."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "enable.idempotence": True, "linger.ms": 50, "acks": "all"}
    )
    for i, value in enumerate(values):
        producer.produce(topic, key=f"{codec}-{i}".encode(), value=value)
    assert producer.flush(30) == 0


def _note(batch: str, i: int) -> bytes:
    return (
        ClinicalNote(
            note_id=f"{batch}-{i}",
            patient_id="p-1",
            note_type="progress_note",
            created_at="2026-11-01T08:00:00Z",
            text=f"Patient seen for asthma and hypertension, visit {i}, batch {batch}.",
            source="compression",
        )
        .model_dump_json()
        .encode()
    )


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_reads_every_codec(broker: TansuBroker, settings_topics_only: str, codec: str) -> None:
    """The sink's client library: a librdkafka batch compressed with ``codec`` reads back record for record."""
    topic = f"{settings_topics_only}-{codec}"
    values = [f"value {i} ".encode() * 20 for i in range(25)]
    _produce(broker.bootstrap, topic, codec, values)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got = sorted(m.value for m in consumer)
    consumer.close()
    assert got == sorted(values)


@pytest.fixture
def settings_topics_only() -> str:
    import uuid

    return f"codec-{uuid.uuid4().hex[:8]}"


def test_notes_compressed_with_every_codec_reach_clickhouse(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, tmp_path: Path
) -> None:
    """Batches of notes compressed with gzip, snappy, lz4 and zstd by librdkafka: the worker neither crashes nor
    restarts, and every note of every batch is in ClickHouse once."""
    settings = tiny_settings
    log = tmp_path / "worker.log"
    with running_stream(settings, broker.bootstrap, database, log) as worker:
        for codec in CODECS:
            _produce(broker.bootstrap, settings.topics.notes, codec, [_note(codec, i) for i in range(PER_CODEC)])
        total = PER_CODEC * len(CODECS)
        assert wait_for_final(database, total, worker, log, timeout_s=180) == total
        time.sleep(1.0)  # a crash on a later fetch would show here
        assert worker.alive(), log.read_text()[-3000:]
        rows = database.query(
            f"SELECT splitByChar('-', note_id)[1] AS codec, count(), uniqExact(note_id) FROM {database.database}.extractions_final "
            "GROUP BY codec ORDER BY codec"
        ).rows
        assert rows == [[codec, PER_CODEC, PER_CODEC] for codec in sorted(CODECS)]
    assert "UnsupportedCodecError" not in log.read_text()


def test_every_consumer_reads_committed_records_only(broker: TansuBroker, tiny_settings: Settings) -> None:
    """Aborted transactions must never be extracted: the worker's aiokafka consumer (built by Faust) and every
    kafka-python consumer ask the broker for committed records only (``isolation_level=read_committed``)."""
    import asyncio

    from streams.kafka.clients import consumer
    from streams.worker import create_app

    kafka_python = consumer(tiny_settings, broker.bootstrap, tiny_settings.topics.notes, group_id=None)
    try:
        assert kafka_python.config["isolation_level"] == "read_committed"
    finally:
        kafka_python.close()

    async def worker_consumer_isolation() -> str:
        app = create_app(tiny_settings, broker.bootstrap, PLAIN, runners=[])
        thread = app.consumer._new_consumer_thread()
        built = thread._create_worker_consumer(app.transport)
        return str(built._isolation_level)

    assert asyncio.run(worker_consumer_isolation()) == "read_committed"


def test_an_undecodable_batch_is_skipped_reported_and_the_notes_after_it_flow(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, tmp_path: Path
) -> None:
    """A record batch whose CRC does not match sits between good notes on one partition: the worker logs and
    dead-letters it (its offset range, no content) and every note before and after it reaches ClickHouse."""
    from streams.kafka.clients import producer
    from tests.kafka_raw import corrupt_batch, produce_batch

    settings = tiny_settings
    topic = settings.topics.notes
    log = tmp_path / "worker.log"
    with running_stream(settings, broker.bootstrap, database, log) as worker:
        p = producer(settings, broker.bootstrap)
        for i in range(5):
            p.send(topic, partition=0, value=_note("before", i)).get(10)
        assert produce_batch(broker.bootstrap, topic, 0, corrupt_batch([b"Zebulon's secret note"] * 3)) == 0
        for i in range(5):
            p.send(topic, partition=0, value=_note("after", i)).get(10)
        p.close()
        assert wait_for_final(database, 10, worker, log, timeout_s=120) == 10
        db = database.database

        def reported() -> bool:
            return bool(database.query(f"SELECT count() FROM {db}.dead_letters").scalar())

        poll_until(reported, 30, "the dead letter of the skipped batch", 0.5)
        rows = database.query(f"SELECT error_kind, source_topic, source_partition, source_offset, message FROM {db}.dead_letters").rows
        assert [r[:4] for r in rows] == [["undecodable", topic, 0, 5]]
        assert "offsets 5-7" in str(rows[0][4]) and "CRC mismatch" in str(rows[0][4])
        assert worker.alive()
    text = log.read_text()
    assert f"undecodable record batch {topic}[0]@5-7 (CRC mismatch)" in text
    assert "Zebulon" not in text
