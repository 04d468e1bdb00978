"""Named-entity recognition: entity spans with character offsets into the original text."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from agents.runners.base import ModelRunner
from agents.runners.columns import TaskColumns
from agents.runners.spans import TagScheme, decode_batch
from agents.runners.windows import Windows
from schemas.extraction import TaskKind


@dataclass(frozen=True)
class Words:
    """The words of a batch of notes as columns, in note then word order: the note, character offsets, and
    ``[words, labels]`` probabilities; note ``i``'s words at ``cuts[i]:cuts[i + 1]``."""

    note: np.ndarray
    start: np.ndarray
    end: np.ndarray
    probs: np.ndarray
    cuts: np.ndarray


def word_arrays(windows: Windows, probs: list[np.ndarray], n_texts: int) -> Words:
    """Every word of the batch with its probabilities, read at its first sub-token. Where windows overlap, the same
    sub-token is seen more than once and its probabilities are averaged. One pass of numpy over every window's tokens."""
    n_labels = probs[0].shape[-1] if probs else 0
    none = np.zeros(0, dtype=np.int64)
    empty = Words(none, none, none, np.zeros((0, n_labels), dtype=np.float32), np.zeros(n_texts + 1, dtype=np.int64))
    if not probs:
        return empty
    real = np.arange(windows.words.shape[1])[None, :] < windows.lengths[:, None]
    word = windows.words[real]  # window by window, token by token: the order of the concatenated probabilities
    offsets = windows.offsets[real]
    text = np.repeat(windows.samples, windows.lengths)
    rows = np.concatenate(probs)
    valid = word >= 0
    word, offsets, text, rows = word[valid], offsets[valid], text[valid], rows[valid]
    if not len(word):
        return empty
    span = int(word.max()) + 1
    keys, inverse = np.unique(text * span + word, return_inverse=True)  # (text, word), ordered
    first = np.full(len(keys), np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, offsets[:, 0])
    last = np.zeros(len(keys), dtype=np.int64)
    np.maximum.at(last, inverse, offsets[:, 1])
    at_first = offsets[:, 0] == first[inverse]  # the first sub-token, in every window that saw it
    counts = np.bincount(inverse[at_first], minlength=len(keys)).astype(np.float64)
    sums = np.stack([np.bincount(inverse[at_first], weights=rows[at_first, j], minlength=len(keys)) for j in range(n_labels)], axis=1)
    note = keys // span
    return Words(note, first, last, (sums / counts[:, None]).astype(np.float32), np.searchsorted(note, np.arange(n_texts + 1)))


def word_probabilities(windows: Windows, probs: list[np.ndarray], n_texts: int) -> list[tuple[list[int], list[int], np.ndarray]]:
    """:func:`word_arrays`, per text: word start offsets, word end offsets, ``[words, labels]`` probabilities."""
    words = word_arrays(windows, probs, n_texts)
    starts, ends = words.start.tolist(), words.end.tolist()
    return [(starts[a:b], ends[a:b], words.probs[a:b]) for a, b in itertools.pairwise(words.cuts.tolist())]


class NerRunner(ModelRunner):
    def columns(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> TaskColumns:
        scheme = TagScheme(self.loaded.labels)
        words = word_arrays(windows, probs, len(texts))
        entities, possible = decode_batch(words.note, words.start, words.end, words.probs, scheme)
        return TaskColumns(
            self.task,
            TaskKind.ner,
            self.loaded.name,
            self.loaded.version,
            scheme.types,
            len(texts),
            entities=entities,
            possible=possible,
        )
