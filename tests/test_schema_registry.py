"""Confluent Schema Registry: the REST client, the wire format, compatibility checks, and the stream with it on.

The registry is ``tests/registry_server.py``: Confluent's REST API and error codes on loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.config import TopicSettings
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs, schema_history, schema_text
from schemas.dead_letter import ErrorKind
from schemas.errors import RecordError
from schemas.registry import RegistryError, SchemaRegistryClient, confluent_schema_id
from streams.cli import main
from streams.ingest.publish import publish_file
from streams.kafka.clients import ensure_topics
from streams.kafka.schema_registry import subjects
from streams.runtime.broker import TansuBroker
from streams.runtime.processes import free_port
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerProcess
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from tests.conftest import wait_for_final
from tests.registry_server import LoopbackRegistry

NOTE = ClinicalNote(
    note_id="cf-1", patient_id="p", note_type="progress_note", created_at=datetime(2026, 11, 1, tzinfo=UTC), text="Has asthma.", source="cf"
)


@pytest.fixture
def registry() -> Iterator[LoopbackRegistry]:
    with LoopbackRegistry() as server:
        yield server


@pytest.fixture
def confluent(registry: LoopbackRegistry) -> Codecs:
    """Codecs with the loopback registry and Confluent framing on."""
    return Codecs(SchemaRegistryClient(registry.url), subjects(TopicSettings()), produce_confluent=True)


def test_client_registers_looks_up_fetches_and_checks_compatibility(registry: LoopbackRegistry) -> None:
    client = SchemaRegistryClient(registry.url)
    v1 = schema_history("review_decision.avsc")[0]
    current = schema_text("review_decision.avsc")
    assert client.is_compatible("decisions-value", current)  # a new subject accepts anything
    first = client.register("decisions-value", v1)
    assert client.register("decisions-value", v1) == first  # cached: no second request
    assert registry.requests["POST /subjects"] == 1
    assert client.lookup("decisions-value", current) is None
    assert client.is_compatible("decisions-value", current)  # v2 adds `results` with a default: backward compatible
    second = client.register("decisions-value", current)
    assert second != first and client.lookup("decisions-value", current)["version"] == 2  # type: ignore[index]
    assert json.loads(SchemaRegistryClient(registry.url).schema(first)) == json.loads(v1)
    assert client.subjects() == ["decisions-value"]
    # a field without a default cannot read what was written before: refused, and the check says so
    breaking = json.loads(current)
    breaking["fields"].append({"name": "ward", "type": "string"})
    assert not client.is_compatible("decisions-value", json.dumps(breaking))
    with pytest.raises(RegistryError) as refused:
        client.register("decisions-value", json.dumps(breaking))
    assert refused.value.status == 409
    with pytest.raises(RegistryError) as missing:
        client.schema(999)
    assert (missing.value.status, missing.value.code) == (404, 40403)


def test_confluent_framing_round_trips_and_single_object_still_reads(confluent: Codecs, registry: LoopbackRegistry) -> None:
    codec = confluent.of(ClinicalNote)
    framed = codec.encode(NOTE)
    schema_id = confluent_schema_id(framed)
    assert framed[:1] == b"\x00" and schema_id is not None
    assert confluent.decode_note(framed, 10_000) == NOTE  # the notes topic's decoder takes Confluent framing
    assert registry.subjects["ehr.notes-value"] == [schema_id]
    codec.produce_confluent = False
    single = codec.encode(NOTE)
    codec.produce_confluent = True
    assert single[:2] == b"\xc3\x01" and codec.decode(single) == NOTE  # both framings on one topic
    # a record naming an id the registry does not have, and a corrupt body: dead-letter kinds, not crashes
    with pytest.raises(RecordError) as unknown:
        codec.decode(b"\x00" + (4242).to_bytes(4, "big") + framed[5:])
    assert unknown.value.kind is ErrorKind.unknown_schema and "4242" in unknown.value.message
    with pytest.raises(RecordError) as corrupt:
        codec.decode(framed[:-3])
    assert corrupt.value.kind is ErrorKind.invalid_avro


def test_confluent_records_without_a_registry_are_dead_letter_material(registry: LoopbackRegistry) -> None:
    client = SchemaRegistryClient(registry.url)
    framed = (
        b"\x00"
        + client.register("x-value", schema_text("clinical_note.avsc")).to_bytes(4, "big")
        + Codecs().of(ClinicalNote).encode(NOTE)[10:]
    )
    with pytest.raises(RecordError) as no_registry:
        Codecs().decode_note(framed, 10_000)
    assert no_registry.value.kind is ErrorKind.unknown_schema and "no schema registry" in no_registry.value.message
    down = SchemaRegistryClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(RecordError) as unreachable:
        Codecs(down, subjects(TopicSettings())).decode_note(framed, 10_000)
    assert unreachable.value.kind is ErrorKind.unknown_schema and "unreachable" in unreachable.value.message


def test_schemas_command_registers_every_subject_and_reports_compatibility(
    registry: LoopbackRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", registry.url)
    first = CliRunner().invoke(main, ["schemas", "--register", "--json"])
    assert first.exit_code == 0, first.output
    statuses = json.loads(first.output)
    assert {s["subject"] for s in statuses} == set(subjects(TopicSettings()).values())
    assert all(s["ok"] and s["history_readable"] and s["registry_compatible"] and s["registry_id"] for s in statuses)
    again = json.loads(CliRunner().invoke(main, ["schemas", "--json"]).output)  # looked up, not registered anew
    assert [s["registry_id"] for s in again] == [s["registry_id"] for s in statuses]
    # someone registered an incompatible schema first: the check fails with exit code 1
    client = SchemaRegistryClient(registry.url)
    other = json.loads(schema_text("extraction.avsc"))
    other["fields"] = [f for f in other["fields"] if f["name"] != "text"] + [{"name": "only_this", "type": "string"}]
    client.register("ehr.custom-value", json.dumps(other))
    monkeypatch.setenv("EHRSTREAM_TOPICS__EXTRACTIONS", "ehr.custom")
    broken = CliRunner().invoke(main, ["schemas"])
    assert broken.exit_code == 1 and "INCOMPATIBLE" in broken.output


@pytest.mark.slow
@pytest.mark.e2e
def test_the_stream_runs_on_confluent_framing_end_to_end(
    broker: TansuBroker,
    registry: LoopbackRegistry,
    tiny_settings: Settings,
    database: ChdbBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Notes published with Confluent framing, the worker writing Confluent framing, the sink reading it."""
    # set in this process only: the worker subprocess gets them with every other setting (Settings.child_config)
    settings = tiny_settings.model_copy(update={"schema_registry_url": registry.url, "avro_wire": "confluent"})
    ensure_topics(settings, broker.bootstrap)
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    worker = WorkerProcess(settings, broker.bootstrap, tmp_path / "worker.log")
    sink.start()
    worker.start()
    try:
        notes = tmp_path / "notes.jsonl"
        notes.write_text("".join(NOTE.model_copy(update={"note_id": f"cf-{i}"}).model_dump_json() + "\n" for i in range(8)))
        assert publish_file(notes, settings, broker.bootstrap, settings.topics.notes, progress=False).accepted == 8
        assert wait_for_final(database, 8, worker, tmp_path / "worker.log") == 8
        db = database.database
        assert int(database.query(f"SELECT count() FROM {db}.dead_letters").scalar()) == 0
        # the worker registered the output schemas under the test's topics
        assert {f"{settings.topics.notes}-value", f"{settings.topics.extractions}-value"} <= set(registry.subjects)
    finally:
        worker.stop()
        sink.stop()
