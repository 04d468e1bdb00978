"""Clinical meaning on an NER task's entities, for a whole batch: layout rules, sections, assertion status and codes.

The pipeline calls :meth:`ClinicalAnnotator.annotate` on each NER task's columns after the model; each part is a
stage of its own in the batch's timings (``sections``: headers and the layout rules; ``assertion``; ``coding``), so
the bench reports what each costs per note.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from agents.clinical.assertion import ASSERTIONS, AssertionArrays, AssertionClassifier, section_defaults
from agents.clinical.layout import BatchText, refine
from agents.clinical.sections import find_sections
from agents.runners.columns import EntityContext, TaskColumns
from agents.runners.spans import SpanArrays
from agents.types import BatchResult

PRESENT = len(ASSERTIONS) - 1


def _past_leading_cues(
    texts: list[str], entities: SpanArrays, section: list[str | None], found: AssertionArrays
) -> tuple[SpanArrays, list[str | None], AssertionArrays]:
    """Entities whose span starts with their own cue ("No Known Allergies") start after it ("Allergies"); an entity
    that is nothing but a cue ("No Known") goes. Only the few such entities are touched."""
    lead = (found.cue_start == entities.start) & (found.cue_end > entities.start)
    if not lead.any():
        return entities, section, found
    start = entities.start.copy()
    for k in np.nonzero(lead)[0].tolist():
        text, a = texts[int(entities.note[k])], int(found.cue_end[k])
        while a < entities.end[k] and text[a].isspace():
            a += 1
        start[k] = a
    keep = start < entities.end
    spans = SpanArrays(entities.note[keep], entities.label[keep], start[keep], entities.end[keep], entities.confidence[keep])
    kept = AssertionArrays(found.status[keep], found.cue_start[keep], found.cue_end[keep], found.readings[keep])
    return spans, [s for s, k in zip(section, keep.tolist(), strict=True) if k], kept


class Coder(Protocol):
    """Code candidates for entity texts (``agents.clinical.coding``)."""

    def candidates(self, mentions: list[str]) -> list[list[dict[str, object]]]: ...


class ClinicalAnnotator:
    """Built once per worker (the rules compile once, the coder loads once); stateless across batches."""

    def __init__(self, coder: Coder | None = None, assertions: AssertionClassifier | None = None) -> None:
        self.coder = coder
        self.assertions = assertions or AssertionClassifier()

    def annotate(self, result: BatchResult, texts: list[str], columns: TaskColumns) -> TaskColumns:
        assert columns.entities is not None and columns.possible is not None
        with result.timed("sections"):
            sections = [find_sections(text) for text in texts]
            batch = BatchText.of(texts)
            entities = refine(batch, columns.entities, sections)
            possible = refine(batch, columns.possible, sections)
            section: list[str | None] = [None] * len(entities)
            for i, found in enumerate(sections):
                mine = np.nonzero(entities.note == i)[0]
                if len(mine) and len(found.start):
                    for k, name in zip(mine.tolist(), found.at(entities.start[mine]), strict=True):
                        section[k] = name
        with result.timed("assertion"):
            found_status = self.assertions.classify(texts, entities.note, entities.start, entities.end, section_defaults(section))
            entities, section, found_status = _past_leading_cues(texts, entities, section, found_status)
            cues = [
                texts[note][a:b] if a >= 0 else (f"section: {section[k]}" if status != PRESENT and section[k] else None)
                for k, (note, a, b, status) in enumerate(
                    zip(
                        entities.note.tolist(),
                        found_status.cue_start.tolist(),
                        found_status.cue_end.tolist(),
                        found_status.status.tolist(),
                        strict=True,
                    )
                )
            ]
        codes: list[list[dict[str, object]]] = [[] for _ in range(len(entities))]
        if self.coder is not None and len(entities):
            with result.timed("coding"):
                mentions = [
                    texts[n][a:b] for n, a, b in zip(entities.note.tolist(), entities.start.tolist(), entities.end.tolist(), strict=True)
                ]
                codes = self.coder.candidates(mentions)
        confidence = 1.0 / np.maximum(found_status.readings, 1).astype(np.float64)
        code_score = np.array([c[0]["score"] if c else -1.0 for c in codes], dtype=np.float64)
        context = EntityContext([a.value for a in found_status.statuses()], cues, section, codes, confidence, code_score)
        return dataclasses.replace(columns, entities=entities, possible=possible, context=context)
