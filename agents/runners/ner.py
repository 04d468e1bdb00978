"""Named-entity recognition: entity spans with character offsets into the original text."""

from __future__ import annotations

import numpy as np

from agents.runners.base import Decision, ModelRunner, TaskOutput
from agents.runners.spans import TagScheme, decode_spans
from agents.runners.windows import Windows
from schemas.extraction import Entity, TaskKind, TaskResult
from schemas.review_task import ReasonKind


def word_probabilities(windows: Windows, probs: list[np.ndarray], n_texts: int) -> list[tuple[list[int], list[int], np.ndarray]]:
    """Per text: word start offsets, word end offsets, and ``[words, labels]`` probabilities.

    A word's probabilities are read at its first sub-token. Where windows overlap, the
    same sub-token is seen more than once and its probabilities are averaged.
    """
    # text -> word -> token start -> [probability sum, count]; word -> (start, end)
    sums: list[dict[int, dict[int, list]]] = [{} for _ in range(n_texts)]  # type: ignore[type-arg]
    spans: list[dict[int, list[int]]] = [{} for _ in range(n_texts)]
    for w, text_idx in enumerate(windows.sample):
        for t, word in enumerate(windows.word_ids[w]):
            if word is None:
                continue
            start, end = windows.offsets[w][t]
            tokens = sums[text_idx].setdefault(word, {})
            entry = tokens.setdefault(start, [np.zeros_like(probs[w][t], dtype=np.float64), 0])
            entry[0] += probs[w][t]
            entry[1] += 1
            bounds = spans[text_idx].setdefault(word, [start, end])
            bounds[0] = min(bounds[0], start)
            bounds[1] = max(bounds[1], end)
    out = []
    for text_idx in range(n_texts):
        words = sorted(sums[text_idx])
        starts = [spans[text_idx][w][0] for w in words]
        ends = [spans[text_idx][w][1] for w in words]
        rows = []
        for w in words:
            total, count = sums[text_idx][w][min(sums[text_idx][w])]
            rows.append(total / count)
        n_labels = probs[0].shape[-1] if probs else 0
        out.append((starts, ends, np.asarray(rows, dtype=np.float32).reshape(len(words), n_labels)))
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
