"""Item-level routing and audits: the pipeline with tiny real models routes each item on its own and draws audits by
note id; on chdb, the ``items``, ``review_load`` and ``auto_precision`` views read what the sink writes and what
reviewers decide (the decision built by the review app's own code)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agents.config import TaskSettings, TopicSettings
from agents.model_dir import load_model
from agents.pipeline import ExtractionPipeline
from agents.routing import RoutingPolicy
from agents.runners import build_runner
from agents.types import InRecord
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import Entity, Extraction, ExtractionStatus, ItemState, TaskKind, TaskResult
from schemas.review_task import ReasonKind, ReviewTask
from streams.review.audit import judged
from streams.review.decisions import DecisionRequest, SpanIn, TaskReview, build_decision
from streams.review.store import ReviewStore
from streams.sink.backend import ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row, review_decision_row, review_task_row

PLAIN = Codecs()
WORDS = ["fever", "asthma", "gout", "of", "the", "left", "lobe", "pain", "chronic", "disease"]


def _pipeline(tiny_cls_dir: Path, tiny_ner_dir: Path, threshold: float, audit_share: float) -> ExtractionPipeline:
    tasks = [
        TaskSettings(name="condition", kind=TaskKind.classification, model_dir=tiny_cls_dir, threshold=threshold),
        TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tiny_ner_dir, threshold=threshold, possible_entity_threshold=0.3),
    ]
    runners = [build_runner(t.name, load_model(t.model_dir, t.kind), device="cpu") for t in tasks]
    return ExtractionPipeline(runners, RoutingPolicy(tasks, audit_share), TopicSettings(), max_note_bytes=5000, codecs=PLAIN)


def _records(n: int) -> list[InRecord]:
    out = []
    for i in range(n):
        text = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(5 + i % 17))
        note = ClinicalNote(note_id=f"note-{i}", patient_id="p", note_type="t", created_at="2026-11-01T00:00:00Z", text=text, source="s")
        out.append(InRecord(PLAIN.of(ClinicalNote).encode(note), note.note_id.encode(), "ehr.notes", 0, i))
    return out


def test_items_are_routed_one_by_one_audits_are_drawn_by_note_id_and_the_views_count_them(
    tiny_cls_dir: Path, tiny_ner_dir: Path, database: ChdbBackend
) -> None:
    records = _records(240)
    probe = _pipeline(tiny_cls_dir, tiny_ner_dir, 0.5, 0.0)
    texts = [PLAIN.decode_note(r.value, 5000).text for r in records]
    confidences = sorted(e.confidence for out in probe.runners[1](texts) for e in out.result.entities)
    pipeline = _pipeline(tiny_cls_dir, tiny_ner_dir, confidences[len(confidences) // 2], audit_share=0.25)
    result = pipeline.process(records)
    topics = pipeline.topics
    extractions = [PLAIN.of(Extraction).decode(r.value) for r in result.records if r.topic == topics.extractions]
    tasks = [PLAIN.of(ReviewTask).decode(r.value) for r in result.records if r.topic == topics.review]
    assert len(extractions) == 240

    # audits: about a quarter of the notes with accepted items, whatever their routing, and the same notes on a replay
    audited = {t.note_id for t in tasks if t.audit}
    eligible = {x.note_id for x in extractions if any(e.state is ItemState.accepted for r in x.results for e in r.entities)
                or any(r.label_state is ItemState.accepted for r in x.results if r.kind is TaskKind.classification)}  # fmt: skip
    assert audited <= eligible and 0.12 * len(eligible) <= len(audited) <= 0.4 * len(eligible) and result.audited == len(audited)
    replay = pipeline.process(records)
    assert {
        t.note_id for t in (PLAIN.of(ReviewTask).decode(r.value) for r in replay.records if r.topic == topics.review) if t.audit
    } == audited
    by_note = {t.note_id: t for t in tasks}
    for x in extractions:
        flagged = x.status is ExtractionStatus.pending_review
        assert (x.note_id in by_note) == (flagged or x.note_id in audited)
        if x.note_id in by_note:
            assert bool(by_note[x.note_id].reasons) == flagged  # an audit of a note with nothing flagged lists no reason

    # item states: an entity is pending exactly when a reason is about it; the rest are usable at once
    pending_items = 0
    for x in extractions:
        reasons = by_note[x.note_id].reasons if x.note_id in by_note else []
        about = {(r.task, r.start, r.end) for r in reasons if r.kind in (ReasonKind.entity, ReasonKind.code, ReasonKind.assertion)}
        for r in x.results:
            for e in r.entities:
                assert (e.state is ItemState.pending) == ((r.task, e.start, e.end) in about)
                pending_items += e.state is ItemState.pending
            if r.kind is TaskKind.classification:
                doubtful = any(q.kind is ReasonKind.document_label and q.task == r.task for q in reasons)
                assert (r.label_state is ItemState.pending) == doubtful
                pending_items += doubtful
        pending_items += sum(q.kind is ReasonKind.possible_entity for q in reasons)
    assert result.flagged_items == pending_items > 0
    states = {e.state for x in extractions for r in x.results for e in r.entities}
    assert states == {ItemState.pending, ItemState.accepted}

    # what the sink writes, as analysts read it
    migrate(database)
    database.insert_json(
        "extractions", TABLE_COLUMNS["extractions"], json_each_row([extraction_row(x, 0, i) for i, x in enumerate(extractions)])
    )
    database.insert_json("review_tasks", TABLE_COLUMNS["review_tasks"], json_each_row([review_task_row(t) for t in tasks]))
    db = database.database
    counts = dict(database.query(f"SELECT state, count() FROM {db}.items GROUP BY state").rows)
    entity_and_label_pending = pending_items - sum(q.kind is ReasonKind.possible_entity for t in tasks for q in t.reasons)
    assert counts["pending"] == entity_and_label_pending
    assert sum(counts.values()) == sum(len(r.entities) for x in extractions for r in x.results) + 240  # + one label per note
    ((notes, notes_flagged, items, audits),) = database.query(
        f"SELECT notes, notes_flagged, flagged_items, audited FROM {db}.review_load"
    ).rows
    assert (notes, notes_flagged, items, audits) == (240, result.routed_to_review, result.flagged_items, result.audited)


TEXT = "Asthma, gout, COPD, fever, anemia, obesity, angina, sepsis, edema, stroke."


def _note(note_id: str, status: ExtractionStatus) -> Extraction:
    words = [w.strip(" ,.") for w in TEXT.split(",")]
    entities = [
        Entity(label="Disease", start=TEXT.index(w), end=TEXT.index(w) + len(w), text=w, confidence=0.97, state=ItemState.accepted)
        for w in words
    ]
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    result = TaskResult(task="disease", kind=TaskKind.ner, model_name="disease-lora", model_version="v7", entities=entities)
    return Extraction(
        note_id=note_id,
        patient_id="p",
        note_type="t",
        source="s",
        created_at=at,
        text=TEXT,
        status=status,
        results=[result],
        processed_at=at,
    )


def test_audited_precision_of_auto_accepted_items_with_a_wilson_interval(database: ChdbBackend) -> None:
    """Two audited notes (20 accepted spans, the reviewer deletes 3 and relabels none) give precision 17/20 with its
    Wilson interval; a non-audit review that deletes accepted spans does not count (nobody was asked to check them)."""
    migrate(database)
    notes = [
        _note("a1", ExtractionStatus.auto_accepted),
        _note("a2", ExtractionStatus.auto_accepted),
        _note("r1", ExtractionStatus.pending_review),
    ]
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    tasks = [
        ReviewTask(note_id="a1", revision=0, note_type="t", created_at=at, audit=True, reasons=[]),
        ReviewTask(note_id="a2", revision=0, note_type="t", created_at=at, audit=True, reasons=[]),
        ReviewTask(note_id="r1", revision=0, note_type="t", created_at=at, priority=0.4, reasons=[]),
    ]
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row([extraction_row(x, 0, i) for i, x in enumerate(notes)]))
    database.insert_json("review_tasks", TABLE_COLUMNS["review_tasks"], json_each_row([review_task_row(t) for t in tasks]))
    store = ReviewStore(database, {"disease": TaskKind.ner})
    drop = {"a1": 2, "a2": 1, "r1": 5}
    decisions = []
    for note_id, dropped in drop.items():
        stored = store.note(note_id)
        assert stored is not None and stored.audit == (note_id != "r1")
        kept = [SpanIn(label="Disease", start=e.start, end=e.end) for e in stored.results[0].entities[dropped:]]
        request = DecisionRequest(lease_id="l", base_revision=0, results=[TaskReview(task="disease", entities=kept)])
        decision = build_decision(request, stored, "alice", {"disease": ["Disease"]})
        assert {e.state for e in decision.results[0].entities} == {ItemState.reviewed}
        decisions.append(review_decision_row(decision, 0, len(decisions)))
    database.insert_json("review_decisions", TABLE_COLUMNS["review_decisions"], json_each_row(decisions))

    rows = store.health()["auto_precision"]
    ((task, _, model, items, correct, precision, lower, upper),) = [tuple(r.values()) for r in rows if r["label"] == ""]
    assert (task, model, items, correct, precision) == ("disease", "disease-lora@v7", 20, 17, 0.85)
    z, n, p = 1.959964, 20, 17 / 20
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (lower, upper) == (round((centre - half) / (1 + z * z / n), 4), round((centre + half) / (1 + z * z / n), 4))
    assert [r["label"] for r in rows] == ["", "Disease"]
    verdicts = {r["label"]: r["verdict"] for r in judged(rows, target=0.9, min_items=10)}
    assert verdicts == {"": "low", "Disease": "low"}  # lower end about 0.64: the target 0.9 is not shown to hold
    assert {r["verdict"] for r in judged(rows, target=0.9, min_items=30)} == {"too_few"}
    assert {r["verdict"] for r in judged(rows, target=0.6, min_items=10)} == {"ok"}


def test_live_estimate_learns_precision_from_every_reviewed_accepted_item(database: ChdbBackend) -> None:
    """The estimate from every review, not only audits: the same three notes (30 accepted spans at confidence 0.97;
    the two audited clean notes kept 17 of their 20, the flagged note with priority 0.4 kept 5 of its 10). With the
    note's priority in the fit, both groups are learned and the average over the 30 accepted spans is about 22 / 30."""
    from streams.review.estimate import calibrated_precision

    test_audited_precision_of_auto_accepted_items_with_a_wilson_interval(database)
    live = calibrated_precision(database, "disease")
    assert (live["accepted_items"], live["reviewed_items"]) == (30, 30)
    assert abs(live["precision"] - 22 / 30) < 0.02
    assert live["lower"] < 22 / 30 < live["upper"] and live["upper"] - live["lower"] > 0.1  # three notes: wide


