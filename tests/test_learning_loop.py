"""The learning loop on tiny real models and chdb: ``ehrstream learn --once`` trains a candidate from the reviewed notes,
calibrates it, judges it against the live version and promotes or rejects it through the registry;
``ehrstream calibrate --data clickhouse`` refits a version's thresholds on the reviewed notes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from schemas.extraction import Entity, Extraction, ExtractionStatus, TaskKind, TaskResult
from streams.cli import main
from streams.learning.loop import held_back
from streams.learning.registry import ModelRegistry
from streams.query.endpoint import QueryServer
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row

PHRASES = [("asthma", "Patient has asthma today."), ("gout", "Known gout, no fever."), ("anemia", "Severe anemia was treated.")]


def _conll(path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        word, sentence = PHRASES[i % len(PHRASES)]
        for token in sentence.replace(",", " ,").replace(".", " .").split():
            lines.append(f"{token}\t{'B-Disease' if token == word else 'O'}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def _reviewed(note_id: str) -> dict[str, object]:
    word, text = PHRASES[int(note_id.split("-")[1]) % len(PHRASES)]
    start = text.index(word)
    entity = Entity(label="Disease", start=start, end=start + len(word), text=word, confidence=1.0)
    extraction = Extraction(
        note_id=note_id,
        revision=1,
        patient_id="p",
        note_type="t",
        source="s",
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        text=text,
        status=ExtractionStatus.reviewed,
        processed_at=datetime.now(UTC),
        results=[TaskResult(task="disease", kind=TaskKind.ner, model_name="m", model_version="v0", entities=[entity])],
    )
    return extraction_row(extraction, 0, 0)


def test_learn_trains_judges_and_promotes_or_rejects_a_candidate(tiny_backbone_dir: Path, tmp_path: Path, database: ChdbBackend) -> None:
    migrate(database)
    note_ids = [f"r-{i}" for i in range(30)]
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row([_reviewed(n) for n in note_ids]))
    dev = _conll(tmp_path / "dev.conll.tsv", 12)
    config = tmp_path / "ehrstream.toml"
    config.write_text(
        f'clickhouse_database = "{database.database}"\n[[tasks]]\nname = "disease"\nkind = "ner"\nmodel_dir = "model"\nclinical = false\n'
    )
    data_dir = tmp_path / "data"
    cli = CliRunner()
    base = ["--config", str(config), "--data-dir", str(data_dir)]
    trained = cli.invoke(
        main,
        [*base, "train", "--task", "disease", "--data", str(dev), "--base", str(tiny_backbone_dir), "--epochs", "1", "--max-length", "32",
         "--device", "cpu"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    server = QueryServer(database, data_dir)  # the embedded sink's endpoint: learn and calibrate read through it
    server.start()
    try:
        learn = [*base, "learn", "--task", "disease", "--dev", str(dev), "--epochs", "1", "--device", "cpu", "--once"]
        first = cli.invoke(main, [*learn, "--tolerance", "1.0"])  # any candidate passes
        assert first.exit_code == 0, first.output
        promoted = json.loads(first.output.strip().splitlines()[-1])
        more = [_reviewed(f"r-{i}") for i in range(30, 40)]  # new reviews: a new candidate
        database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row(more))
        second = cli.invoke(main, [*learn, "--tolerance", "-1.0"])  # no candidate can pass
        assert second.exit_code == 0, second.output
        rejected = json.loads(second.output.strip().splitlines()[-1])
        calibrated = cli.invoke(
            main, [*base, "calibrate", "--task", "disease", "--model", promoted["model_dir"], "--data", "clickhouse", "--target-precision",
                   "0.5", "--device", "cpu", "--json"],
        )  # fmt: skip
        assert calibrated.exit_code == 0, calibrated.output
    finally:
        server.stop()

    held = sum(held_back(n, 0.2) for n in note_ids)
    assert 0 < held < 30 and (promoted["reviewed"], promoted["held_back"]) == (30, held)
    assert rejected["reviewed"] == 40
    assert promoted["promoted"] is True and rejected["promoted"] is False
    for key in ("dev_f1", "held_back_f1", "live_dev_f1", "live_held_back_f1"):
        assert 0.0 <= promoted[key] <= 1.0
    registry = ModelRegistry(Settings.load(config).model_copy(update={"data_dir": data_dir}).registry_file())
    states = [(v.version, v.state) for v in registry.versions("disease")]
    baseline = states[0][0]
    assert states == [(baseline, "retired"), (promoted["version"], "live"), (rejected["version"], "rejected")]
    assert "gate: worse than the live version" in registry.versions("disease")[2].note
    manifest = json.loads((Path(promoted["model_dir"]) / "ehrstream-model.json").read_text())
    assert manifest["training"]["init_from"] == str(tmp_path / "model")  # continued from the origin version
    again = json.loads((Path(rejected["model_dir"]) / "ehrstream-model.json").read_text())
    assert again["training"]["init_from"] == str(tmp_path / "model")  # every candidate starts from the origin
    assert manifest["routing"]["calibrated_on"] == "clickhouse"  # the last calibration: the reviewed notes
    assert json.loads(calibrated.output.strip().splitlines()[-1])["n"] == 40
