"""Tasks whose models share their first layers: one pass through those layers per batch, the same results as apart."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification, BertForTokenClassification

from agents.config import TaskSettings, TopicSettings
from agents.errors import TrainingDataError
from agents.learning.datasets import ClassificationExample, NerExample
from agents.learning.training import TrainConfig, train
from agents.model_dir import load_model
from agents.pipeline import ExtractionPipeline
from agents.routing import RoutingPolicy
from agents.runners import ModelRunner, build_runner
from agents.runners.shared_trunk import shared_depth, shared_trunks
from agents.runners.windows import TokenCache
from agents.types import BatchResult
from schemas.codec import Codecs
from schemas.extraction import TaskKind
from streams.ops.bench_models import random_bert_tasks
from tests.conftest import _save_tiny, _tiny_config

LAYERS = 3
TEXTS = [
    "Chest pain on exertion; no dyspnoea. History of type 2 diabetes mellitus and asthma.",
    "Patiënt mit Fieber, 38,5 °C — Verdacht auf Pneumonie. 肺炎 suspected.",
    " ".join(["Recurrent migraine with aura, treated with triptans."] * 90),  # several windows
    "x",
]


def _models(seed_ner_apart: bool = False, change_layer: int | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A tiny classifier and a tiny NER model; the NER model's backbone is the classifier's unless seeded apart, with
    one layer's weights changed when ``change_layer`` is given."""
    cls_config, ner_config = _tiny_config(["a", "b", "c"]), _tiny_config(["O", "B-Disease", "I-Disease"])
    cls_config.num_hidden_layers = ner_config.num_hidden_layers = LAYERS
    torch.manual_seed(0)
    classifier = BertForSequenceClassification(cls_config)
    torch.manual_seed(1)
    ner = BertForTokenClassification(ner_config)
    if not seed_ner_apart:
        ner.bert.load_state_dict({k: v for k, v in classifier.bert.state_dict().items() if not k.startswith("pooler.")})
    if change_layer is not None:
        with torch.no_grad():
            ner.bert.encoder.layer[change_layer].output.dense.weight.add_(0.01)
    return classifier, ner


def _runners(tmp_path: Path, **kwargs: object) -> list[ModelRunner]:
    classifier, ner = _models(**kwargs)  # type: ignore[arg-type]
    cls_dir, ner_dir = _save_tiny(tmp_path / "cls", classifier), _save_tiny(tmp_path / "ner", ner)
    return [
        build_runner("condition", load_model(cls_dir, TaskKind.classification), device="cpu"),
        build_runner("disease", load_model(ner_dir, TaskKind.ner), device="cpu"),
    ]


def test_shared_layers_are_found_by_their_weights(tmp_path: Path) -> None:
    condition, disease = _runners(tmp_path / "same")
    assert condition.model is not None and disease.model is not None
    # the classifier's last layer runs for the first position only on a CPU: the layers below it are shared
    assert condition.first_position
    assert shared_depth(condition.model, disease.model) == LAYERS - 1
    assert shared_depth(disease.model, disease.model) == LAYERS
    condition, disease = _runners(tmp_path / "changed", change_layer=1)
    assert shared_depth(condition.model, disease.model) == 1  # type: ignore[arg-type]
    condition, disease = _runners(tmp_path / "first changed", change_layer=0)
    assert shared_depth(condition.model, disease.model) == 0  # type: ignore[arg-type]
    assert shared_trunks([condition, disease]) == []  # the embeddings alone are not worth a trunk
    condition, disease = _runners(tmp_path / "apart", seed_ner_apart=True)
    assert shared_depth(condition.model, disease.model) == 0  # type: ignore[arg-type]
    assert shared_trunks([condition, disease]) == []


