"""A reviewer's submission, checked against the stored note, as a ReviewDecision.

The client sends the final state it wants (each task's document label or spans); the
server works out the changes against the revision the reviewer saw, so the audit trail
never depends on the client's bookkeeping. Every model item gets a change row, ``accept``
included, which is what makes model-reviewer agreement countable per label.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agents.clinical.sections import find_sections
from schemas._base import utc_now
from schemas.extraction import Assertion, Code, DocumentLabel, Entity, ItemState, TaskKind, TaskResult
from schemas.review_decision import Change, ChangeAction, ReviewDecision
from streams.review.store import StoredNote


class DecisionInvalid(Exception):  # noqa: N818 (a refusal, not a bug)
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class SpanIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1, max_length=100)
    start: int = Field(ge=0)
    end: int = Field(ge=1)
    #: the reviewer's assertion status; None keeps the model's (present for an added span)
    assertion: Assertion | None = None
    #: the reviewer's ICD-10-CM code (with or without its dot); None keeps the model's best code, "" removes it
    code: str | None = Field(default=None, max_length=10)


class TaskReview(BaseModel):
    """One task's reviewed result: ``label`` for a classification task, ``entities`` for an NER task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(min_length=1, max_length=64)
    label: str | None = Field(default=None, min_length=1, max_length=100)
    entities: list[SpanIn] | None = Field(default=None, max_length=5000)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lease_id: str = Field(min_length=1, max_length=100)
    base_revision: int = Field(ge=0)
    results: list[TaskReview] = Field(min_length=1, max_length=100)
    comment: str | None = Field(default=None, max_length=4000)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


def _span(entity: Entity | SpanIn) -> dict[str, Any]:
    return {"label": entity.label, "start": entity.start, "end": entity.end}


def _icd10cm(code: str) -> Code | None:
    """The Code of a valid billable ICD-10-CM code, reviewer-chosen (score 1), or None."""
    import simple_icd_10_cm as cm

    code = code.strip().upper()
    if not cm.is_valid_item(code) or not cm.is_leaf(code):
        return None
    dotted = cm.add_dot(code)
    return Code(system="ICD10CM", code=dotted, display=cm.get_description(dotted), score=1.0)


def _reviewed_entity(span: SpanIn, base: Entity | None, text: str, section: str | None) -> Entity:
    """The entity a reviewed span becomes: the reviewer's assertion and code where given, else the model's."""
    assertion = span.assertion or (base.assertion if base else Assertion.present)
    cue = base.assertion_cue if base and assertion == base.assertion else ("reviewer" if span.assertion else None)
    if span.code is None:
        codes = base.codes if base else []
    elif span.code == "":
        codes = []
    else:
        chosen = _icd10cm(span.code)
        assert chosen is not None  # checked in _check_spans
        codes = [chosen, *[c for c in (base.codes if base else []) if c.code != chosen.code][:2]]
    return Entity(
        label=span.label,
        start=span.start,
        end=span.end,
        text=text[span.start : span.end],
        confidence=1.0,
        assertion=assertion,
        assertion_cue=cue,
        section=base.section if base else section,
        state=ItemState.reviewed,
        codes=codes,
    )


def _meaning_changes(task: str, entity: Entity, reviewed: Entity) -> list[Change]:
    out = []
    if reviewed.assertion != entity.assertion:
        before, after = (
            _json({**_span(entity), "assertion": entity.assertion.value}),
            _json({**_span(reviewed), "assertion": reviewed.assertion.value}),
        )
        out.append(Change(task=task, action=ChangeAction.set_assertion, before=before, after=after))
    old_code = entity.codes[0].code if entity.codes else None
    new_code = reviewed.codes[0].code if reviewed.codes else None
    if new_code != old_code:
        score = round(entity.codes[0].score, 6) if entity.codes else None
        before, after = _json({**_span(entity), "code": old_code, "score": score}), _json({**_span(reviewed), "code": new_code})
        out.append(Change(task=task, action=ChangeAction.set_code, before=before, after=after))
    return out


