"""One task's results for a batch of notes as columns: the hot path's form of :class:`~agents.types.TaskOutput`.

Runners fill these with numpy over the whole batch; the pipeline routes every decision of the batch at once
(:meth:`agents.routing.RoutingPolicy.below`) and writes the notes' Avro records straight from them, all at once
(:meth:`TaskColumns.result_rows`). :meth:`TaskColumns.result_records` gives the same results as plain dicts (the
simple version: the tests check both give fastavro's bytes) and :meth:`TaskColumns.outputs` as pydantic objects, for
the offline callers (evaluation, calibration, the review tools).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.runners.spans import SpanArrays
from agents.types import Decision, TaskOutput
from schemas.avro_columns import Parts, Ragged, RecordWriter, array_blocks, empty_arrays
from schemas.extraction import DocumentLabel, Entity, TaskKind, TaskResult
from schemas.review_task import ReasonKind

#: the assertion statuses under which an entity's code counts (it feeds the patient's problems): a doubtful code of an
#: absent, possible, hypothetical or family mention is not worth a reviewer's time, so it is no decision
CODED_ASSERTIONS = ("present", "historical")


@dataclass(frozen=True)
class DecisionColumns:
    """Decisions of one kind for a batch: note, label (index into ``labels``), confidence, character span (-1: none),
    and the item each decision is about: the entity's index in :attr:`TaskColumns.entities` for entity, code and
    assertion decisions (one entity is one item, however many of its decisions are flagged), the note's index for a
    document label, -1 for a possible missed entity (each is an item of its own, not yet an entity)."""

    kind: ReasonKind
    labels: list[str]
    note: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    start: np.ndarray
    end: np.ndarray
    item: np.ndarray

    @classmethod
    def of_spans(cls, kind: ReasonKind, labels: list[str], spans: SpanArrays, item: np.ndarray) -> DecisionColumns:
        return cls(kind, labels, spans.note, spans.label, spans.confidence, spans.start, spans.end, item)


@dataclass(frozen=True)
class EntityContext:
    """Clinical meaning per entity, aligned with :attr:`TaskColumns.entities` (``agents.clinical``): assertion status
    (an ``Assertion`` value), the cue that decided it, the section, the code candidates (Avro ``Code`` records, best
    first)."""

    assertion: list[str]
    cue: list[str | None]
    section: list[str | None]
    codes: list[list[dict[str, Any]]]
    #: 1 / the number of statuses whose cues govern the entity (1.0: one reading)
    assertion_confidence: np.ndarray
    #: the best code's score (-1: no code)
    code_score: np.ndarray


@dataclass(frozen=True)
class TaskColumns:
    task: str
    kind: TaskKind
    model_name: str
    model_version: str
    #: entity types (NER) or label names (classification)
    labels: list[str]
    n_notes: int
    #: classification: ``[notes, labels]`` probabilities
    probs: np.ndarray | None = None
    #: NER: entity spans and the possible missed entities ("no entity" decisions), in note then text order
    entities: SpanArrays | None = None
    possible: SpanArrays | None = None
    #: NER: clinical meaning of each entity, when the task has it
    context: EntityContext | None = None

    def decisions(self) -> list[DecisionColumns]:
        """Every decision routing compares with a threshold, by kind."""
        if self.kind is TaskKind.classification:
            assert self.probs is not None
            top = self.probs.argmax(axis=1)
            confidence = np.minimum(1.0, self.probs[np.arange(self.n_notes), top].astype(np.float64))
            none = np.full(self.n_notes, -1, dtype=np.int64)
            notes = np.arange(self.n_notes)
            return [DecisionColumns(ReasonKind.document_label, self.labels, notes, top, confidence, none, none, notes)]
        assert self.entities is not None and self.possible is not None
        every = np.arange(len(self.entities))
        out = [
            DecisionColumns.of_spans(ReasonKind.entity, self.labels, self.entities, every),
            DecisionColumns.of_spans(ReasonKind.possible_entity, self.labels, self.possible, np.full(len(self.possible), -1, np.int64)),
        ]
        if self.context is not None:
            spans = self.entities
            counts = np.isin(np.asarray(self.context.assertion, dtype=object), CODED_ASSERTIONS) if len(spans) else np.zeros(0, dtype=bool)
            coded = np.nonzero((self.context.code_score >= 0) & counts)[0]
            out.append(
                DecisionColumns(
                    ReasonKind.code,
                    self.labels,
                    spans.note[coded],
                    spans.label[coded],
                    self.context.code_score[coded],
                    spans.start[coded],
                    spans.end[coded],
                    coded,
                )
            )
            out.append(
                DecisionColumns(
                    ReasonKind.assertion,
                    self.labels,
                    spans.note,
                    spans.label,
                    self.context.assertion_confidence,
                    spans.start,
                    spans.end,
                    every,
                )
            )
        return out

    def _entity_cuts(self) -> np.ndarray:
        assert self.entities is not None
        return np.searchsorted(self.entities.note, np.arange(self.n_notes + 1))

    def result_records(self, texts: list[str], flagged: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Per note, its TaskResult as the Avro record (the dict ``TaskResult.model_dump()`` gives). ``flagged``: per
        item (each note's document label, or each entity), whether routing flagged it (state ``pending``; else
        ``accepted``); None: none is."""
        head = {"task": self.task, "kind": self.kind.value, "model_name": self.model_name, "model_version": self.model_version}
        n_items = self.n_notes if self.kind is TaskKind.classification else len(self.entities or ())
        states = np.where(flagged, "pending", "accepted").tolist() if flagged is not None else ["accepted"] * n_items
        if self.kind is TaskKind.classification:
            assert self.probs is not None
            order = np.argsort(-self.probs, axis=1, kind="stable")
            ranked = np.minimum(1.0, np.take_along_axis(self.probs, order, axis=1).astype(np.float64)).tolist()
            labels = self.labels
            return [
                {
                    **head,
                    "label_state": state,
                    "labels": [{"label": labels[j], "probability": p} for j, p in zip(row, probs, strict=True)],
                    "entities": [],
                }
                for row, probs, state in zip(order.tolist(), ranked, states, strict=True)
            ]
        assert self.entities is not None
        spans = self.entities
        label, start, end = spans.label.tolist(), spans.start.tolist(), spans.end.tolist()
        confidence = np.minimum(1.0, spans.confidence).tolist()
        types = self.labels
        n = len(spans)
        if self.context is not None:
            status, cue, section, codes = self.context.assertion, self.context.cue, self.context.section, self.context.codes
        else:
            status, cue, section, codes = ["present"] * n, [None] * n, [None] * n, [[] for _ in range(n)]
        out = []
        for i, (a, b) in enumerate(itertools.pairwise(self._entity_cuts().tolist())):
            text = texts[i]
            entities = [
                {
                    "label": types[label[k]],
                    "start": start[k],
                    "end": end[k],
                    "text": text[start[k] : end[k]],
                    "confidence": confidence[k],
                    "assertion": status[k],
                    "assertion_cue": cue[k],
                    "section": section[k],
                    "state": states[k],
                    "codes": codes[k],
                }
                for k in range(a, b)
            ]
            out.append({**head, "label_state": "accepted", "labels": [], "entities": entities})
        return out

    def result_rows(self, texts: list[str], writer: RecordWriter, flagged: np.ndarray | None = None) -> Ragged:
        """Per note, its TaskResult written as Avro by ``writer`` (the ``TaskResult`` writer of the Extraction schema)
        straight from the columns: the bytes fastavro writes for :meth:`result_records` (the tests check both)."""
        n = self.n_notes
        n_items = n if self.kind is TaskKind.classification else len(self.entities or ())
        states = np.where(flagged, "pending", "accepted") if flagged is not None else np.full(n_items, "accepted")
        none = empty_arrays(n)
        if self.kind is TaskKind.classification:
            assert self.probs is not None
            order = np.argsort(-self.probs, axis=1, kind="stable")
            ranked = np.minimum(1.0, np.take_along_axis(self.probs, order, axis=1).astype(np.float64))
            names = np.asarray(self.labels, dtype=object)[order].ravel()
            rows = writer.item("labels").rows({"label": names, "probability": ranked.ravel()})
            labels, entities, label_state = array_blocks(rows, np.repeat(np.arange(n), order.shape[1]), n), none, states
        else:
            assert self.entities is not None
            labels, entities, label_state = none, self._entity_rows(texts, writer.item("entities"), states), np.full(n, "accepted")
        head = {"task": [self.task] * n, "kind": [self.kind.value] * n, "model_name": [self.model_name] * n}
        return writer.rows(
            {**head, "model_version": [self.model_version] * n, "label_state": label_state, "labels": labels, "entities": entities}
        )

    def _entity_rows(self, texts: list[str], writer: RecordWriter, states: np.ndarray) -> Parts:
        """Per note, its array of Entity records."""
        assert self.entities is not None
        spans, n = self.entities, len(self.entities)
        status: Sequence[str]
        if self.context is not None:
            status, cue, section, codes = self.context.assertion, self.context.cue, self.context.section, self.context.codes
            code_rows = writer.item("codes").rows(
                {field: [c[field] for row in codes for c in row] for field in ("system", "code", "display", "score")}
            )
            coded = array_blocks(code_rows, np.repeat(np.arange(n), [len(row) for row in codes]), n)
        else:
            status, cue, section, coded = ["present"] * n, [None] * n, [None] * n, empty_arrays(n)
        note, start, end = spans.note.tolist(), spans.start.tolist(), spans.end.tolist()
        rows = writer.rows(
            {
                "label": np.asarray(self.labels, dtype=object)[spans.label],
                "start": spans.start,
                "end": spans.end,
                "text": [texts[i][a:b] for i, a, b in zip(note, start, end, strict=True)],
                "confidence": np.minimum(1.0, spans.confidence),
                "assertion": status,
                "assertion_cue": cue,
                "section": section,
                "state": states,
                "codes": coded,
            }
        )
        return array_blocks(rows, spans.note, self.n_notes)

    def outputs(self, texts: list[str], flagged: np.ndarray | None = None) -> list[TaskOutput]:
        """The same results as pydantic objects with their decisions, per note (offline callers)."""
        decisions: list[list[Decision]] = [[] for _ in range(self.n_notes)]
        for group in self.decisions():
            for i, j, c, s, e in zip(
                group.note.tolist(), group.label.tolist(), group.confidence.tolist(), group.start.tolist(), group.end.tolist(), strict=True
            ):
                decisions[i].append(Decision(self.task, group.kind, group.labels[j], c, None if s < 0 else s, None if e < 0 else e))
        outputs = []
        for record, decided in zip(self.result_records(texts, flagged), decisions, strict=True):
            result = TaskResult(
                task=record["task"],
                kind=TaskKind(record["kind"]),
                model_name=record["model_name"],
                model_version=record["model_version"],
                label_state=record["label_state"],
                labels=[DocumentLabel(**d) for d in record["labels"]],
                entities=[Entity.model_validate(e) for e in record["entities"]],
            )
            outputs.append(TaskOutput(result, decided))
        return outputs
