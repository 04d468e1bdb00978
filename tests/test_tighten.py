"""Tightening thresholds when the audited precision is low: the new threshold from the judged items (plain numpy), and
the review app's tightener end to end on chdb: reviewers' decisions in ClickHouse, a low verdict, the raised
threshold in the model registry, and no second raise without new audits."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agents.config import TaskSettings
from agents.model_dir import DEFAULT_BACKBONE, ModelManifest, RoutingCalibration, with_model_thresholds, write_manifest
from schemas.extraction import TaskKind
from schemas.review_decision import Change, ChangeAction, ReviewDecision
from streams.learning.registry import ModelRegistry
from streams.review.tighten import CEILING, Tightener, next_threshold
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, json_each_row, review_decision_row


def test_the_new_threshold_is_where_the_judged_items_reach_the_target_and_at_least_a_step_up() -> None:
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.5, 1.0, 400)
    correct = np.where(confidence >= 0.8, rng.uniform(size=400) < 0.97, rng.uniform(size=400) < 0.5)
    raised = next_threshold(confidence, correct, current=0.5, target=0.9, min_items=30, step=0.05)
    above = confidence >= raised
    assert 0.6 < raised < 0.85 and correct[above].mean() >= 0.9  # the lowest confidence where the items above reach it
    assert not (correct[confidence >= raised - 0.05].mean() >= 0.9 and raised - 0.05 > 0.55)  # and not much lower
    assert next_threshold(confidence, np.ones(400, bool), 0.5, 0.9, 30, 0.05) == 0.55  # the audits win: at least a step
    assert next_threshold(confidence, np.zeros(400, bool), 0.5, 0.9, 30, 0.05) == 0.55  # never reached: one step
    assert next_threshold(confidence, correct, 0.97, 0.9, 30, 0.05) == CEILING


def _model(where: Path, tiny_ner_dir: Path) -> Path:
    shutil.copytree(tiny_ner_dir, where)
    write_manifest(
        where,
        ModelManifest(
            task="disease",
            kind=TaskKind.ner,
            name="tiny-ner",
            version="v1",
            labels=["O", "B-Disease", "I-Disease"],
            base=DEFAULT_BACKBONE,
            format="full",
            max_length=64,
            stride=16,
            routing=RoutingCalibration(threshold=0.5, label_thresholds={}, target_precision=0.9),
        ),
    )
    return where


def test_the_tightener_raises_the_serving_versions_threshold_once_per_new_evidence(
    tiny_ner_dir: Path, tmp_path: Path, database: ChdbBackend
) -> None:
    migrate(database)
    rng = np.random.default_rng(5)
    rows = []
    for i in range(200):  # accepted spans the reviewers judged: right above 0.8, a coin toss below
        confidence = float(rng.uniform(0.5, 1.0))
        right = bool(rng.uniform() < (0.97 if confidence >= 0.8 else 0.5))
        before = json.dumps({"label": "Disease", "start": 0, "end": 5, "confidence": confidence, "state": "accepted"})
        change = Change(task="disease", action=ChangeAction.accept if right else ChangeAction.reject_span, before=before)
        decision = ReviewDecision(
            decision_id=f"d{i}", note_id=f"n{i}", base_revision=0, reviewer_id="r", decided_at=datetime.now(UTC), changes=[change]
        )
        rows.append(review_decision_row(decision, 0, i))
    database.insert_json("review_decisions", TABLE_COLUMNS["review_decisions"], json_each_row(rows))

    task = TaskSettings(name="disease", kind=TaskKind.ner, model_dir=_model(tmp_path / "v1", tiny_ner_dir))
    settings = Settings(data_dir=tmp_path / "data", tasks=[task], clickhouse_database=database.database)
    settings = settings.model_copy(update={"review": settings.review.model_copy(update={"tighten_thresholds": True})})
    tightener = Tightener(settings, database)
    low = [{"task": "disease", "label": "", "model": "tiny-ner@v1", "items": 40, "precision": 0.8, "lower": 0.7, "upper": 0.9}]

    assert tightener([{**low[0], "model": "tiny-ner@v0"}]) == []  # a low verdict about another version changes nothing
    (done,) = tightener(low)
    assert done["from"] == 0.5 and 0.6 < done["to"] < 0.85
    registry = ModelRegistry(settings.registry_file())
    assert registry.routing(with_model_thresholds(task)).threshold == done["to"]  # what workers route with
    assert tightener(low) == []  # the same audits again: no new evidence, no second raise
    (again,) = tightener([{**low[0], "items": 70}])  # 30 more audited items, still low: at least one step further
    assert again["from"] == done["to"] and again["to"] >= done["to"] + 0.05
