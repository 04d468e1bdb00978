"""The model registry and hot reload: versions, promotion and rollback; and a promotion under load on the embedded
stack (Tansu, a worker subprocess with tiny real models, the sink on chdb): notes keep flowing, every note is in
ClickHouse exactly once, and each row names the version that produced it, the old one before the switch and the new
one after, never mixed within a partition."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agents.model_dir import DEFAULT_BACKBONE, ModelManifest, RoutingCalibration, write_manifest
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import TaskKind
from streams.cli import main
from streams.errors import RegistryError
from streams.kafka.clients import ensure_topics, producer
from streams.learning.registry import ModelRegistry
from streams.runtime.broker import TansuBroker
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerProcess
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.waiting import poll_until

PLAIN = Codecs()


def _version(tiny_ner_dir: Path, where: Path, version: str, threshold: float) -> Path:
    """The tiny NER model as an ehrstream model directory (full weights) of the given version and thresholds."""
    shutil.copytree(tiny_ner_dir, where)
    routing = RoutingCalibration(threshold=threshold, label_thresholds={"Disease": threshold}, target_precision=0.9)
    manifest = ModelManifest(
        task="disease",
        kind=TaskKind.ner,
        name="tiny-ner",
        version=version,
        labels=["O", "B-Disease", "I-Disease"],
        base=DEFAULT_BACKBONE,
        format="full",
        max_length=64,
        stride=16,
        routing=routing,
    )
    write_manifest(where, manifest)
    return where


def test_registry_promotes_rolls_back_and_keeps_every_version(tiny_ner_dir: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry.json")
    v1 = _version(tiny_ner_dir, tmp_path / "v1", "v1", 0.5)
    v2 = _version(tiny_ner_dir, tmp_path / "v2", "v2", 0.6)
    registry.register("disease", v1, scores={"dev_f1": 0.5})
    registry.register("disease", v2, scores={"dev_f1": 0.6})
    with pytest.raises(RegistryError):
        registry.register("disease", v1)  # one entry per version
    with pytest.raises(RegistryError):
        registry.rollback("disease")  # nothing live yet
    registry.promote("disease", "v1")
    registry.promote("disease", "v2")
    assert [(v.version, v.state) for v in registry.versions("disease")] == [("v1", "retired"), ("v2", "live")]
    back = registry.rollback("disease")
    assert back.version == "v1" and [(v.version, v.state) for v in registry.versions("disease")] == [("v1", "live"), ("v2", "rejected")]
    assert registry.resolve(_task(tmp_path)).model_dir == v1.resolve()
    with pytest.raises(RegistryError):
        registry.promote("disease", "v9")


def _task(tmp_path: Path):  # type: ignore[no-untyped-def]
    from agents.config import TaskSettings

    return TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tmp_path / "configured")


@pytest.mark.e2e
@pytest.mark.slow
def test_a_promotion_under_load_switches_versions_between_batches_and_loses_nothing(
    broker: TansuBroker, tiny_settings: Settings, tiny_ner_dir: Path, database: ChdbBackend, tmp_path: Path
) -> None:
    v1 = _version(tiny_ner_dir, tmp_path / "v1", "v1", 0.5)
    v2 = _version(tiny_ner_dir, tmp_path / "v2", "v2", 0.6)
    tasks = [t.model_copy(update={"model_dir": v1}) if t.name == "disease" else t for t in tiny_settings.tasks]
    settings = tiny_settings.model_copy(update={"tasks": tasks, "model_poll_seconds": 0.3, "batch_max_notes": 16})
    config = tmp_path / "ehrstream.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n')
    cli = CliRunner()
    registry = ModelRegistry(settings.registry_file())
    registry.register("disease", v1)
    registry.promote("disease", "v1")
    listed = cli.invoke(main, ["--config", str(config), "models", "register", "--task", "disease", "--model", str(v2)])
    assert listed.exit_code == 0, listed.output  # the CLI registers the candidate (the default config's disease task)

    ensure_topics(settings, broker.bootstrap)
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    worker = WorkerProcess(settings, broker.bootstrap, tmp_path / "worker.log")
    sink.start()
    worker.start()
    db = database.database
    switched = threading.Event()
    sent: list[str] = []

    def publish() -> None:
        """Notes at a steady pace: 150, then on until the workers have loaded v2, then 150 more (so the switch falls in
        the middle of the stream however slow the machine)."""
        p = producer(settings, broker.bootstrap)
        after = 0
        while after < 150:
            note = ClinicalNote(
                note_id=f"hot-{len(sent):04d}",
                patient_id="p",
                note_type="t",
                created_at="2026-11-01T00:00:00Z",
                text=f"Patient {len(sent)} with asthma, gout and chronic kidney disease.",
                source="test",
            )
            p.send(settings.topics.notes, key=note.note_id.encode(), value=PLAIN.of(ClinicalNote).encode(note))
            sent.append(note.note_id)
            if len(sent) % 10 == 0:
                p.flush()
                time.sleep(0.1)
            after += len(sent) > 150 and switched.is_set()
            if len(sent) > 3000:
                break  # the switch never came: the assertions below say so
        p.flush()
        p.close()

    publisher = threading.Thread(target=publish)
    try:
        publisher.start()

        def stored(at_least: int) -> bool:
            assert worker.alive(), (tmp_path / "worker.log").read_text()[-3000:]
            return int(database.query(f"SELECT count() FROM {db}.extractions_final").scalar()) >= at_least

        poll_until(lambda: stored(80), 120, "the first notes in ClickHouse", 0.2)
        promoted = cli.invoke(main, ["--config", str(config), "models", "promote", "--task", "disease", "--version", "v2"])
        assert promoted.exit_code == 0, promoted.output
        poll_until(lambda: "version v2 (" in (tmp_path / "worker.log").read_text(), 120, "the worker to load v2", 0.2)
        switched.set()
        publisher.join(timeout=300)
        n = len(sent)
        poll_until(lambda: stored(n), 120, "every note in ClickHouse", 0.5)
    finally:
        switched.set()
        worker.stop()
        sink.stop()
    listed = cli.invoke(main, ["--config", str(config), "models"])
    assert "disease: live v2" in listed.output and "v1  retired" in listed.output

    rows = database.query(
        f"SELECT note_id, count(), any(models['disease']), any(kafka_partition), any(kafka_offset) "
        f"FROM {db}.extractions WHERE revision = 0 GROUP BY note_id"
    ).rows
    assert len(rows) == n and all(int(r[1]) == 1 for r in rows)  # every note exactly once
    by_version: dict[str, list[tuple[int, int]]] = {}
    for _, _, model, partition, offset in rows:
        by_version.setdefault(str(model), []).append((int(partition), int(offset)))
    assert set(by_version) == {"tiny-ner@v1", "tiny-ner@v2"}, set(by_version)  # notes flowed on both sides of the switch
    for partition in {p for p, _ in by_version["tiny-ner@v1"]}:
        last_old = max(o for p, o in by_version["tiny-ner@v1"] if p == partition)
        first_new = min((o for p, o in by_version["tiny-ner@v2"] if p == partition), default=last_old + 1)
        assert last_old < first_new  # the switch is a point in each partition: no version interleaving
    log = (tmp_path / "worker.log").read_text()
    assert "model version v2 replaces v1" in log


def _serving_v1(tiny_ner_dir: Path, tmp_path: Path) -> tuple[Path, Settings, Any, list[Any], Any]:
    """A worker's pipeline and model watcher serving the tiny NER model as version v1, whose thresholds accept all."""
    from agents.config import TaskSettings
    from streams.runtime.model_watcher import ModelWatcher
    from streams.worker import build_pipeline

    v1 = _version(tiny_ner_dir, tmp_path / "v1", "v1", 0.0)
    task = TaskSettings(name="disease", kind=TaskKind.ner, model_dir=v1, possible_entity_threshold=0.0, clinical=False)
    settings = Settings(data_dir=tmp_path / "data", tasks=[task], device="cpu")
    settings = settings.model_copy(update={"review": settings.review.model_copy(update={"audit_share": 0.0})})
    pipeline, serving = build_pipeline(settings, PLAIN)
    return v1, settings, pipeline, serving, ModelWatcher(settings, pipeline, serving)


