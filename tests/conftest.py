"""Real components as session fixtures: the Tansu broker, chdb, tiny real transformers models.

Each test gets its own topics, consumer groups and ClickHouse database (uuid-named).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

from agents.config import TaskSettings, TopicSettings
from agents.model_dir import DEFAULT_BACKBONE, resolve_base
from schemas.extraction import TaskKind
from streams.runtime.broker import TansuBroker
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.waiting import poll_until

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


def _tiny_config(labels: list[str]) -> BertConfig:
    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


def _save_tiny(path: Path, model: torch.nn.Module) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(path)  # type: ignore[operator]
    AutoTokenizer.from_pretrained(resolve_base(DEFAULT_BACKBONE)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_ner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised BERT token classifier, saved as a plain HF model directory."""
    torch.manual_seed(0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-ner"), BertForTokenClassification(_tiny_config(["O", "B-Disease", "I-Disease"])))


@pytest.fixture(scope="session")
def tiny_cls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-cls"), BertForSequenceClassification(_tiny_config(["cardio", "neuro", "onco"])))


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random backbone directory (for LoRA training tests)."""
    from transformers import BertModel

    torch.manual_seed(0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-base"), BertModel(_tiny_config(["x", "y"])))


@pytest.fixture(scope="session")
def broker() -> Iterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest.fixture(scope="session")
def chdb_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbBackend]:
    """The one chdb of this test process (chdb allows one data directory per process)."""
    backend = ChdbBackend(tmp_path_factory.mktemp("chdb") / "data", database="unused")
    yield backend
    backend.close()


@pytest.fixture
def database(chdb_backend: ChdbBackend) -> Iterator[ChdbBackend]:
    """chdb with a fresh uuid-named database for this test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    previous = chdb_backend.database
    chdb_backend.database = name
    yield chdb_backend
    chdb_backend.command(f"DROP DATABASE IF EXISTS {name}")
    chdb_backend.database = previous


@pytest.fixture
def topics() -> TopicSettings:
    suffix = uuid.uuid4().hex[:8]
    return TopicSettings(
        notes=f"notes-{suffix}",
        extractions=f"extractions-{suffix}",
        review=f"review-{suffix}",
        review_decisions=f"decisions-{suffix}",
        deadletter=f"deadletter-{suffix}",
    )


@pytest.fixture
def tiny_settings(tmp_path: Path, topics: TopicSettings, tiny_ner_dir: Path, tiny_cls_dir: Path, database: ChdbBackend) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        data_dir=tmp_path / "data",
        topics=topics,
        topic_partitions=2,
        clickhouse_database=database.database,
        worker_group=f"worker-{suffix}",
        sink_group=f"sink-{suffix}",
        tasks=[
            TaskSettings(name="condition", kind=TaskKind.classification, model_dir=tiny_cls_dir, threshold=0.5),
            TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tiny_ner_dir, threshold=0.5),
        ],
        rebalance_timeout_s=4,
        session_timeout_s=6,
        sink_flush_seconds=0.3,
        batch_max_seconds=0.3,
    )


def wait_for_final(database: ChdbBackend, n: int, worker: Any, log: Path, timeout_s: float = 120.0) -> int:
    """Poll ``extractions_final`` until it holds ``n`` notes (or the time is up) while the worker subprocess lives;
    returns the count, for the caller to assert."""
    stored = 0

    def done() -> bool:
        nonlocal stored
        assert worker.alive(), log.read_text()[-3000:]
        stored = int(database.query(f"SELECT count() FROM {database.database}.extractions_final").scalar())
        return stored >= n

    with contextlib.suppress(TimeoutError):
        poll_until(done, timeout_s, f"{n} notes in extractions_final", interval_s=0.5)
    return stored


@contextlib.contextmanager
def running_stream(settings: Settings, bootstrap: str, database: ChdbBackend, log: Path) -> Iterator[Any]:
    """The topics, a sink thread on ``database`` and one worker subprocess (log in ``log``) for the body of a
    ``with``; both stopped afterwards. Yields the worker, for ``wait_for_final`` and liveness checks."""
    from streams.kafka.clients import ensure_topics
    from streams.runtime.sink_thread import SinkThread
    from streams.runtime.workers import WorkerProcess

    ensure_topics(settings, bootstrap)
    sink = SinkThread(settings, bootstrap, backend=database)
    worker = WorkerProcess(settings, bootstrap, log)
    sink.start()
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        sink.stop()
