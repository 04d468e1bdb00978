"""The extraction pipeline and routing, with tiny real models and no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.config import TaskSettings, TopicSettings
from agents.model_dir import load_model
from agents.pipeline import ExtractionPipeline
from agents.routing import RoutingPolicy
from agents.runners import build_runner
from agents.types import Decision, InRecord
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.extraction import Extraction, ExtractionStatus, ItemState, TaskKind
from schemas.review_task import ReasonKind, ReviewTask

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry


def test_routing_uses_task_thresholds_and_label_overrides(tmp_path: Path) -> None:
    policy = RoutingPolicy(
        [
            TaskSettings(
                name="condition", kind=TaskKind.classification, model_dir=tmp_path, threshold=0.8, label_thresholds={"neoplasms": 0.95}
            ),
            TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tmp_path, threshold=0.6, possible_entity_threshold=0.5),
        ]
    )
    confident = [
        Decision("condition", ReasonKind.document_label, "cardio", 0.85),
        Decision("disease", ReasonKind.entity, "Disease", 0.7, 3, 9),
    ]
    assert policy.route(confident) == (ExtractionStatus.auto_accepted, [])
    status, reasons = policy.route(
        [
            Decision("condition", ReasonKind.document_label, "neoplasms", 0.9),
            Decision("disease", ReasonKind.possible_entity, "Disease", 0.55, 10, 14),  # clears the 0.5 recall guard
            Decision("disease", ReasonKind.possible_entity, "Disease", 0.45, 20, 24),
            Decision("disease", ReasonKind.entity, "Disease", 0.55, 30, 34),
        ]
    )
    assert status is ExtractionStatus.pending_review
    assert [(r.task, r.kind, r.label, r.threshold, r.start) for r in reasons] == [
        ("condition", ReasonKind.document_label, "neoplasms", 0.95, None),
        ("disease", ReasonKind.possible_entity, "Disease", 0.5, 20),
        ("disease", ReasonKind.entity, "Disease", 0.6, 30),
    ]


def _pipeline(tiny_cls_dir: Path, tiny_ner_dir: Path, threshold: float) -> tuple[ExtractionPipeline, TopicSettings]:
    tasks = [
        TaskSettings(name="condition", kind=TaskKind.classification, model_dir=tiny_cls_dir, threshold=threshold),
        TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tiny_ner_dir, threshold=threshold),
    ]
    runners = [build_runner(t.name, load_model(t.model_dir, t.kind), device="cpu") for t in tasks]
    topics = TopicSettings()
    return ExtractionPipeline(runners, RoutingPolicy(tasks), topics, max_note_bytes=5000, codecs=PLAIN), topics


def _record(value: bytes, offset: int) -> InRecord:
    return InRecord(value, b"k", "ehr.notes", 0, offset)


def test_every_record_becomes_an_extraction_or_a_dead_letter(tiny_cls_dir: Path, tiny_ner_dir: Path) -> None:
    pipeline, topics = _pipeline(tiny_cls_dir, tiny_ner_dir, threshold=0.0)
    note = ClinicalNote(
        note_id="n1", patient_id="p1", note_type="t", created_at="2026-11-01T00:00:00Z", text="Diabetes and asthma.", source="s"
    )
    records = [
        _record(PLAIN.of(ClinicalNote).encode(note), 0),
        _record(note.model_copy(update={"note_id": "n2"}).model_dump_json().encode(), 1),
        _record(b"\x01\x00 junk", 2),
        _record(note.model_copy(update={"note_id": "n3", "text": "x" * 6000}).model_dump_json().encode(), 3),
    ]
    result = pipeline.process(records)
    assert (result.extracted, result.dead_lettered, result.auto_accepted, result.routed_to_review) == (2, 2, 2, 0)
    by_topic: dict[str, list[bytes]] = {}
    for r in result.records:
        by_topic.setdefault(r.topic, []).append(r.value)
    extractions = [PLAIN.of(Extraction).decode(v) for v in by_topic[topics.extractions]]
    assert [e.note_id for e in extractions] == ["n1", "n2"]
    assert {r.task for r in extractions[0].results} == {"condition", "disease"}
    letters = [PLAIN.of(DeadLetter).decode(v) for v in by_topic[topics.deadletter]]
    assert [(d.error_kind, d.source_offset) for d in letters] == [(ErrorKind.undecodable, 2), (ErrorKind.oversized, 3)]
    assert letters[0].raw == b"\x01\x00 junk"
    assert topics.review not in by_topic


def test_low_confidence_notes_go_to_review_and_are_still_extracted(tiny_cls_dir: Path, tiny_ner_dir: Path) -> None:
    pipeline, topics = _pipeline(tiny_cls_dir, tiny_ner_dir, threshold=1.0)  # nothing clears 1.0
    note = ClinicalNote(note_id="n1", patient_id="p1", note_type="t", created_at="2026-11-01T00:00:00Z", text="Diabetes.", source="s")
    result = pipeline.process([_record(note.model_dump_json().encode(), 0)])
    assert (result.extracted, result.routed_to_review) == (1, 1)
    (extraction,) = [PLAIN.of(Extraction).decode(r.value) for r in result.records if r.topic == topics.extractions]
    (task,) = [PLAIN.of(ReviewTask).decode(r.value) for r in result.records if r.topic == topics.review]
    assert extraction.status is ExtractionStatus.pending_review
    assert task.note_id == "n1" and any(r.kind is ReasonKind.document_label and r.threshold == 1.0 for r in task.reasons)


def test_a_failing_model_dead_letters_only_the_failing_note(tiny_cls_dir: Path, tiny_ner_dir: Path) -> None:
    pipeline, topics = _pipeline(tiny_cls_dir, tiny_ner_dir, threshold=0.0)
    real = pipeline.runners[0]

    class Flaky:
        """The real runner, except that its results blow up on a batch holding the poisoned note."""

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def columns(self, texts: list[str], *args: object) -> object:
            if any("POISON" in t for t in texts):
                raise RuntimeError("model blew up")
            return real.columns(texts, *args)  # type: ignore[arg-type]

    pipeline.runners[0] = Flaky()  # type: ignore[assignment]
    good = ClinicalNote(note_id="ok", patient_id="p", note_type="t", created_at="2026-11-01T00:00:00Z", text="fine", source="s")
    bad = good.model_copy(update={"note_id": "bad", "text": "POISON"})
    result = pipeline.process([_record(good.model_dump_json().encode(), 0), _record(bad.model_dump_json().encode(), 1)])
    assert (result.extracted, result.dead_lettered) == (1, 1)
    (letter,) = [PLAIN.of(DeadLetter).decode(r.value) for r in result.records if r.topic == topics.deadletter]
    assert letter.error_kind is ErrorKind.processing_error and letter.source_offset == 1


def test_records_written_from_columns_equal_the_pydantic_path(tiny_cls_dir: Path, tiny_ner_dir: Path) -> None:
    """The batch path (columns, vectorised routing, dicts to Avro) gives the very records the per-note path gives:
    TaskResult objects from the runners, ``RoutingPolicy.route`` over their decisions, ``Extraction.of_note``."""
    import random

    rng = random.Random(7)
    words = ["fever", "Crohn's", "disease", "naïve", "中文", "😀", "pain", "", "of", "the", "left", "lobe", "-", "(HIES)"]
    texts = ["x", "   a   ", *(" ".join(rng.choice(words) for _ in range(rng.randint(1, 400))) for _ in range(12))]
    notes = [
        ClinicalNote(note_id=f"n{i}", patient_id="p", note_type="t", created_at="2026-11-01T00:00:00Z", text=t, source="s")
        for i, t in enumerate(texts)
    ]
    pipeline, topics = _pipeline(tiny_cls_dir, tiny_ner_dir, threshold=0.6)
    confidences = sorted(e.confidence for out in pipeline.runners[1](texts) for e in out.result.entities)
    # the median entity confidence as the threshold: some entities are accepted, some flagged
    pipeline, topics = _pipeline(tiny_cls_dir, tiny_ner_dir, threshold=confidences[len(confidences) // 2])
    result = pipeline.process([_record(n.model_dump_json().encode(), i) for i, n in enumerate(notes)])
    assert result.extracted == len(notes) and result.dead_lettered == 0
    got = [PLAIN.of(Extraction).decode(r.value) for r in result.records if r.topic == topics.extractions]
    reviews = {t.note_id: t for t in (PLAIN.of(ReviewTask).decode(r.value) for r in result.records if r.topic == topics.review)}
    per_task = [runner(texts) for runner in pipeline.runners]
    for i, note in enumerate(notes):
        outputs = [task[i] for task in per_task]
        status, reasons = pipeline.policy.route([d for out in outputs for d in out.decisions])
        results = pipeline.policy.with_states([out.result for out in outputs], reasons)
        want = Extraction.of_note(note, status, results, got[i].processed_at)
        assert PLAIN.of(Extraction).encode(got[i]) == PLAIN.of(Extraction).encode(want)
        assert (note.note_id in reviews) == bool(reasons)
        if reasons:
            review = reviews[note.note_id]
            assert review.priority == pytest.approx(pipeline.policy.priority(reasons), abs=1e-4)
            expected = ReviewTask(
                note_id=note.note_id, revision=0, note_type="t", created_at=review.created_at, priority=review.priority, reasons=reasons
            )
            assert PLAIN.of(ReviewTask).encode(review) == PLAIN.of(ReviewTask).encode(expected)
    states = [e.state for x in got for r in x.results for e in r.entities]
    assert ItemState.pending in states and ItemState.accepted in states  # both item states exercised
    assert any(reviews.values()) and any(e.entities for x in got for e in x.results)  # both paths exercised
