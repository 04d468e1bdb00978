"""The whole path on real components: Tansu, a Faust worker subprocess, the sink, chdb."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from agents.runners.precision import cpu_precision
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.dead_letter import DeadLetter, ErrorKind
from streams.ingest.publish import publish_file
from streams.kafka.clients import ensure_topics, producer
from streams.runtime.broker import TansuBroker
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerProcess
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.waiting import poll_until
from tests.conftest import DATASETS, REPO

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PLANTED_TEXT = "Zebulon Quarrington has severe xylophage syndrome"
PLANTED_PATIENT = "MRN-99887766"


def _notes_file(path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        note = ClinicalNote(
            note_id=f"e2e-{i}",
            patient_id=PLANTED_PATIENT,
            note_type="progress_note",
            created_at="2026-11-01T08:00:00Z",
            text=f"{PLANTED_TEXT}. Visit {i}.",
            source="e2e",
        )
        lines.append(note.model_dump_json())
    lines.insert(3, '{"note_id": "broken", "patient_id": ')  # rejected at publish, with its line number
    lines.insert(5, json.dumps({"note_id": "no-text", "patient_id": PLANTED_PATIENT}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _dead_letters(bootstrap: str, topic: str) -> list[DeadLetter]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    letters = [PLAIN.of(DeadLetter).decode(m.value) for m in consumer]
    consumer.close()
    return letters


def test_notes_flow_to_clickhouse_and_bad_records_to_the_dead_letter_topic(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, tmp_path: Path
) -> None:
    settings = tiny_settings.model_copy(update={"log_level": "DEBUG"})
    ensure_topics(settings, broker.bootstrap)
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    worker = WorkerProcess(settings, broker.bootstrap, tmp_path / "worker.log")
    sink.start()
    worker.start()
    try:
        summary = publish_file(_notes_file(tmp_path / "notes.jsonl", 40), settings, broker.bootstrap, settings.topics.notes, progress=False)
        assert (summary.accepted, summary.rejected) == (40, 2)
        assert [e[0] for e in summary.examples] == [4, 6]
        assert all(PLANTED_PATIENT not in e[1] for e in summary.examples)
        raw = producer(settings, broker.bootstrap)
        bad = [b"\xff\xfe garbage", b"", b"x" * (settings.max_note_bytes + 1)]
        for value in bad:
            raw.send(settings.topics.notes, key=b"bad", value=value)
        raw.flush()
        raw.close()

        db = database.database
        stored = dead = 0

        def all_in() -> bool:
            nonlocal stored, dead
            assert worker.alive(), (tmp_path / "worker.log").read_text()[-3000:]
            stored = database.query(f"SELECT count() FROM {db}.extractions_final").scalar()
            dead = database.query(f"SELECT count() FROM {db}.dead_letters").scalar()
            return bool(stored == 40 and dead == 3)

        with contextlib.suppress(TimeoutError):
            poll_until(all_in, 180, "40 notes and 3 dead letters")
        assert (stored, dead) == (40, 3)
        rows = database.query(
            f"SELECT note_id, length(doc_labels), mapKeys(models) FROM {db}.extractions_final WHERE note_id = {{id:String}}",
            {"id": "e2e-7"},
        ).rows
        assert rows == [["e2e-7", 3, ["condition", "disease"]]]
        kinds = sorted(d.error_kind.value for d in _dead_letters(broker.bootstrap, settings.topics.deadletter))
        assert kinds == sorted([ErrorKind.undecodable.value, ErrorKind.undecodable.value, ErrorKind.oversized.value])
        letters = _dead_letters(broker.bootstrap, settings.topics.deadletter)
        assert {d.source_topic for d in letters} == {settings.topics.notes}
        by_kind = {d.error_kind: d for d in letters}
        oversized = by_kind[ErrorKind.oversized]
        # cut to half of max_record_bytes so the letter itself can be produced; the message says where the original is
        assert len(oversized.raw) == settings.max_record_bytes // 2 and f"@{oversized.source_offset}" in oversized.message
        assert sorted(len(d.raw) for d in letters if d.error_kind is ErrorKind.undecodable) == [0, 10]
        # threshold 0.5 on random tiny models: the routing split is checked in test_pipeline; here both sides add up
        statuses = dict(database.query(f"SELECT status, count() FROM {db}.extractions_final GROUP BY status").rows)
        assert sum(statuses.values()) == 40
    finally:
        worker.stop()
        sink.stop()
    log_text = (tmp_path / "worker.log").read_text()
    assert "batch of" in log_text  # the worker logged at DEBUG/INFO ...
    assert PLANTED_TEXT not in log_text and "Zebulon" not in log_text  # ... and never the note text
    assert PLANTED_PATIENT not in log_text


@pytest.mark.timeout(1300)
def test_demo_command_accounts_for_every_note(tmp_path: Path) -> None:
    """`ehrstream demo --json` with the shipped default models, as a user runs it."""
    cmd = [sys.executable, "-m", "streams.cli", "--data-dir", str(tmp_path), "demo", "--notes", "60", "--datasets", str(DATASETS), "--json"]
    # `make unit` builds the ICD-10-CM index before the suite; run alone in a fresh clone, the first demo builds it: about
    # a minute on the AMX host, 5-9 minutes on a 2-vCPU AVX2 EPYC (2026-12-03, where 400 s, then pytest's 600, timed out)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["published"] == 60
    assert summary["extracted"] + summary["dead_lettered"] == 60
    assert summary["dead_lettered"] == 1  # one bad record in fifty
    assert summary["clickhouse_notes"] == summary["extracted"]
    assert summary["auto_accepted"] + summary["routed_to_review"] == summary["extracted"]
    # the int8 models its workers quantised are kept for the next run: both task models where `auto` picks int8 on
    # this CPU, and the coder's encoder where its index was embedded by ONNX Runtime's int8
    index = json.loads((REPO / "models" / "icd10cm" / "index.json").read_text(encoding="utf-8"))
    int8_encoder = index["encoder"] == "int8" and index.get("int8_engine") == "onnxruntime"
    kept = sorted(p.name for p in tmp_path.rglob("cache/onnx/*.onnx"))
    assert len(kept) == 2 * (cpu_precision("auto") == "int8") + int8_encoder, kept
