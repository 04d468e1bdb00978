"""Model runners on tiny real transformers models saved to disk: loading, windows, offsets, training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agents.clinical.encoder import encoder_placement
from agents.errors import ModelLoadError
from agents.learning.datasets import ClassificationExample, NerExample, read_examples
from agents.learning.training import TrainConfig, evaluate_loaded, train
from agents.model_dir import MANIFEST, load_model
from agents.runners import build_runner, precision
from agents.runners.base import ModelRunner, additive_mask, takes_additive_mask
from agents.runners.device import attention_kernels, wait_for_device
from agents.runners.first_position import FirstPositionLayer, with_first_position
from agents.runners.ner import word_probabilities
from schemas.extraction import TaskKind
from tests.conftest import DATASETS, REPO

LONG_NOTE = " ".join(f"Visit {i}: patient reports ataxia-telangiectasia and breast cancer." for i in range(120))


def test_ner_entities_are_exact_character_spans_of_the_original_text(tiny_ner_dir: Path) -> None:
    runner = build_runner("disease", load_model(tiny_ner_dir, TaskKind.ner), batch_size=4, device="cpu")
    texts = ["Short note.", LONG_NOTE, "Ünïcode  spacing\tand\nnewlines: Crohn's disease."]
    outputs = runner(texts)
    assert len(outputs) == 3
    for text, out in zip(texts, outputs, strict=True):
        for e in out.result.entities:
            assert 0 <= e.start < e.end <= len(text)
            assert e.text == text[e.start : e.end]
            assert 0.0 <= e.confidence <= 1.0
        assert out.result.model_version and out.result.kind is TaskKind.ner


def test_long_notes_are_windowed_not_truncated(tiny_ner_dir: Path) -> None:
    loaded = load_model(tiny_ner_dir, TaskKind.ner, max_length=64, stride=16)
    runner = build_runner("disease", loaded, device="cpu")
    windows = runner.preprocess([LONG_NOTE])
    assert len(windows) > 20 and set(windows.sample) == {0}
    probs = runner.window_probabilities(windows)
    ((starts, ends, word_probs),) = word_probabilities(windows, probs, 1)
    # every word of the note has probabilities, and the last word reaches the end of the text
    assert ends[-1] == len(LONG_NOTE.rstrip())
    assert word_probs.shape == (len(starts), 3)
    np.testing.assert_allclose(word_probs.sum(axis=1), 1.0, rtol=1e-4)


def test_classification_distribution_merges_windows(tiny_cls_dir: Path) -> None:
    runner = build_runner("condition", load_model(tiny_cls_dir, TaskKind.classification, max_length=32, stride=8), device="cpu")
    (short, long) = runner(["Chest pain.", LONG_NOTE])
    for out in (short, long):
        probs = [lab.probability for lab in out.result.labels]
        assert sorted(lab.label for lab in out.result.labels) == ["cardio", "neuro", "onco"]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert out.decisions[0].label == out.result.labels[0].label


def test_wrong_kind_and_missing_dirs_fail_clearly(tiny_ner_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(tmp_path / "nope", TaskKind.ner)
    with pytest.raises(ModelLoadError, match="neither"):
        load_model(tmp_path, TaskKind.ner)


def test_conll_reader_builds_text_and_spans() -> None:
    examples = read_examples(DATASETS / "ncbi_disease" / "devel.conll.tsv", "ner")
    assert len(examples) == 923
    mentions = sum(len(ex.spans) for ex in examples if isinstance(ex, NerExample))
    assert mentions == 787  # SOURCE.md: devel has 787 B- tags
    for ex in examples[:50]:
        assert isinstance(ex, NerExample)
        for start, end, label in ex.spans:
            assert label == "Disease" and ex.text[start:end].strip() == ex.text[start:end]


@pytest.mark.slow
@pytest.mark.parametrize("kind", [TaskKind.ner, TaskKind.classification])
def test_lora_training_writes_a_loadable_versioned_model_dir(kind: TaskKind, tiny_backbone_dir: Path, tmp_path: Path) -> None:
    if kind is TaskKind.ner:
        data: list = [
            NerExample("Patient has breast cancer today.", [(12, 25, "Disease")]),
            NerExample("No sign of diabetes here.", [(11, 19, "Disease")]),
        ] * 4
    else:
        data = [ClassificationExample("chest pain and arrhythmia", "cardio"), ClassificationExample("seizures and stroke", "neuro")] * 4
    config = TrainConfig(task="t", kind=kind, base=str(tiny_backbone_dir), epochs=2, batch_size=4, max_length=32, stride=8, device="cpu")
    result = train(config, data, data[:2], tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / MANIFEST).read_text())
    assert manifest["format"] == "lora" and manifest["data_sha256"] == result.manifest.data_sha256
    assert (tmp_path / "model" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["history"][-1]["epoch"] == 2
    loaded = load_model(tmp_path / "model", kind)
    assert loaded.version == result.manifest.version
    scores = evaluate_loaded(loaded, "t", data, device="cpu")
    assert scores["n"] == len(data) and 0.0 <= scores["f1"] <= 1.0
    # same data and settings: same version (deterministic)
    again = train(config, data, data[:2], tmp_path / "again")
    assert again.manifest.version == result.manifest.version


def _reference_word_probabilities(windows, probs, n_texts):  # type: ignore[no-untyped-def]
    """The plain-loop definition the vectorised version must equal: first sub-token, averaged over windows."""
    sums: list[dict[int, dict[int, list]]] = [{} for _ in range(n_texts)]  # type: ignore[type-arg]
    spans: list[dict[int, list[int]]] = [{} for _ in range(n_texts)]
    for w, text_idx in enumerate(windows.sample):
        for t, word in enumerate(windows.word_ids[w]):
            if word is None:
                continue
            start, end = windows.offsets[w][t]
            entry = sums[text_idx].setdefault(word, {}).setdefault(start, [np.zeros_like(probs[w][t], dtype=np.float64), 0])
            entry[0] += probs[w][t]
            entry[1] += 1
            bounds = spans[text_idx].setdefault(word, [start, end])
            bounds[0], bounds[1] = min(bounds[0], start), max(bounds[1], end)
    out = []
    for text_idx in range(n_texts):
        words = sorted(sums[text_idx])
        rows = [sums[text_idx][w][min(sums[text_idx][w])][0] / sums[text_idx][w][min(sums[text_idx][w])][1] for w in words]
        out.append(([spans[text_idx][w][0] for w in words], [spans[text_idx][w][1] for w in words], np.asarray(rows)))
    return out


def test_vectorised_word_probabilities_equal_the_plain_definition(tiny_ner_dir: Path) -> None:
    loaded = load_model(tiny_ner_dir, TaskKind.ner, max_length=32, stride=8)
    runner = build_runner("disease", loaded, device="cpu")
    texts = ["Short note.", LONG_NOTE[:3000], "Ünïcode  spacing\tand\nnewlines: Crohn's disease.", "a", "Hyper-IgE syndrome (HIES)."]
    windows = runner.preprocess(texts)
    probs = runner.window_probabilities(windows)
    got = word_probabilities(windows, probs, len(texts))
    want = _reference_word_probabilities(windows, probs, len(texts))
    for (s1, e1, p1), (s2, e2, p2) in zip(got, want, strict=True):
        assert (s1, e1) == (s2, e2)
        np.testing.assert_allclose(p1, p2.reshape(p1.shape), rtol=1e-6, atol=1e-7)


def test_token_bounded_batches_give_the_probabilities_of_window_bounded_ones(tiny_ner_dir: Path, tiny_cls_dir: Path) -> None:
    texts = ["Short note.", LONG_NOTE[:3000], "Ünïcode: Crohn's disease.", "a", LONG_NOTE[:700], ""]
    for directory, kind in ((tiny_ner_dir, TaskKind.ner), (tiny_cls_dir, TaskKind.classification)):
        loaded = load_model(directory, kind, max_length=32, stride=8)
        by_windows = build_runner("t", loaded, batch_size=64, device="cpu", batch_tokens=0)
        by_tokens = build_runner("t", loaded, batch_size=64, device="cpu", batch_tokens=100)
        assert by_windows.batch_tokens is None and by_tokens.batch_tokens == 100
        windows = by_windows.preprocess(texts)
        a, b = by_windows.window_probabilities(windows), by_tokens.window_probabilities(windows)
        assert len(a) == len(b) == len(windows) and len(windows) > 5
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert build_runner("t", loaded, device="cpu").batch_tokens == 2048  # the CPU default


def test_int8_runs_an_onnx_session_with_int8_weights_and_keeps_the_results_close(tiny_ner_dir: Path, tiny_cls_dir: Path) -> None:
    texts = ["Short note.", LONG_NOTE[:2000], "Ünïcode: Crohn's disease.", ""]
    for directory, kind in ((tiny_ner_dir, TaskKind.ner), (tiny_cls_dir, TaskKind.classification)):
        plain = build_runner("t", load_model(directory, kind), device="cpu")
        int8 = build_runner("t", load_model(directory, kind), device="cpu", quantization="int8")
        assert plain.quantization == "none" and plain.int8 is None
        assert int8.quantization == "int8" and int8.int8 is not None
        assert int8.model is None and int8.loaded.model is None  # the float32 weights are let go
        ops = [op for _, op in int8.int8.nodes]
        heads = [op for name, op in int8.int8.nodes if "classifier" in name]
        assert ops.count("MatMulInteger") >= 6  # every encoder projection runs on int8 weights
        assert heads and set(heads) <= {"MatMul", "Gemm", "Add"}  # the head stays float32
        a = plain.window_probabilities(plain.preprocess(texts))
        b = int8.window_probabilities(int8.preprocess(texts))
        assert len(a) == len(b) and max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) < 0.05
        assert [o.result.kind for o in int8(texts)] == [kind] * len(texts)


def test_bf16_runs_the_torch_model_in_bfloat16_and_keeps_the_results_close(tiny_ner_dir: Path, tiny_cls_dir: Path) -> None:
    texts = ["Short note.", LONG_NOTE[:2000], "Ünïcode: Crohn's disease.", ""]
    for directory, kind in ((tiny_ner_dir, TaskKind.ner), (tiny_cls_dir, TaskKind.classification)):
        plain = build_runner("t", load_model(directory, kind), device="cpu")
        bf16 = build_runner("t", load_model(directory, kind), device="cpu", quantization="bf16")
        assert bf16.quantization == "bf16" and bf16.int8 is None and bf16.model is not None
        assert (bf16.runs_in, plain.runs_in) == ("bf16", "float32")
        assert bf16.dtype == torch.bfloat16 and {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
        assert bf16.prebuilt_mask  # the bias is built in the model's dtype and checked at start
        a = plain.window_probabilities(plain.preprocess(texts))
        b = bf16.window_probabilities(bf16.preprocess(texts))
        assert all(x.dtype == np.float32 for x in b)
        assert len(a) == len(b) and max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) < 0.05
        assert [o.result.kind for o in bf16(texts)] == [kind] * len(texts)


@pytest.mark.parametrize(
    ("amx", "bf16", "int8", "picked"),
    [
        (True, True, True, "bf16"),
        (False, True, True, "int8"),  # AVX512-BF16 and VNNI without AMX (AMD Zen 4): int8 was faster there
        (False, True, False, "bf16"),
        (False, False, True, "int8"),
        (False, False, False, "none"),
    ],
)
def test_auto_picks_bf16_where_the_cpu_has_amx_then_int8_where_it_has_int8_dot_products_then_native_bf16_else_float32(
    tiny_cls_dir: Path, monkeypatch: pytest.MonkeyPatch, amx: bool, bf16: bool, int8: bool, picked: str
) -> None:
    monkeypatch.setattr(precision, "amx", lambda: amx)
    monkeypatch.setattr(precision, "native_bf16", lambda: bf16)
    monkeypatch.setattr(precision, "native_int8", lambda: int8)
    runner = build_runner("t", load_model(tiny_cls_dir, TaskKind.classification), device="cpu", quantization="auto")
    assert runner.quantization == picked and runner.runs_in == {"none": "float32"}.get(picked, picked)
    assert (runner.int8 is not None) == (picked == "int8")
    assert runner.dtype == (torch.bfloat16 if picked == "bf16" else torch.float32)
    assert runner.first_position  # every CPU path computes the classifier's last layer at the first position only
    assert [precision.cpu_precision(q) for q in ("none", "int8", "bf16")] == ["none", "int8", "bf16"]
    with pytest.raises(ValueError, match="fp8"):
        precision.cpu_precision("fp8")
    # the coder's sentence encoder follows the same rule (its int8 index codes as its bf16 index does)
    assert encoder_placement("auto", "cpu") == ("cpu", picked)


def test_prebuilt_padding_masks_give_the_probabilities_of_transformers_own(tiny_ner_dir: Path, tiny_cls_dir: Path) -> None:
    texts = ["Short note.", LONG_NOTE[:3000], "Ünïcode  spacing\tand\nnewlines: Crohn's disease.", "a", LONG_NOTE[:700], ""]
    for directory, kind in ((tiny_ner_dir, TaskKind.ner), (tiny_cls_dir, TaskKind.classification)):
        loaded = load_model(directory, kind, max_length=48, stride=8)
        # one batch of every window (padded), and batches of 4 (the long notes' full windows: some without padding)
        for batch_size in (64, 4):
            plain = build_runner("t", loaded, batch_size=batch_size, device="cpu", prebuilt_mask=False)
            prebuilt = build_runner("t", loaded, batch_size=batch_size, device="cpu")
            assert not plain.prebuilt_mask and prebuilt.prebuilt_mask
            windows = plain.preprocess(texts)
            widths = np.sort(windows.lengths)
            assert len(set(widths.tolist())) > 3 and widths[-4] == widths[-1]
            a, b = plain.window_probabilities(windows), prebuilt.window_probabilities(windows)
            assert len(a) == len(b) == len(windows)
            for x, y in zip(a, b, strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


class _Logits:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class _MaskModel(torch.nn.Module):
    """A one-layer stand-in: the mean of the embeddings the mask keeps (``form``: how it reads the mask)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=100)
        self.embed = torch.nn.Embedding(100, 4)
        self.form = form

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> _Logits:
        if self.form == "2d only" and attention_mask.ndim != 2:
            raise ValueError("expected a 2D attention mask")
        keep = attention_mask.reshape(attention_mask.shape[0], -1)[:, -input_ids.shape[1] :].float()
        if self.form == "additive" and attention_mask.ndim == 4:
            keep = (keep == 0).float()
        pooled = (self.embed(input_ids) * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return _Logits(pooled)


def test_models_that_do_not_take_a_prebuilt_mask_keep_the_2d_one() -> None:
    cpu = torch.device("cpu")
    assert takes_additive_mask(_MaskModel("additive"), cpu, torch.float32)
    assert not takes_additive_mask(_MaskModel("2d only"), cpu, torch.float32)  # refuses it
    assert not takes_additive_mask(_MaskModel("multiplies"), cpu, torch.float32)  # reads it as 0/1: other logits
    mask = torch.tensor([[1, 1, 0]])
    bias = additive_mask(mask, torch.bfloat16)
    assert bias.shape == (1, 1, 1, 3) and bias.dtype == torch.bfloat16
    assert bias[0, 0, 0, :2].tolist() == [0.0, 0.0] and bias[0, 0, 0, 2] == torch.finfo(torch.bfloat16).min


def test_a_worker_sizes_every_thread_pool_it_uses() -> None:
    """torch's, and numpy's BLAS pool with it (its idle threads spun on the other worker's core); in a fresh process,
    with BLAS started at four threads."""
    code = (
        "import torch; from threadpoolctl import threadpool_info; from streams.settings import Settings; "
        "from streams.worker import build_runners; "
        "build_runners(Settings().model_copy(update={'torch_threads': 1}), tasks=[]); "
        "print(torch.get_num_threads(), sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}))"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "4"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "[1]"]


@pytest.mark.parametrize(("quantization", "tolerance"), [("none", 1e-5), ("bf16", 0.05)])
@pytest.mark.parametrize("prebuilt_mask", [True, False])
def test_a_classifier_s_last_layer_at_the_first_position_gives_the_whole_model_s_probabilities(
    tiny_cls_dir: Path, quantization: str, tolerance: float, prebuilt_mask: bool
) -> None:
    """Short, windowed, multi-byte, one-token and empty notes, in padded batches and in a batch without padding, with
    the prebuilt additive mask and with transformers' own."""
    texts = ["Short note.", LONG_NOTE[:3000], "Ünïcode  spacing\tand\nnewlines: Crohn's disease.", "a", LONG_NOTE[:700], ""]
    runners = {
        first: build_runner(
            "t",
            load_model(tiny_cls_dir, TaskKind.classification, max_length=48, stride=8),
            batch_size=4,
            device="cpu",
            quantization=quantization,
            prebuilt_mask=prebuilt_mask,
            first_position=first,
        )
        for first in (False, True)
    }
    whole, pruned = runners[False], runners[True]
    assert pruned.first_position and not whole.first_position
    assert isinstance(pruned.model.bert.encoder.layer[-1], FirstPositionLayer)
    assert not isinstance(whole.model.bert.encoder.layer[-1], FirstPositionLayer)
    windows = whole.preprocess(texts)
    a, b = whole.window_probabilities(windows), pruned.window_probabilities(windows)
    assert len(a) == len(b) == len(windows) > 6
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=tolerance, atol=tolerance)
    assert [o.result.labels[0].label for o in whole(texts)] == [o.result.labels[0].label for o in pruned(texts)]