def test_live_estimate_corrects_for_a_queue_that_serves_the_most_doubtful_notes_first() -> None:
    """Synthetic stream where an accepted span is wrong more often in a note with more doubt elsewhere (as on the
    BC5CDR replay): reviewing the 200 highest-priority notes of 2,000 plus 40 random audits, the reviewed accepted
    spans are right far less often than all accepted spans are; the estimate, which conditions on the priority,
    recovers the precision of all of them."""
    from streams.review.estimate import estimate_precision

    rng = np.random.default_rng(7)
    notes, per_note = 2000, 3
    priority_of_note = np.where(rng.random(notes) < 0.4, 0.0, rng.exponential(0.5, notes))
    note = np.repeat(np.arange(notes), per_note)
    priority, confidence = priority_of_note[note], 1 - rng.beta(1, 12, notes * per_note)
    truth_p = 1 / (1 + np.exp(1.0 - 0.8 * np.log(confidence / (1 - confidence)) + 1.5 * np.log1p(priority)))
    correct = rng.random(truth_p.size) < truth_p
    reviewed = np.zeros(notes, dtype=bool)
    reviewed[np.argsort(-priority_of_note)[:200]] = True
    reviewed[rng.choice(notes, 40, replace=False)] = True
    seen = reviewed[note]
    judged = {
        "confidence": confidence[seen],
        "correct": correct[seen],
        "note": np.unique(note[seen], return_inverse=True)[1],
        "priority": priority[seen],
    }
    truth = float(correct.mean())
    assert truth - float(correct[seen].mean()) > 0.1  # the premise: what reviewers see is biased low
    estimate, lower, upper = estimate_precision(judged, confidence, priority)
    assert abs(estimate - truth) < 0.05 and lower < truth < upper