def _check_spans(task: str, spans: list[SpanIn], text: str, allowed: list[str], problems: list[str]) -> None:
    previous_end = -1
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        where = f"{task}: span {span.start}-{span.end}"
        if span.end <= span.start or span.end > len(text):
            problems.append(f"{where} is outside the note (length {len(text)})")
            continue
        if not text[span.start : span.end].strip():
            problems.append(f"{where} covers only whitespace")
        if span.start < previous_end:
            problems.append(f"{where} overlaps the span before it")
        if allowed and span.label not in allowed:
            problems.append(f"{where} has label {span.label!r}; expected one of {allowed}")
        if span.code and _icd10cm(span.code) is None:
            problems.append(f"{where} has code {span.code!r}, which is not a billable ICD-10-CM code")
        previous_end = max(previous_end, span.end)


def build_decision(request: DecisionRequest, note: StoredNote, reviewer_id: str, labels: dict[str, list[str]]) -> ReviewDecision:
    """The ReviewDecision for ``request`` on ``note``; DecisionInvalid lists every problem found."""
    problems: list[str] = []
    if request.base_revision != note.revision:
        problems.append(f"base_revision {request.base_revision} is not the note's newest revision ({note.revision}); reload it")
    submitted = [r.task for r in request.results]
    expected = sorted(r.task for r in note.results)
    if sorted(submitted) != expected:
        problems.append(f"results must hold each of the note's tasks exactly once: {expected}, got {sorted(submitted)}")
    if problems:
        raise DecisionInvalid(problems)

    changes: list[Change] = []
    results: list[TaskResult] = []
    for review in request.results:
        base = note.result(review.task)
        assert base is not None  # the task sets matched above
        allowed = labels.get(review.task, [])
        if base.kind is TaskKind.classification:
            if review.label is None or review.entities is not None:
                problems.append(f"{review.task}: a classification task takes 'label' and no 'entities'")
                continue
            if allowed and review.label not in allowed:
                problems.append(f"{review.task}: label {review.label!r} is not one of {allowed}")
                continue
            top = max(base.labels, key=lambda x: x.probability) if base.labels else None
            before = _json({"label": top.label, "probability": round(top.probability, 6), "state": base.label_state.value}) if top else None
            if top is not None and top.label == review.label:
                changes.append(Change(task=review.task, action=ChangeAction.accept, before=before, after=before))
            else:
                changes.append(
                    Change(task=review.task, action=ChangeAction.set_document_label, before=before, after=_json({"label": review.label}))
                )
            labels_out = [DocumentLabel(label=review.label, probability=1.0)]
            results.append(base.model_copy(update={"labels": labels_out, "entities": [], "label_state": ItemState.reviewed}))
        else:
            if review.entities is None or review.label is not None:
                problems.append(f"{review.task}: an NER task takes 'entities' (possibly empty) and no 'label'")
                continue
            _check_spans(review.task, review.entities, note.text, allowed, problems)
            if problems:
                continue
            wanted = {(s.start, s.end): s for s in review.entities}
            model = {(e.start, e.end): e for e in base.entities}
            sections = find_sections(note.text)
            reviewed = {
                (s.start, s.end): _reviewed_entity(s, model.get((s.start, s.end)), note.text, sections.at(np.array([s.start]))[0])
                for s in review.entities
            }
            for entity in base.entities:
                kept = wanted.get((entity.start, entity.end))
                before = _json({**_span(entity), "confidence": round(entity.confidence, 6), "state": entity.state.value})
                if kept is None:
                    changes.append(Change(task=review.task, action=ChangeAction.reject_span, before=before))
                    continue
                if kept.label == entity.label:
                    changes.append(Change(task=review.task, action=ChangeAction.accept, before=before, after=_json(_span(kept))))
                else:
                    changes.append(Change(task=review.task, action=ChangeAction.relabel_span, before=before, after=_json(_span(kept))))
                changes += _meaning_changes(review.task, entity, reviewed[(entity.start, entity.end)])
            for span in sorted(review.entities, key=lambda s: s.start):
                if (span.start, span.end) not in model:
                    changes.append(Change(task=review.task, action=ChangeAction.add_span, after=_json(_span(span))))
            entities = [reviewed[key] for key in sorted(reviewed)]
            results.append(base.model_copy(update={"labels": [], "entities": entities}))
    if problems:
        raise DecisionInvalid(problems)
    return ReviewDecision(
        decision_id=str(uuid.uuid4()),
        note_id=note.note_id,
        base_revision=note.revision,
        reviewer_id=reviewer_id,
        decided_at=utc_now(),
        changes=changes,
        comment=request.comment,
        results=sorted(results, key=lambda r: r.task),
    )
