"""Named-entity recognition: entity spans with character offsets into the original text."""

from __future__ import annotations

import numpy as np

from agents.runners.base import ModelRunner
from agents.runners.spans import TagScheme, decode_spans
from agents.runners.windows import Windows
from agents.types import Decision, TaskOutput
from schemas.extraction import Entity, TaskKind, TaskResult
from schemas.review_task import ReasonKind


def word_probabilities(windows: Windows, probs: list[np.ndarray], n_texts: int) -> list[tuple[list[int], list[int], np.ndarray]]:
    """Per text: word start offsets, word end offsets, and ``[words, labels]`` probabilities.

    A word's probabilities are read at its first sub-token. Where windows overlap, the
    same sub-token is seen more than once and its probabilities are averaged. Vectorised
    per text (one pass of numpy over all its windows' tokens).
    """
    n_labels = probs[0].shape[-1] if probs else 0
    by_text: list[list[int]] = [[] for _ in range(n_texts)]
    for w, text_idx in enumerate(windows.sample):
        by_text[text_idx].append(w)
    out: list[tuple[list[int], list[int], np.ndarray]] = []
    for members in by_text:
        if not members:
            out.append(([], [], np.zeros((0, n_labels), dtype=np.float32)))
            continue
        word = np.concatenate([np.array([-1 if x is None else x for x in windows.word_ids[w]], dtype=np.int64) for w in members])
        offsets = np.concatenate([np.asarray(windows.offsets[w], dtype=np.int64).reshape(-1, 2) for w in members])
        rows = np.concatenate([probs[w] for w in members]).astype(np.float64)
        valid = word >= 0
        word, offsets, rows = word[valid], offsets[valid], rows[valid]
        words, inverse = np.unique(word, return_inverse=True)
        first = np.full(len(words), np.iinfo(np.int64).max)
        np.minimum.at(first, inverse, offsets[:, 0])
        last = np.zeros(len(words), dtype=np.int64)
        np.maximum.at(last, inverse, offsets[:, 1])
        at_first = offsets[:, 0] == first[inverse]  # the first sub-token, in every window that saw it
        sums = np.zeros((len(words), n_labels))
        np.add.at(sums, inverse[at_first], rows[at_first])
        counts = np.bincount(inverse[at_first], minlength=len(words))
        out.append((first.tolist(), last.tolist(), (sums / counts[:, None]).astype(np.float32)))
    return out


class NerRunner(ModelRunner):
    def postprocess(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> list[TaskOutput]:
        scheme = TagScheme(self.loaded.labels)
        outputs = []
        for text, (starts, ends, word_probs) in zip(texts, word_probabilities(windows, probs, len(texts)), strict=True):
            spans, possible = decode_spans(starts, ends, word_probs, scheme)
            entities = [
                Entity(label=s.label, start=s.start, end=s.end, text=text[s.start : s.end], confidence=min(1.0, s.confidence))
                for s in spans
            ]
            decisions = [Decision(self.task, ReasonKind.entity, s.label, s.confidence, s.start, s.end) for s in spans]
            decisions += [Decision(self.task, ReasonKind.possible_entity, s.label, s.confidence, s.start, s.end) for s in possible]
            result = TaskResult(
                task=self.task,
                kind=TaskKind.ner,
                model_name=self.loaded.name,
                model_version=self.loaded.version,
                entities=entities,
            )
            outputs.append(TaskOutput(result, decisions))
        return outputs
