"""Named-entity recognition: entity spans with character offsets into the original text."""

from __future__ import annotations

import itertools

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
    over the whole batch: one pass of numpy over every window's tokens.
    """
    n_labels = probs[0].shape[-1] if probs else 0
    empty: tuple[list[int], list[int], np.ndarray] = ([], [], np.zeros((0, n_labels), dtype=np.float32))
    if not probs:
        return [empty for _ in range(n_texts)]
    real = np.arange(windows.words.shape[1])[None, :] < windows.lengths[:, None]
    word = windows.words[real]  # window by window, token by token: the order of the concatenated probabilities
    offsets = windows.offsets[real]
    text = np.repeat(windows.samples, windows.lengths)
    rows = np.concatenate(probs)
    valid = word >= 0
    word, offsets, text, rows = word[valid], offsets[valid], text[valid], rows[valid]
    if not len(word):
        return [empty for _ in range(n_texts)]
    key = text * (int(word.max()) + 1) + word  # (text, word), ordered
    keys, inverse = np.unique(key, return_inverse=True)
    first = np.full(len(keys), np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, offsets[:, 0])
    last = np.zeros(len(keys), dtype=np.int64)
    np.maximum.at(last, inverse, offsets[:, 1])
    at_first = offsets[:, 0] == first[inverse]  # the first sub-token, in every window that saw it
    counts = np.bincount(inverse[at_first], minlength=len(keys)).astype(np.float64)
    sums = np.stack([np.bincount(inverse[at_first], weights=rows[at_first, j], minlength=len(keys)) for j in range(n_labels)], axis=1)
    mean = (sums / counts[:, None]).astype(np.float32)
    key_text = keys // (int(word.max()) + 1)
    cuts = np.searchsorted(key_text, np.arange(n_texts + 1))
    firsts, lasts = first.tolist(), last.tolist()
    return [(firsts[a:b], lasts[a:b], mean[a:b]) for a, b in itertools.pairwise(cuts.tolist())]


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
