"""The learning loop on tiny data: evaluate, calibrate, the numbers behind them."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agents.learning.datasets import NerExample
from agents.learning.evaluation import calibration, ner_report
from agents.pipeline import ExtractionPipeline
from agents.routing import RoutingPolicy
from agents.types import Decision, InRecord, TaskOutput
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import Entity, Extraction, ExtractionStatus, TaskKind, TaskResult
from schemas.review_task import ReasonKind
from streams.cli import main
from streams.query.endpoint import QueryServer
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row
from streams.worker import build_runners

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry


def test_ece_of_perfectly_calibrated_and_overconfident_predictions() -> None:
    conf = np.array([0.25] * 4 + [0.75] * 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    assert calibration(conf, correct)["ece"] == pytest.approx(0.0)
    overconfident = calibration(np.full(10, 0.9), np.array([1] * 6 + [0] * 4, dtype=bool))
    assert overconfident["ece"] == pytest.approx(0.3)
    assert overconfident["bins"] == [
        {"low": pytest.approx(0.8667, abs=1e-3), "high": pytest.approx(0.9333, abs=1e-3), "count": 10, "accuracy": 0.6, "confidence": 0.9}
    ]


def _out(entities: list[tuple[int, int, float]], possible: list[float] = ()) -> TaskOutput:  # type: ignore[assignment]
    ents = [Entity(label="Disease", start=s, end=e, text="x" * (e - s), confidence=c) for s, e, c in entities]
    decisions = [Decision("disease", ReasonKind.entity, "Disease", c, s, e) for s, e, c in entities]
    decisions += [Decision("disease", ReasonKind.possible_entity, "Disease", p, 0, 1) for p in possible]
    return TaskOutput(TaskResult(task="disease", kind=TaskKind.ner, model_name="m", model_version="v", entities=ents), decisions)


def test_ner_report_strict_overlap_confusion_and_tradeoff() -> None:
    examples = [NerExample("a" * 40, [(0, 10, "Disease"), (20, 30, "Disease")]), NerExample("b" * 40, [(5, 9, "Disease")])]
    outputs = [_out([(0, 10, 0.95), (20, 25, 0.6)]), _out([(30, 35, 0.9)], possible=[0.7])]
    rep = ner_report(examples, outputs, ["O", "B-Disease", "I-Disease"], guard=0.75)
    assert (rep["strict"]["tp"], rep["strict"]["fp"], rep["strict"]["fn"]) == (1, 2, 2)
    assert (rep["overlap"]["tp"], rep["overlap"]["fp"], rep["overlap"]["fn"]) == (2, 1, 1)
    assert rep["confusion"] == {"labels": ["Disease", "O"], "matrix": [[2, 1], [1, 0]]}
    by_t = {row["threshold"]: row for row in rep["tradeoff"]}
    # note 2's "no entity here" decision (0.7) is under the 0.75 recall guard at every threshold
    assert by_t[0.5] == {"threshold": 0.5, "review_share": 0.5, "auto_precision": 0.5, "auto_notes": 1}
    assert by_t[0.65] == {"threshold": 0.65, "review_share": 1.0, "auto_precision": None, "auto_notes": 0}  # note 1 has a 0.6 span
    no_guard = {row["threshold"]: row for row in ner_report(examples, outputs, ["O", "B-Disease", "I-Disease"])["tradeoff"]}
    assert no_guard[0.5] == {"threshold": 0.5, "review_share": 0.0, "auto_precision": pytest.approx(1 / 3), "auto_notes": 2}


@pytest.mark.slow
def test_train_evaluate_calibrate_end_to_end(tiny_backbone_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = [
        {"text": "Chest pain and arrhythmia.", "label": "cardio"},
        {"text": "Seizures after a stroke.", "label": "neuro"},
        {"text": "Heart failure with edema.", "label": "cardio"},
        {"text": "Migraine and epilepsy.", "label": "neuro"},
    ] * 3
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = tmp_path / "ehrstream.toml"
    config.write_text('[[tasks]]\nname = "topic"\nkind = "classification"\nmodel_dir = "model"\nthreshold = 0.8\n')
    cli = CliRunner()
    trained = cli.invoke(
        main,
        [
            "--config",
            str(config),
            "train",
            "--task",
            "topic",
            "--data",
            str(data),
            "--dev",
            str(data),
            "--base",
            str(tiny_backbone_dir),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--max-length",
            "32",
            "--device",
            "cpu",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.output.strip().splitlines()[-1])["out"] == str(tmp_path / "model")

    evaluated = cli.invoke(
        main,
        [
            "--config",
            str(config),
            "evaluate",
            "--task",
            "topic",
            "--data",
            str(data),
            "--plots",
            str(tmp_path / "plots"),
            "--json",
            "--device",
            "cpu",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads(evaluated.output.strip().splitlines()[-1])
    assert {"task", "n", "f1", "precision", "recall", "ece", "review_share"} <= summary.keys() and summary["n"] == 12
    for png in ("reliability.png", "confusion.png", "tradeoff.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "plots" / "report.json").read_text())["report"]["tradeoff"]

    calibrated = cli.invoke(
        main,
        [
            "--config",
            str(config),
            "calibrate",
            "--task",
            "topic",
            "--data",
            str(data),
            "--target-precision",
            "0.5",
            "--json",
            "--device",
            "cpu",
        ],
    )
    assert calibrated.exit_code == 0, calibrated.output
    result = json.loads(calibrated.output.strip().splitlines()[-1])
    assert result["nll_after"] <= result["nll_before"] + 1e-6
    manifest = json.loads((tmp_path / "model" / "ehrstream-model.json").read_text())
    assert manifest["temperature"] == result["temperature"]
    routing = manifest["routing"]  # the thresholds belong to the model version, not to the config
    assert (routing["threshold"], routing["target_precision"], routing["calibrated_on"]) == (result["threshold"], 0.5, str(data))
    assert set(routing["label_thresholds"]) == {"cardio", "neuro"}
    (task,) = tomllib.loads(config.read_text())["tasks"]
    assert task == {"name": "topic", "kind": "classification", "model_dir": "model", "threshold": 0.8}  # untouched
    again = cli.invoke(main, ["--config", str(config), "evaluate", "--task", "topic", "--data", str(data), "--json", "--device", "cpu"])
    scored = json.loads(again.output.strip().splitlines()[-1])
    assert (scored["thresholds_from"], scored["threshold"]) == ("model", result["threshold"])
    assert scored["review_share"] == pytest.approx(result["review_share"]) and scored["auto_precision"] == pytest.approx(
        result["auto_precision"]
    )


@pytest.mark.slow
def test_model_trained_from_clickhouse_rows_is_loaded_by_the_worker_and_named_on_new_rows(
    tiny_backbone_dir: Path, tmp_path: Path, database: ChdbBackend
) -> None:
    migrate(database)
    text = "Patient has breast cancer and asthma."
    cancer, asthma = (12, 25), (30, 36)

    def row(note_id: str, status: ExtractionStatus, revision: int, confidences: tuple[float, float]) -> dict[str, object]:
        entities = [
            Entity(label="Disease", start=s, end=e, text=text[s:e], confidence=c)
            for (s, e), c in zip((cancer, asthma), confidences, strict=True)
        ]
        extraction = Extraction(
            note_id=note_id,
            revision=revision,
            patient_id="p",
            note_type="t",
            source="s",
            created_at=datetime(2026, 11, 1, tzinfo=UTC),
            text=text,
            status=status,
            processed_at=datetime.now(UTC),
            results=[TaskResult(task="disease", kind=TaskKind.ner, model_name="old", model_version="v0", entities=entities)],
        )
        return extraction_row(extraction, 0, 0)

    rows = [row(f"reviewed-{i}", ExtractionStatus.reviewed, 1, (0.4, 0.3)) for i in range(4)]  # reviewer-confirmed: kept whatever the score
    rows += [row(f"auto-{i}", ExtractionStatus.auto_accepted, 0, (0.99, 0.97)) for i in range(3)]  # confident machine labels: kept
    rows += [row(f"doubtful-{i}", ExtractionStatus.auto_accepted, 0, (0.99, 0.6)) for i in range(2)]  # below the floor: left out
    rows += [row(f"pending-{i}", ExtractionStatus.pending_review, 0, (0.99, 0.99)) for i in range(2)]  # not yet reviewed: left out
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row(rows))

    config = tmp_path / "ehrstream.toml"
    config.write_text(
        f'clickhouse_database = "{database.database}"\n[[tasks]]\nname = "disease"\nkind = "ner"\nmodel_dir = "model"\nthreshold = 0.5\n'
    )
    server = QueryServer(database, tmp_path / "data")  # the embedded sink's endpoint: train reads through it
    server.start()
    try:
        result = CliRunner().invoke(
            main,
            [
                "--config",
                str(config),
                "--data-dir",
                str(tmp_path / "data"),
                "train",
                "--task",
                "disease",
                "--data",
                "clickhouse",
                "--confidence-floor",
                "0.9",
                "--base",
                str(tiny_backbone_dir),
                "--epochs",
                "1",
                "--max-length",
                "32",
                "--device",
                "cpu",
            ],
        )
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert "4 reviewed, 3 auto-accepted >= 0.9, 2 below the floor left out" in result.output
    version = json.loads((tmp_path / "model" / "ehrstream-model.json").read_text())["version"]

    # what the worker does at start (restart to pick up a new model): build runners from the settings
    settings = Settings.load(config)
    pipeline = ExtractionPipeline(build_runners(settings), RoutingPolicy(settings.tasks), settings.topics, 10_000, codecs=PLAIN)
    note = ClinicalNote(note_id="new-1", patient_id="p", note_type="t", created_at="2026-11-02T00:00:00Z", text=text, source="s")
    out = pipeline.process([InRecord(note.model_dump_json().encode(), None, "notes", 0, 0)])
    (extraction,) = [PLAIN.of(Extraction).decode(r.value) for r in out.records if r.topic == settings.topics.extractions]
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row([extraction_row(extraction, 0, 1)]))
    models = database.query(f"SELECT models['disease'] FROM {database.database}.extractions_final WHERE note_id = 'new-1'").scalar()
    assert models == f"disease-lora@{version}"


def test_thresholds_belong_to_the_model_version() -> None:
    """The shipped config sets no threshold: each shipped model's manifest carries the ones calibrated for it, and
    the worker's routing takes them; a task set to thresholds_from = "config" keeps its own."""
    from agents.model_dir import with_model_thresholds
    from streams.settings import Settings
    from tests.conftest import REPO

    tasks = {t.name: t for t in Settings.load(REPO / "ehrstream.toml").tasks}
    disease = with_model_thresholds(tasks["disease"])
    assert (disease.threshold, disease.label_thresholds) == (0.82, {"Disease": 0.82})
    condition = with_model_thresholds(tasks["condition"])
    assert condition.threshold == 0.55 and condition.label_thresholds["neoplasms"] == 0.7
    pinned = tasks["disease"].model_copy(update={"thresholds_from": "config", "threshold": 0.5})
    assert with_model_thresholds(pinned).threshold == 0.5