def test_an_int8_classifier_is_exported_with_its_last_layer_at_the_first_position(tiny_cls_dir: Path) -> None:
    """The ONNX graph holds the first-position layer and gives the whole int8 model's
    and float32's probabilities, up to int8's own error; the same windows and notes as the torch test above."""
    texts = ["Short note.", LONG_NOTE[:3000], "Ünïcode  spacing\tand\nnewlines: Crohn's disease.", "a", LONG_NOTE[:700], ""]

    def runner(quantization: str, first: bool) -> ModelRunner:
        loaded = load_model(tiny_cls_dir, TaskKind.classification, max_length=48, stride=8)
        return build_runner("t", loaded, batch_size=4, device="cpu", quantization=quantization, first_position=first)

    plain, whole, pruned = runner("none", False), runner("int8", False), runner("int8", True)
    assert pruned.first_position and not whole.first_position and pruned.int8 is not None and whole.int8 is not None
    # the first-position layer calls the attention's projections itself: its nodes are named "layer.N/query/...", the
    # whole layer's "layer.N/attention/self/query/..."
    last = len(plain.model.bert.encoder.layer) - 1
    names = {r: " ".join(name for name, _ in r.int8.nodes) for r in (whole, pruned)}
    assert f"layer.{last}/query/MatMul" in names[pruned] and f"layer.{last}/attention/self/query/MatMul" not in names[pruned]
    assert f"layer.{last}/query/MatMul" not in names[whole] and f"layer.{last}/attention/self/query/MatMul" in names[whole]
    windows = plain.preprocess(texts)
    a, b, c = (r.window_probabilities(windows) for r in (plain, whole, pruned))
    assert len(a) == len(b) == len(c) == len(windows) > 6
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_allclose(z, y, atol=0.03)
        np.testing.assert_allclose(z, x, atol=0.05)


