"""The bench's raw rate is the models' steady rate: costs paid once per batch shape (on CUDA, an attention plan per new
batch and length) are not in it, though the stream phases pay them as they meet new shapes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from streams.ops import bench
from streams.settings import Settings

FIRST_SIGHT_SECONDS = 0.05
PER_NOTE_SECONDS = 0.0001


@dataclass
class ShapeCostRunner:
    """Stands in for a runner whose forward pays once for every window length it has not seen."""

    task: str
    runs_in: str = "float32"
    model: None = None  # no torch model (as an int8 runner's): nothing to share with another task
    device: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(type="cpu"))
    seen: set[int] = field(default_factory=set)

    def preprocess(self, texts: list[str]) -> np.ndarray:
        return np.array([len(t) for t in texts])

    def window_logits(self, windows: np.ndarray) -> list[np.ndarray]:
        new = set(windows.tolist()) - self.seen
        self.seen |= new
        time.sleep(FIRST_SIGHT_SECONDS * len(new) + PER_NOTE_SECONDS * len(windows))
        return [np.zeros(2, dtype=np.float32) for _ in windows]


def test_the_raw_rate_leaves_out_costs_paid_once_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.worker.build_runners", lambda *a, **k: [ShapeCostRunner("a"), ShapeCostRunner("b")])
    # 40 lengths, ten notes each: 2 s of first sights per runner against 0.04 s of steady work
    texts = ["x" * (1 + i // 10) for i in range(400)]
    rate, by_task, precision = bench.raw_throughput(Settings(), texts)
    steady = 1 / (2 * PER_NOTE_SECONDS)  # notes/s over both tasks without first sights: 5,000
    # the first sights of the lengths a warm-up of the first batch alone would not meet bring it to about 120 notes/s;
    # the bound leaves the steady work 20 times its time for a slow machine's sleeps
    assert rate > steady / 20
    assert set(by_task) == {"a", "b"} and precision == {"a": "float32", "b": "float32"}
