"""Settings reach child processes one way: ``Settings.child_config`` written as the child's ``--config``.

A setting the parent changed after reading its environment (``model_copy``: a task's threshold, ``max_note_bytes``,
a topic name) must reach an embedded worker subprocess, and a stale environment variable must not win over it.
"""

from __future__ import annotations

import contextlib
import tomllib
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from agents.config import TaskSettings
from schemas.clinical_note import ClinicalNote
from streams.kafka.clients import producer
from streams.runtime.broker import TansuBroker
from streams.settings import KafkaSecurity, Settings, write_child_config
from streams.sink.backend import ChdbBackend
from streams.waiting import poll_until
from tests.conftest import running_stream


def test_child_config_carries_every_setting_but_the_secrets(tmp_path: Path, tiny_settings: Settings) -> None:
    parent = tiny_settings.model_copy(
        update={
            "max_note_bytes": 4321,
            "clickhouse_password": SecretStr("parent-secret-pw"),
            "schema_registry_password": SecretStr("registry-secret-pw"),
            "tasks": [t.model_copy(update={"threshold": 0.123, "label_thresholds": {"Disease": 0.456}}) for t in tiny_settings.tasks],
        }
    )
    path = write_child_config(parent, tmp_path / "child.toml", bootstrap="127.0.0.1:19092")
    text = path.read_text()
    assert "parent-secret-pw" not in text and "registry-secret-pw" not in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    child = Settings.load(path)
    assert child.kafka_bootstrap_servers == "127.0.0.1:19092" and child.kafka == KafkaSecurity()  # embedded: plain loopback
    assert child.config_file == path and child.data_dir == parent.data_dir.resolve()
    # everything else is the parent's, field for field
    same = {"config_file", "kafka_bootstrap_servers", "clickhouse_password", "schema_registry_password", "data_dir"}
    assert child.model_dump(exclude=same) == parent.model_dump(exclude=same)


def test_child_environment_keeps_secrets_and_drops_setting_variables(tiny_settings: Settings) -> None:
    environ = {
        "PATH": "/usr/bin",
        "EHRSTREAM_MAX_NOTE_BYTES": "2048",
        "KAFKA_BOOTSTRAP_SERVERS": "elsewhere:9092",
        "EHRSTREAM_CONFIG": "/etc/other.toml",
        "CLICKHOUSE_PASSWORD": "pw",
        "CLICKHOUSE_PASSWORD_FILE": "/run/secrets/pw",
        "EHRSTREAM_KAFKA__SASL_PASSWORD": "sasl",
    }
    assert tiny_settings.child_environment(environ) == {
        "PATH": "/usr/bin",
        "CLICKHOUSE_PASSWORD": "pw",
        "CLICKHOUSE_PASSWORD_FILE": "/run/secrets/pw",
        "EHRSTREAM_KAFKA__SASL_PASSWORD": "sasl",
    }


def _note(note_id: str, text: str) -> bytes:
    note = ClinicalNote(
        note_id=note_id, patient_id="p", note_type="progress_note", created_at="2026-11-01T08:00:00Z", text=text, source="t"
    )
    return note.model_dump_json().encode()


@pytest.mark.e2e
@pytest.mark.slow
def test_settings_changed_in_the_parent_reach_an_embedded_worker(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thresholds of 0 (every note auto-accepted, which the tiny random models never give at 0.5), a small
    ``max_note_bytes`` and a fresh notes topic, all set with ``model_copy``; the environment says otherwise."""
    monkeypatch.setenv("EHRSTREAM_MAX_NOTE_BYTES", "500000")
    monkeypatch.setenv("EHRSTREAM_TOPICS__NOTES", "not-this-topic")
    zero = [t.model_copy(update={"threshold": 0.0, "possible_entity_threshold": 0.0}) for t in tiny_settings.tasks]
    topics = tiny_settings.topics.model_copy(update={"notes": f"changed-notes-{uuid.uuid4().hex[:8]}"})
    settings = tiny_settings.model_copy(update={"tasks": zero, "max_note_bytes": 2048, "topics": topics})
    log = tmp_path / "worker.log"
    with running_stream(settings, broker.bootstrap, database, log) as worker:
        p = producer(settings, broker.bootstrap)
        for i in range(6):
            p.send(settings.topics.notes, key=b"k", value=_note(f"small-{i}", f"Seen for asthma, visit {i}."))
        p.send(settings.topics.notes, key=b"k", value=_note("big", "asthma " * 400))  # ~2.8 KB: over 2048, under 500,000
        p.flush()
        p.close()
        db = database.database
        rows: list[list[object]] = []

        def all_in() -> bool:
            nonlocal rows
            assert worker.alive(), log.read_text()[-3000:]
            rows = database.query(f"SELECT status, count() FROM {db}.extractions_final GROUP BY status").rows
            dead = int(database.query(f"SELECT count() FROM {db}.dead_letters").scalar())
            return sum(int(str(r[1])) for r in rows) == 6 and dead == 1

        with contextlib.suppress(TimeoutError):
            poll_until(all_in, 120, "6 notes and 1 dead letter", 0.5)
        assert rows == [["auto_accepted", 6]]
        kinds = database.query(f"SELECT error_kind FROM {db}.dead_letters").rows
        assert kinds == [["oversized"]]
    child = tomllib.loads(log.with_suffix(".toml").read_text())  # what the worker was given (the env here says otherwise)
    assert child["max_note_bytes"] == 2048 and child["topics"]["notes"] == topics.notes
    assert [t["threshold"] for t in child["tasks"]] == [0.0, 0.0]


def test_task_settings_have_one_home() -> None:
    """TaskSettings is the agent layer's; the streams settings compose it (no copy)."""
    assert Settings.model_fields["tasks"].annotation == list[TaskSettings]