def test_the_first_position_layer_leaves_the_loaded_model_as_it_was(tiny_cls_dir: Path) -> None:
    """The runner's model shares the loaded model's weights, but the loaded model (a training loop's, between epochs)
    keeps its layers and its state dict's keys, so it still saves and loads as it did."""
    loaded = load_model(tiny_cls_dir, TaskKind.classification)
    assert loaded.model is not None
    keys = list(loaded.model.state_dict())
    runner = build_runner("t", loaded, device="cpu")
    assert runner.first_position and isinstance(runner.model.bert.encoder.layer[-1], FirstPositionLayer)
    assert not any(isinstance(m, FirstPositionLayer) for m in loaded.model.modules())
    assert list(loaded.model.state_dict()) == keys
    shared = runner.model.bert.encoder.layer[-1].layer.attention.self.query.weight
    assert shared is loaded.model.bert.encoder.layer[-1].attention.self.query.weight
    ids = torch.tensor([[101, 2023, 2003, 102]])
    with torch.inference_mode():
        np.testing.assert_allclose(runner.model(input_ids=ids).logits, loaded.model(input_ids=ids).logits, rtol=1e-5, atol=1e-6)


def test_only_bert_classifiers_get_the_first_position_layer(tiny_ner_dir: Path) -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    ner = build_runner("t", load_model(tiny_ner_dir, TaskKind.ner), device="cpu")
    assert not any(isinstance(m, FirstPositionLayer) for m in ner.model.modules())
    other = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64)).eval()
    assert with_first_position(other, lambda mask: mask) is None
    assert not any(isinstance(m, FirstPositionLayer) for m in other.modules())


