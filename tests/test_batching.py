"""The extraction agent's micro-batches on real Tansu: they close when the notes stop coming, never above the maximum."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streams.kafka.clients import ensure_topics
from streams.runtime.broker import TansuBroker
from streams.runtime.processes import free_port
from streams.runtime.workers import WorkerProcess
from streams.settings import Settings
from tests.test_metrics import Samples, scrape, total
from tests.test_reliability import _publish_notes

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _notes_out(port: int, n: int, worker: WorkerProcess, log: Path, timeout_s: float) -> Samples:
    """The worker's metrics once ``n`` notes are out of it; raises if that takes longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.alive(), log.read_text()[-2000:]
        try:
            samples = scrape(port)
        except OSError:
            samples = {}
        if total(samples, "ehrstream_worker_notes_out_total") >= n:
            return samples
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} notes out of the worker after {timeout_s} s")


def test_a_batch_below_the_maximum_closes_when_the_notes_stop_not_after_the_time_bound(
    broker: TansuBroker, tiny_settings: Settings, tmp_path: Path
) -> None:
    # a time bound of two minutes: only the linger can close the last batch of 10 notes in batches of at most 4
    settings = tiny_settings.model_copy(update={"batch_max_notes": 4, "batch_max_seconds": 120.0, "batch_linger_seconds": 0.05})
    ensure_topics(settings, broker.bootstrap)
    port = free_port()
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, broker.bootstrap, log, metrics_port=port)
    worker.start()
    try:
        _publish_notes(settings, broker.bootstrap, 1, "first")
        before = _notes_out(port, 1, worker, log, timeout_s=90)  # the worker has joined and consumes
        assert total(before, "ehrstream_worker_batch_notes_count") == 1

        _publish_notes(settings, broker.bootstrap, 10, "then")
        after = _notes_out(port, 11, worker, log, timeout_s=30)  # the last batch of 2 or 3: closed by the linger
    finally:
        worker.stop()
    assert total(after, "ehrstream_worker_notes_out_total") == 11
    batches = total(after, "ehrstream_worker_batch_notes_count") - 1
    assert batches >= 3  # 10 notes, at most 4 a batch
    assert total(after, "ehrstream_worker_batch_notes_bucket", le="4.0") == batches + 1  # none above the maximum
    assert total(after, "ehrstream_worker_batch_notes_sum") == 11
