"""The ONNX cache: int8 models quantised once, read back at the next start, exactly as built; keys that change with
anything that changes the graph; entries that do not match their digest, or a directory that cannot be written,
never stop a runner from being built."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.config import TaskSettings
from agents.model_dir import load_model
from agents.runners import build_runner
from agents.runners.first_position import with_first_position
from agents.runners.onnx_cache import OnnxCache, model_key
from agents.runners.onnx_int8 import FLOAT_NODES
from schemas.extraction import TaskKind
from streams.ops.demo import fresh_data_dir
from streams.settings import Settings
from streams.worker import build_runners

TEXTS = ["Short note.", "Visit 3: patient reports ataxia-telangiectasia and breast cancer. " * 40, "Ünïcode: Crohn's disease.", ""]


def _int8(directory: Path, kind: TaskKind, cache: OnnxCache) -> tuple[bool, list[np.ndarray], list[tuple[str, str]]]:
    runner = build_runner("t", load_model(directory, kind), device="cpu", quantization="int8", onnx_cache=cache)
    assert runner.int8 is not None
    return runner.int8.from_cache, runner.window_probabilities(runner.preprocess(TEXTS)), runner.int8.nodes


def test_an_int8_runner_built_again_reads_its_model_from_the_cache_and_computes_exactly_the_same(
    tmp_path: Path, tiny_ner_dir: Path, tiny_cls_dir: Path
) -> None:
    cache = OnnxCache(tmp_path / "onnx")
    for n, (directory, kind) in enumerate(((tiny_ner_dir, TaskKind.ner), (tiny_cls_dir, TaskKind.classification)), start=1):
        built, first, nodes = _int8(directory, kind, cache)
        assert not built and len(cache.entries()) == n  # built here, and kept
        read, again, read_nodes = _int8(directory, kind, cache)
        assert read and len(cache.entries()) == n
        assert read_nodes == nodes and any(op == "MatMulInteger" for _, op in nodes)
        assert len(again) == len(first) and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_key_changes_with_any_weight_what_the_export_asks_and_the_layers_that_run(tiny_cls_dir: Path) -> None:
    model = load_model(tiny_cls_dir, TaskKind.classification).model
    assert model is not None

    def key(m: torch.nn.Module, per_token: bool = False, nodes: str | None = FLOAT_NODES.pattern) -> str:
        return model_key(m, per_token=per_token, output="logits", float_nodes=nodes, opset=17)

    base = key(model)
    assert key(model) == base  # the same model, the same key
    assert len({base, key(model, per_token=True), key(model, nodes=None)}) == 3
    first_position = with_first_position(model, lambda mask: mask)  # the same weights, the last layer's code replaced
    assert first_position is not None and key(first_position) != base
    with torch.no_grad():
        weight = model.bert.encoder.layer[0].attention.self.query.weight
        weight[0, 0] += 1e-6  # one weight, moved by a millionth
    assert key(model) != base


def test_an_entry_that_does_not_match_its_digest_is_dropped_and_built_again(
    tmp_path: Path, tiny_ner_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = OnnxCache(tmp_path / "onnx")
    _, expected, _ = _int8(tiny_ner_dir, TaskKind.ner, cache)
    (entry,) = cache.entries()
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit flipped on disk
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="agents.runners.onnx_cache"):
        read, got, _ = _int8(tiny_ner_dir, TaskKind.ner, cache)
    assert not read and "does not match its digest" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    entry.write_bytes(entry.read_bytes()[:1000])  # torn: a write cut short
    assert not _int8(tiny_ner_dir, TaskKind.ner, cache)[0]
    assert _int8(tiny_ner_dir, TaskKind.ner, cache)[0]  # the entry written again is whole


def test_the_least_recently_used_entries_are_dropped_beyond_the_limit(tmp_path: Path) -> None:
    cache = OnnxCache(tmp_path / "onnx", max_entries=2)
    cache.put("a", b"model a")
    cache.put("b", b"model b")
    now = 1_700_000_000
    os.utime(cache.directory / "a.onnx", (now, now))
    os.utime(cache.directory / "b.onnx", (now + 1, now + 1))
    assert cache.get("a") == b"model a"  # read: now the most recently used
    cache.put("c", b"model c")
    assert [p.stem for p in cache.entries()] == ["c", "a"]
    assert cache.get("b") is None and cache.get("missing") is None


def test_a_cache_that_cannot_be_written_leaves_the_runner_to_build_its_model(
    tmp_path: Path, tiny_cls_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "onnx"
    blocked.write_text("a file where the directory should be", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="agents.runners.onnx_cache"):
        read, probabilities, _ = _int8(tiny_cls_dir, TaskKind.classification, OnnxCache(blocked))
    assert not read and len(probabilities) >= len(TEXTS) and "could not keep" in caplog.text


def test_a_worker_keeps_its_int8_models_in_its_data_dir_for_the_next_start(tmp_path: Path, tiny_ner_dir: Path, tiny_cls_dir: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        tasks=[
            TaskSettings(name="condition", kind=TaskKind.classification, model_dir=tiny_cls_dir, quantization="int8"),
            TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tiny_ner_dir, quantization="int8"),
        ],
    )
    assert [r.int8 is not None and r.int8.from_cache for r in build_runners(settings)] == [False, False]
    assert len(settings.onnx_cache().entries()) == 2 and settings.onnx_cache().directory.is_relative_to(tmp_path / "data")
    assert [r.int8 is not None and r.int8.from_cache for r in build_runners(settings)] == [True, True]


def test_the_demo_starts_from_an_empty_data_dir_but_for_its_cache(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "demo")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("not the demo's", encoding="utf-8")
    for name in ("broker/notes/0/batch", "clickhouse/data.bin", "worker.log", "cache/onnx/abc.onnx"):
        (settings.data_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (settings.data_dir / name).write_text("x", encoding="utf-8")
    (settings.data_dir / "linked").symlink_to(outside)
    fresh_data_dir(settings)
    assert [p.relative_to(settings.data_dir).as_posix() for p in sorted(settings.data_dir.rglob("*"))] == [
        "cache",
        "cache/onnx",
        "cache/onnx/abc.onnx",
    ]
    assert (outside / "kept.txt").exists()  # a link is removed, not what it points to
    fresh_data_dir(Settings(data_dir=tmp_path / "new"))  # a first run: the directory is made
    assert (tmp_path / "new").is_dir()
