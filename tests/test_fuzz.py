"""Bad input never crashes and never vanishes: property-based tests (hypothesis) on the notes topic.

Every record thrown at the worker ends as exactly one Extraction or one DeadLetter with a reason:
random bytes, truncated Avro, records of another schema, JSON with wrong types, empty and
whitespace-only text, invalid UTF-8, oversized records, 100,000-character notes and valid notes
with arbitrary Unicode text. First against the pipeline itself (many examples, fast), then against
a running worker subprocess on the real broker (the worker must survive every batch).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition

from agents.config import TaskSettings, TopicSettings
from agents.model_dir import load_model
from agents.pipeline import ExtractionPipeline
from agents.routing import RoutingPolicy
from agents.runners import build_runner
from agents.types import InRecord
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.dead_letter import DeadLetter
from schemas.extraction import Extraction, TaskKind
from schemas.review_task import ReviewTask
from streams.kafka.clients import ensure_topics, producer
from streams.runtime.broker import TansuBroker
from streams.runtime.workers import WorkerProcess
from streams.settings import Settings, write_child_config

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry

MAX_NOTE_BYTES = 300_000
EXTRACTION, DEAD = "extraction", "dead"


@dataclass(frozen=True)
class Thrown:
    """One record for the notes topic and what it must become (``extraction``, ``dead`` or either)."""

    category: str
    value: bytes
    expect: frozenset[str]
    note_id: str | None = None  # set for records that carry a valid note

    def __repr__(self) -> str:  # falsifying examples print this: the bytes only when short
        shown = repr(self.value) if len(self.value) <= 200 else f"<{len(self.value)} bytes: {self.value[:60]!r}...>"
        return f"Thrown({self.category}, expect={sorted(self.expect)}, value={shown})"


NOTE_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=400).filter(lambda t: bool(t.strip()))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


def _note(text: str) -> ClinicalNote:
    return ClinicalNote(
        note_id=f"fz-{uuid.uuid4().hex[:12]}",
        patient_id="MRN-FUZZ-0001",
        note_type="progress_note",
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        text=text,
        source="fuzz",
    )


@st.composite
def thrown(draw: st.DrawFn) -> Thrown:
    category = draw(
        st.sampled_from(
            [
                "valid_avro",
                "valid_json",
                "long_note",
                "random_bytes",
                "truncated_avro",
                "other_schema",
                "wrong_types",
                "blank_text",
                "invalid_utf8",
                "oversized",
            ]
        )
    )
    codec = PLAIN.of(ClinicalNote)
    if category in ("valid_avro", "valid_json"):
        note = _note(draw(NOTE_TEXT))
        value = codec.encode(note) if category == "valid_avro" else note.model_dump_json().encode()
        return Thrown(category, value, frozenset({EXTRACTION}), note.note_id)
    if category == "long_note":
        unit = draw(NOTE_TEXT) + " Patient denies chest pain. "
        note = _note((unit * (100_000 // len(unit) + 1))[:100_000])
        fits = len(codec.encode(note)) <= MAX_NOTE_BYTES  # multi-byte text may exceed the byte limit: then oversized
        return Thrown(category, codec.encode(note), frozenset({EXTRACTION if fits else DEAD}), note.note_id)
    if category == "random_bytes":
        return Thrown(category, draw(st.binary(max_size=300)), frozenset({DEAD}))
    if category == "truncated_avro":
        encoded = codec.encode(_note(draw(NOTE_TEXT)))
        return Thrown(category, encoded[: draw(st.integers(0, len(encoded) - 1))], frozenset({DEAD}))
    if category == "other_schema":
        from tests.test_sink import extraction

        other = draw(st.sampled_from(["extraction", "review_task"]))
        if other == "extraction":
            value = PLAIN.of(Extraction).encode(extraction("other"))
        else:
            value = PLAIN.of(ReviewTask).encode(
                ReviewTask(note_id="other", revision=0, note_type="t", created_at=datetime.now(UTC), reasons=[])
            )
        return Thrown(category, value, frozenset({DEAD}))
    if category == "wrong_types":
        doc: dict[str, Any] = json.loads(_note("Has asthma.").model_dump_json())
        field = draw(st.sampled_from(sorted(doc)))
        doc[field] = draw(JSON_VALUES.filter(lambda v: not isinstance(v, str)))
        # some substitutions are still valid (a number for created_at, null for an optional field): either outcome
        return Thrown(category, json.dumps(doc).encode(), frozenset({EXTRACTION, DEAD}), doc["note_id"] if field != "note_id" else None)
    if category == "blank_text":
        blank = draw(st.text(st.sampled_from([" ", "\t", "\n", "\r", "\u00a0", "\u2003", "\u3000"]), max_size=30))
        note = _note("x").model_copy(update={"text": blank})
        value = codec.encode(note) if draw(st.booleans()) else note.model_dump_json().encode()
        return Thrown(category, value, frozenset({DEAD}))
    if category == "invalid_utf8":
        text = _note("Has asthma.").model_dump_json().encode()
        at = draw(st.integers(0, len(text)))
        return Thrown(
            category,
            text[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])) + text[at:],
            frozenset({DEAD}),
        )
    # oversized: a valid note beyond the byte limit
    note = _note("Chest pain. " * (MAX_NOTE_BYTES // 12 + 10))
    return Thrown(category, codec.encode(note), frozenset({DEAD}))


def _check_extraction(value: bytes, by_note: dict[str, Thrown]) -> str:
    extraction = PLAIN.of(Extraction).decode(value)
    assert extraction.note_id in by_note
    for result in extraction.results:
        for entity in result.entities:  # offsets are character offsets into the note text, whatever the script
            assert 0 <= entity.start < entity.end <= len(extraction.text)
            assert extraction.text[entity.start : entity.end] == entity.text
    return extraction.note_id


def _check_letter(value: bytes) -> DeadLetter:
    letter = PLAIN.of(DeadLetter).decode(value)
    assert letter.message.strip() and letter.error_kind is not None
    return letter


@pytest.fixture(scope="module")
def fuzz_pipeline(tiny_cls_dir: Path, tiny_ner_dir: Path) -> tuple[ExtractionPipeline, TopicSettings]:
    tasks = [
        TaskSettings(name="condition", kind=TaskKind.classification, model_dir=tiny_cls_dir, threshold=0.5),
        TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tiny_ner_dir, threshold=0.0),  # every span accepted
    ]
    runners = [build_runner(t.name, load_model(t.model_dir, t.kind), device="cpu") for t in tasks]
    topics = TopicSettings()
    return ExtractionPipeline(runners, RoutingPolicy(tasks), topics, max_note_bytes=MAX_NOTE_BYTES, codecs=PLAIN), topics


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
)
@given(batch=st.lists(thrown(), min_size=1, max_size=8))
def test_every_record_ends_as_one_extraction_or_one_dead_letter(
    fuzz_pipeline: tuple[ExtractionPipeline, TopicSettings], batch: list[Thrown]
) -> None:
    pipeline, topics = fuzz_pipeline
    result = pipeline.process([InRecord(t.value, f"k{i}".encode(), topics.notes, 0, i) for i, t in enumerate(batch)])
    by_note = {t.note_id: t for t in batch if t.note_id}
    outcome: dict[int, str] = {}
    offsets_by_note = {t.note_id: i for i, t in enumerate(batch) if t.note_id}
    for record in result.records:
        if record.topic == topics.extractions:
            outcome[offsets_by_note[_check_extraction(record.value, by_note)]] = EXTRACTION
        elif record.topic == topics.deadletter:
            letter = _check_letter(record.value)
            assert letter.source_offset not in outcome, "a record became two outputs"
            outcome[letter.source_offset] = DEAD
    assert sorted(outcome) == list(range(len(batch))), "a record vanished"
    for i, t in enumerate(batch):
        assert outcome[i] in t.expect, (t.category, outcome[i])
    assert result.extracted + result.dead_lettered == len(batch)


# -- against a running worker on the real broker ------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_worker(
    broker: TansuBroker, tiny_cls_dir: Path, tiny_ner_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, WorkerProcess, Path]]:
    suffix = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("fuzz-worker")
    live = Settings(
        data_dir=tmp / "data",
        topics=TopicSettings(
            notes=f"fz-notes-{suffix}",
            extractions=f"fz-extractions-{suffix}",
            review=f"fz-review-{suffix}",
            review_decisions=f"fz-decisions-{suffix}",
            deadletter=f"fz-deadletter-{suffix}",
        ),
        topic_partitions=1,
        worker_group=f"fz-worker-{suffix}",
        sink_group=f"fz-sink-{suffix}",
        tasks=[
            TaskSettings(name="condition", kind=TaskKind.classification, model_dir=tiny_cls_dir, threshold=0.5),
            TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tiny_ner_dir, threshold=0.0),
        ],
        max_note_bytes=MAX_NOTE_BYTES,
        rebalance_timeout_s=4,
        session_timeout_s=6,
        batch_max_seconds=0.2,
    )
    ensure_topics(live, broker.bootstrap)
    config = write_child_config(live, tmp / "ehrstream.toml")
    config.write_text(f"max_note_bytes = {MAX_NOTE_BYTES}\n" + config.read_text())
    log = tmp / "worker.log"
    worker = WorkerProcess(live, broker.bootstrap, log)
    worker.start()
    yield live, worker, log
    worker.stop()


def _outputs(bootstrap: str, topics: TopicSettings, start: dict[str, int]) -> tuple[list[bytes], list[bytes], dict[str, int]]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=500, max_partition_fetch_bytes=4 << 20
    )
    parts = [TopicPartition(topics.extractions, 0), TopicPartition(topics.deadletter, 0)]
    consumer.assign(parts)
    for tp in parts:
        consumer.seek(tp, start.get(tp.topic, 0))
    extractions, letters = [], []
    end = dict(start)
    for message in consumer:
        (extractions if message.topic == topics.extractions else letters).append(message.value)
        end[message.topic] = message.offset + 1
    consumer.close()
    return extractions, letters, end


LIVE_POSITIONS: dict[str, int] = {}


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
)
@given(batch=st.lists(thrown(), min_size=5, max_size=25))
@pytest.mark.slow
def test_a_running_worker_survives_any_batch_and_accounts_for_every_record(
    broker: TansuBroker, live_worker: tuple[Settings, WorkerProcess, Path], batch: list[Thrown]
) -> None:
    live, worker, log = live_worker
    p = producer(live, broker.bootstrap, max_request_size=4 << 20)
    keys = [t.note_id.encode() if t.note_id else f"bad-{uuid.uuid4().hex[:12]}".encode() for t in batch]
    for key, t in zip(keys, batch, strict=True):
        p.send(live.topics.notes, key=key, value=t.value)
    p.flush()
    p.close()

    by_note = {t.note_id: t for t in batch if t.note_id}
    by_key = dict(zip(keys, batch, strict=True))
    outcome: dict[bytes, str] = {}
    deadline = time.monotonic() + 120
    while len(outcome) < len(batch) and time.monotonic() < deadline:
        assert worker.alive(), log.read_text()[-3000:]
        extractions, letters, positions = _outputs(broker.bootstrap, live.topics, LIVE_POSITIONS)
        for value in extractions:
            note_id = PLAIN.of(Extraction).decode(value).note_id
            if note_id in by_note:
                _check_extraction(value, by_note)
                outcome[note_id.encode()] = EXTRACTION
        for value in letters:
            letter = _check_letter(value)
            if letter.key in by_key:
                assert outcome.get(letter.key) != EXTRACTION, "a record became both an extraction and a dead letter"
                outcome[letter.key] = DEAD
        if len(outcome) < len(batch):
            time.sleep(0.3)
    LIVE_POSITIONS.update(positions)
    missing = [by_key[k].category for k in keys if k not in outcome]
    assert not missing, f"records with no outcome: {missing}"
    for key in keys:
        assert outcome[key] in by_key[key].expect, (by_key[key].category, outcome[key])
    assert worker.alive()
    text = log.read_text()
    assert "MRN-FUZZ-0001" not in text and "Patient denies chest pain" not in text
