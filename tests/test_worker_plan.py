"""How many worker processes the embedded stack starts, and how many torch threads each gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.kafka.clients import ensure_topics
from streams.runtime import workers
from streams.runtime.broker import TansuBroker
from streams.runtime.workers import WorkerPool, with_partitions_for_workers, worker_plan
from streams.settings import Settings, TopicSettings


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


@pytest.mark.parametrize(
    ("device", "cores", "partitions", "plan"), [("cuda", 16, 4, (4, 4)), ("cpu", 16, 2, (2, 8)), ("cpu", 2, 8, (2, 1))]
)
def test_no_more_workers_than_the_notes_topic_has_partitions(
    device: str, cores: int, partitions: int, plan: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer group gives each partition to one member: a fifth worker on four partitions would idle."""
    monkeypatch.setattr(workers.os, "cpu_count", lambda: cores)
    assert worker_plan(Settings(device=device), partitions) == plan


def test_new_topics_get_a_partition_per_planned_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 16)
    assert with_partitions_for_workers(Settings(device="cuda")).topic_partitions == 8
    assert with_partitions_for_workers(Settings(device="cpu")).topic_partitions == 4
    assert with_partitions_for_workers(Settings(device="cpu", topic_partitions=6)).topic_partitions == 6


def test_the_pool_fits_the_partitions_the_topic_already_has(broker: TansuBroker, topics: TopicSettings, tmp_path: Path) -> None:
    """A data dir made with fewer partitions than this host plans workers for: the pool starts one worker per
    partition and tells each the topic's real partition count."""
    existing = Settings(data_dir=tmp_path, topics=topics, topic_partitions=1)
    ensure_topics(existing, broker.bootstrap)
    planned = with_partitions_for_workers(existing.model_copy(update={"embedded_workers": 2, "tasks": []}))
    assert planned.topic_partitions == 2
    ensure_topics(planned, broker.bootstrap)  # the topics exist: nothing changes on the broker
    pool = WorkerPool(planned, broker.bootstrap, tmp_path)
    assert len(pool) == 1
    assert [w.settings.topic_partitions for w in pool.workers] == [1]