def test_a_gpu_forward_never_asks_cudnn_for_attention_and_a_cpu_one_keeps_torch_s_choice(
    tiny_cls_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda = torch.backends.cuda
    flags = (cuda.cudnn_sdp_enabled, cuda.flash_sdp_enabled, cuda.mem_efficient_sdp_enabled, cuda.math_sdp_enabled)
    before = [f() for f in flags]
    with attention_kernels(torch.device("cuda")):
        assert [f() for f in flags] == [False, True, True, True]
    assert [f() for f in flags] == before
    with attention_kernels(torch.device("cpu")):
        assert [f() for f in flags] == before
    # every forward batch of a runner runs inside its device's kernel choice
    entered: list[torch.device] = []
    real = attention_kernels

    def recording(device: torch.device):  # type: ignore[no-untyped-def]
        entered.append(device)
        return real(device)

    monkeypatch.setattr("agents.runners.base.attention_kernels", recording)
    runner = build_runner("condition", load_model(tiny_cls_dir, TaskKind.classification), device="cpu")
    assert len(runner(["Chest pain on exertion.", "Cough for two weeks."])) == 2
    assert entered == [torch.device("cpu")]


def test_a_gpu_wait_sleeps_on_a_blocking_event_before_every_copy_back(tiny_ner_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy back from CUDA busy-waits for the kernels; the runners wait on a blocking event first, so the thread
    sleeps. Without a GPU here: the event is a recorder, and the runner's wiring is checked on the CPU."""
    made: list[object] = []

    class RecordingEvent:
        def __init__(self, blocking: bool = False) -> None:
            made.append(("event", blocking))

        def record(self) -> None:
            made.append("record")

        def synchronize(self) -> None:
            made.append("synchronize")

    monkeypatch.setattr(torch.cuda, "Event", RecordingEvent)
    wait_for_device(torch.device("cuda"))
    wait_for_device(torch.device("cpu"))
    assert made == [("event", True), "record", "synchronize"]
    waited: list[torch.device] = []
    monkeypatch.setattr("agents.runners.base.wait_for_device", waited.append)
    runner = build_runner("disease", load_model(tiny_ner_dir, TaskKind.ner), device="cpu", batch_size=1)
    assert len(runner(["Chest pain on exertion.", "Cough for two weeks."])) == 2
    assert waited == [torch.device("cpu")] * 2  # once per forward batch
