"""Interoperability checked by the client most production feeds use: confluent-kafka (librdkafka) with Confluent's
own AvroSerializer and AvroDeserializer against a registry-compatible server (``tests/registry_server.py``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas.clinical_note import ClinicalNote
from schemas.codec import schema_text
from streams.runtime.broker import TansuBroker
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from tests.conftest import running_stream, wait_for_final
from tests.registry_server import LoopbackRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 12


def _note(i: int) -> ClinicalNote:
    return ClinicalNote(
        note_id=f"cf-{i}",
        patient_id="p-1",
        encounter_id=f"e-{i}",
        note_type="progress_note",
        created_at=datetime(2026, 11, 1, 8, i, tzinfo=UTC),
        text=f"Follow-up for asthma and type 2 diabetes, visit {i}.",
        source="librdkafka",
    )


def test_confluent_avro_in_and_out_through_the_stream(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, tmp_path: Path
) -> None:
    with LoopbackRegistry() as registry:
        settings = tiny_settings.model_copy(update={"schema_registry_url": registry.url, "avro_wire": "confluent"})
        client = SchemaRegistryClient({"url": registry.url})
        log = tmp_path / "worker.log"
        with running_stream(settings, broker.bootstrap, database, log) as worker:
            # in: librdkafka + Confluent's AvroSerializer, as a feed would produce; subject <topic>-value
            serialize = AvroSerializer(client, schema_text("clinical_note.avsc"), lambda note, _ctx: note.model_dump())
            producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "compression.type": "zstd"})
            for i in range(N):
                note = _note(i)
                value = serialize(note, SerializationContext(settings.topics.notes, MessageField.VALUE))
                producer.produce(settings.topics.notes, key=note.note_id.encode(), value=value)
            assert producer.flush(30) == 0
            assert f"{settings.topics.notes}-value" in registry.subjects
            assert wait_for_final(database, N, worker, log) == N
            assert int(database.query(f"SELECT count() FROM {database.database}.dead_letters").scalar()) == 0

            # out: ehrstream's extractions read back by librdkafka + Confluent's AvroDeserializer
            deserialize = AvroDeserializer(client)
            consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"cf-{tmp_path.name}", "auto.offset.reset": "earliest"})
            consumer.subscribe([settings.topics.extractions])
            read: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(read) < N:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                record = deserialize(message.value(), SerializationContext(message.topic(), MessageField.VALUE))
                read[record["note_id"]] = record
            consumer.close()
    assert set(read) == {f"cf-{i}" for i in range(N)}
    sample = read["cf-3"]
    assert sample["encounter_id"] == "e-3" and sample["text"].startswith("Follow-up for asthma")
    assert {r["task"] for r in sample["results"]} == {"condition", "disease"}