def test_a_tightened_threshold_reaches_the_serving_pipeline_at_its_next_batch_and_is_never_lowered(
    tiny_ner_dir: Path, tmp_path: Path
) -> None:
    from agents.types import InRecord

    _, settings, pipeline, serving, watcher = _serving_v1(tiny_ner_dir, tmp_path)
    text = "fever and gout " * 8
    notes = [
        ClinicalNote(note_id=f"n{i}", patient_id="p", note_type="t", created_at="2026-12-01T00:00:00Z", text=text, source="s")
        for i in range(6)
    ]
    records = [InRecord(PLAIN.of(ClinicalNote).encode(n), b"k", "ehr.notes", 0, i) for i, n in enumerate(notes)]

    before = pipeline.process(records)
    assert before.extracted == 6 and before.routed_to_review == 0 and before.flagged_items == 0

    registry = ModelRegistry(settings.registry_file())
    registry.tighten("disease", "v1", 0.999, "audited precision below 0.90")
    assert registry.tighten("disease", "v1", 0.5, "lower").threshold == 0.999  # never lowered
    assert watcher.check() == []  # no model to load: only the thresholds moved
    after = pipeline.process(records)
    assert after.routed_to_review == 6 and after.flagged_items > 0  # every span of the random model is now below 0.999
    assert ModelRegistry(settings.registry_file()).routing(serving[0]).threshold == 0.999


def test_a_promoted_version_that_cannot_load_leaves_the_serving_one_and_its_thresholds_alone(tiny_ner_dir: Path, tmp_path: Path) -> None:
    from agents.types import InRecord

    v1, settings, pipeline, _, watcher = _serving_v1(tiny_ner_dir, tmp_path)
    broken = _version(tiny_ner_dir, tmp_path / "v2", "v2", 0.999)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    registry = ModelRegistry(settings.registry_file())
    registry.register("disease", broken)
    registry.promote("disease", "v2")
    text = "fever and gout " * 8
    note = ClinicalNote(note_id="n", patient_id="p", note_type="t", created_at="2026-12-01T00:00:00Z", text=text, source="s")
    records = [InRecord(PLAIN.of(ClinicalNote).encode(note), b"k", "ehr.notes", 0, 0)]

    assert watcher.check() == []  # v2 failed to load: nothing staged
    registry.tighten("disease", "v2", 0.999, "audited precision below 0.90")
    assert watcher.check() == []
    result = pipeline.process(records)
    assert result.extracted == 1 and result.routed_to_review == 0  # v1 serves with its own 0.0, not v2's 0.999
    assert watcher.serving["disease"].model_dir == v1