@pytest.mark.parametrize(("change_layer", "depth"), [(None, LAYERS - 1), (1, 1)])
def test_one_pass_gives_every_task_what_its_own_model_gives(tmp_path: Path, change_layer: int | None, depth: int) -> None:
    runners = _runners(tmp_path, change_layer=change_layer)
    trunks = shared_trunks(runners)
    assert [(t.tasks, t.depth) for t in trunks] == [(["condition", "disease"], depth)]
    windows = runners[0].preprocess(TEXTS, TokenCache(TEXTS))
    assert len(windows) > len(TEXTS)  # the long note is cut into several windows
    shared = trunks[0].window_probabilities(windows)
    for runner, probs in zip(runners, shared, strict=True):
        own = runner.window_probabilities(windows)
        assert len(probs) == len(own) == len(windows)
        for a, b in zip(probs, own, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert trunks[0].forward_seconds > 0


def test_tasks_that_cut_different_windows_run_apart(tmp_path: Path) -> None:
    classifier, ner = _models()
    cls_dir, ner_dir = _save_tiny(tmp_path / "cls", classifier), _save_tiny(tmp_path / "ner", ner)
    runners = [
        build_runner("condition", load_model(cls_dir, TaskKind.classification, max_length=256, stride=64), device="cpu"),
        build_runner("disease", load_model(ner_dir, TaskKind.ner, max_length=128, stride=32), device="cpu"),
    ]
    assert shared_trunks(runners) == []


def test_the_pipeline_takes_one_pass_and_its_columns_are_those_of_separate_passes(tmp_path: Path) -> None:
    runners = _runners(tmp_path)
    tasks = [
        TaskSettings(name="condition", kind=TaskKind.classification, model_dir=tmp_path, threshold=0.5),
        TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tmp_path, threshold=0.5),
    ]
    pipeline = ExtractionPipeline(runners, RoutingPolicy(tasks), TopicSettings(), max_note_bytes=50_000, codecs=Codecs())
    assert [t.tasks for t in pipeline._trunks] == [["condition", "disease"]]
    shared_result, apart_result = BatchResult(), BatchResult()
    shared = pipeline._columns(shared_result, TEXTS)
    pipeline._trunks = []
    apart = pipeline._columns(apart_result, TEXTS)
    assert [c.task for c in shared] == [c.task for c in apart] == ["condition", "disease"]
    for a, b in zip(shared, apart, strict=True):
        for da, db in zip(a.decisions(), b.decisions(), strict=True):
            for field in dataclasses.fields(da):
                x, y = getattr(da, field.name), getattr(db, field.name)
                if isinstance(x, np.ndarray) and x.dtype.kind == "f":
                    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
                elif isinstance(x, np.ndarray):
                    np.testing.assert_array_equal(x, y)
                else:
                    assert x == y
    # the trunk's forward is counted as the models' time, as each runner's is
    assert shared_result.stage_cpu_seconds["forward"] > 0


@pytest.mark.parametrize(("size", "depth"), [("tiny", 0), ("tiny-shared", 2)])
def test_the_bench_s_shared_models_are_two_heads_over_one_encoder(tmp_path: Path, size: str, depth: int) -> None:
    condition, disease = random_bert_tasks(tmp_path, size)
    models = [load_model(t.model_dir, t.kind).model for t in (condition, disease)]
    assert models[0] is not None and models[1] is not None
    assert shared_depth(models[0], models[1]) == depth


@pytest.mark.slow
@pytest.mark.parametrize(("adapt_top", "depth"), [(1, 1), (0, 0)])
def test_tasks_trained_with_the_top_layers_adapted_share_the_layers_below(
    tiny_backbone_dir: Path, tmp_path: Path, adapt_top: int, depth: int
) -> None:
    """``ehrstream train --adapt-top 1`` on a two-layer backbone: the first layer stays the backbone's in both tasks, so
    the workers run it once; with every layer adapted nothing is shared."""
    ner_data = [
        NerExample("Patient has breast cancer today.", [(12, 25, "Disease")]),
        NerExample("No sign of diabetes here.", [(11, 19, "Disease")]),
    ]
    cls_data = [ClassificationExample("chest pain and arrhythmia", "cardio"), ClassificationExample("seizures and stroke", "neuro")]
    runners = []
    for name, kind, data in (("condition", TaskKind.classification, cls_data * 4), ("disease", TaskKind.ner, ner_data * 4)):
        shape = {"epochs": 1, "batch_size": 4, "max_length": 32, "stride": 8}
        config = TrainConfig(task=name, kind=kind, base=str(tiny_backbone_dir), adapt_top=adapt_top, device="cpu", **shape)
        train(config, data, data[:2], tmp_path / name)
        runners.append(build_runner(name, load_model(tmp_path / name, kind), device="cpu"))
    trunks = shared_trunks(runners)
    assert [(t.tasks, t.depth) for t in trunks] == ([(["condition", "disease"], depth)] if depth else [])
    if trunks:
        windows = runners[0].preprocess(TEXTS, TokenCache(TEXTS))
        for runner, probs in zip(runners, trunks[0].window_probabilities(windows), strict=True):
            for a, b in zip(probs, runner.window_probabilities(windows), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_adapting_more_layers_than_the_backbone_has_is_refused(tiny_backbone_dir: Path, tmp_path: Path) -> None:
    data = [ClassificationExample("chest pain", "cardio"), ClassificationExample("stroke", "neuro")]
    config = TrainConfig(task="condition", kind=TaskKind.classification, base=str(tiny_backbone_dir), adapt_top=3, device="cpu")
    with pytest.raises(TrainingDataError, match="adapt-top 3: the backbone has 2 layers"):
        train(config, data, data, tmp_path / "out")
    with pytest.raises(TrainingDataError, match="full fine-tuning"):
        train(config.model_copy(update={"adapt_top": 1, "method": "full"}), data, data, tmp_path / "out")
