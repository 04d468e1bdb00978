"""Settings read once with clear precedence; every CLI flag shows its environment variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from streams.cli import main
from streams.errors import ConfigError
from streams.settings import Settings
from tests.conftest import REPO


def test_environment_overrides_config_file_and_paths_are_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "conf" / "ehrstream.toml"
    config.parent.mkdir()
    config.write_text(
        'batch_max_notes = 7\ntopic_partitions = 3\n[topics]\nnotes = "hospital-a.notes"\n'
        '[[tasks]]\nname = "disease"\nkind = "ner"\nmodel_dir = "models/disease"\nthreshold = 0.7\nquantization = "auto"\n'
        "[tasks.label_thresholds]\nDisease = 0.95\n"
    )
    monkeypatch.setenv("EHRSTREAM_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    settings = Settings.load(config)
    assert settings.batch_max_notes == 7  # from the file
    assert settings.topic_partitions == 6  # env wins over the file
    assert settings.topics.notes == "hospital-a.notes" and settings.topics.deadletter == "ehr.deadletter"
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092" and not settings.embedded_kafka
    (task,) = settings.tasks
    assert task.model_dir == config.parent / "models" / "disease"
    assert task.threshold_for("Disease") == 0.95 and task.threshold_for("Other") == 0.7
    assert task.quantization == "auto"
    with pytest.raises(ValidationError):  # frozen: read once, passed down, never mutated
        settings.batch_max_notes = 8  # type: ignore[misc]


def test_secrets_are_hidden_and_placeholders_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "http://ehr:s3cr3t-Value@clickhouse:8123")
    settings = Settings.load()
    assert "s3cr3t" not in repr(settings) and not settings.embedded_clickhouse
    monkeypatch.setenv("CLICKHOUSE_URL", "http://ehr:changeme@clickhouse:8123")
    monkeypatch.setenv("EHRSTREAM_ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match="placeholder"):
        Settings.load()


def test_bad_settings_fail_with_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EHRSTREAM_CLICKHOUSE_DATABASE", "bad; DROP")
    with pytest.raises(ConfigError, match="clickhouse_database"):
        Settings.load()
    with pytest.raises(ConfigError, match="no such file"):
        Settings.load(tmp_path / "missing.toml")
    config = tmp_path / "fp8.toml"
    config.write_text('[[tasks]]\nname = "disease"\nkind = "ner"\nmodel_dir = "models/disease"\nquantization = "fp8"\n')
    with pytest.raises(ConfigError, match="quantization"):
        Settings.load(config)


@pytest.mark.parametrize("command", ["demo", "train", "publish", "evaluate"])
def test_every_flag_names_its_environment_variable(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    help_text = result.output
    for line in help_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--") and not stripped.startswith(("--help", "--json", "--lora", "--param", "--allow-writes", "--create")):
            block = help_text[help_text.index(stripped) :][:400]
            assert "env var:" in block, f"{command}: {stripped} has no env var twin"


def test_query_refuses_writes_with_exit_code_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "--data-dir", str(tmp_path), "query", "DROP TABLE x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not a read" in proc.stderr and "Traceback" not in proc.stderr


def test_publish_without_a_broker_says_how_to_get_one(tmp_path: Path) -> None:
    notes = tmp_path / "n.jsonl"
    notes.write_text("{}\n")
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "publish", str(notes)], env={"KAFKA_BOOTSTRAP_SERVERS": ""})
    assert result.exit_code == 2 and "ehrstream up" in result.output


def test_publish_reads_csv_and_reports_rejects_by_line(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from streams.ingest.publish import publish_file

    csv_file = tmp_path / "notes.csv"
    csv_file.write_text(
        "note_id,patient_id,note_type,created_at,text,source,meta\n"
        'c1,p1,progress_note,2026-11-01T10:00:00Z,"Fever, cough.",csv,"{""ward"": ""4A""}"\n'
        "c2,p2,progress_note,not-a-date,Text,csv,\n"
        "c3,p3,progress_note,2026-11-01T10:00:00Z,   ,csv,\n"
    )
    summary = publish_file(csv_file, Settings(), broker.bootstrap, "csv-notes", progress=False)
    assert (summary.accepted, summary.rejected) == (1, 2)
    assert [(line, reason.split(":")[0]) for line, reason, _ in summary.examples] == [(3, "validation_error"), (4, "empty_text")]
