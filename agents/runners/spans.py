"""From per-word tag probabilities to entity spans with character offsets.

Tags follow BIO (``B-Disease``, ``I-Disease``, ``O``); a label without a ``B-``/``I-``
prefix is read as ``I-``. A span starts at a ``B-X`` word, or at an ``I-X`` word that
does not continue an ``X`` span, and runs over the following ``I-X`` words.

Span confidence (documented contract): the minimum, over the span's words, of the
probability the model gives the word's entity type, ``p(B-X) + p(I-X)``, read at
the word's first sub-token. The minimum is deliberately conservative: one doubtful
word makes the span doubtful, which is what routing to review wants.

Words tagged ``O`` with ``p(O)`` below :data:`POSSIBLE_ENTITY_CEILING` are reported as
possible missed entities, with ``p(O)`` as the confidence of the "no entity" decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: O-words at least this sure of O are not reported (thresholds above it are not supported)
POSSIBLE_ENTITY_CEILING = 0.999


@dataclass(frozen=True)
class Span:
    label: str
    start: int
    end: int
    confidence: float


@dataclass(frozen=True)
class TagScheme:
    """Index arithmetic over a BIO label list."""

    labels: list[str]

    @property
    def types(self) -> list[str]:
        return sorted({self.split(label)[1] for label in self.labels if label != "O"})

    @staticmethod
    def split(label: str) -> tuple[str, str]:
        if label == "O":
            return "O", ""
        if label[:2] in ("B-", "I-"):
            return label[0], label[2:]
        return "I", label

    def type_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """[words, types]: p(B-X) + p(I-X) for each entity type X."""
        types = self.types
        out = np.zeros((probs.shape[0], len(types)), dtype=np.float32)
        for j, label in enumerate(self.labels):
            if label != "O":
                out[:, types.index(self.split(label)[1])] += probs[:, j]
        return out

    @property
    def outside(self) -> int | None:
        return self.labels.index("O") if "O" in self.labels else None


@dataclass(frozen=True)
class SpanArrays:
    """Spans of a batch of notes as columns, in note then text order: the note each belongs to, its entity type (an
    index into :attr:`TagScheme.types`), character offsets and confidence."""

    note: np.ndarray  # int64
    label: np.ndarray  # int64, into TagScheme.types
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    confidence: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.note.shape[0])

    @classmethod
    def none(cls) -> SpanArrays:
        ints = np.zeros(0, dtype=np.int64)
        return cls(ints, ints, ints, ints, np.zeros(0, dtype=np.float64))


def decode_batch(
    note: np.ndarray, starts: np.ndarray, ends: np.ndarray, probs: np.ndarray, scheme: TagScheme
) -> tuple[SpanArrays, SpanArrays]:
    """Entity spans and possible missed entities of a batch, from word-level probabilities ``[words, labels]`` (words
    in note then text order; ``note``, ``starts``, ``ends``: each word's note and character offsets), with numpy over
    the whole batch: the BIO reading of the module's docstring, span by span, without a loop over words.

    Returns ``(entities, possible)``."""
    types = scheme.types
    empty = SpanArrays.none()
    if probs.shape[0] == 0:
        return empty, empty
    prefixes = [scheme.split(label) for label in scheme.labels]
    prefix_of = np.array([{"O": 0, "B": 1, "I": 2}[p] for p, _ in prefixes], dtype=np.int64)
    type_of = np.array([types.index(t) if p != "O" else -1 for p, t in prefixes], dtype=np.int64)
    type_probs = scheme.type_probabilities(probs)
    best = probs.argmax(axis=1)
    prefix, typ = prefix_of[best], type_of[best]
    entity = prefix != 0
    # a word continues the previous word's span when it is an I of the same type, in the same note, after an entity word
    continues = np.zeros(len(best), dtype=bool)
    continues[1:] = (prefix[1:] == 2) & entity[:-1] & (typ[1:] == typ[:-1]) & (note[1:] == note[:-1])
    words = np.nonzero(entity)[0]
    if len(words):
        opens = ~continues[words]
        first = np.nonzero(opens)[0]  # positions in ``words`` where a span begins
        last = np.r_[first[1:], len(words)] - 1
        word_conf = type_probs[words, typ[words]].astype(np.float64)
        entities = SpanArrays(
            note[words[first]],
            typ[words[first]],
            starts[words[first]],
            ends[words[last]],
            np.minimum.reduceat(word_conf, first),
        )
    else:
        entities = empty
    outside = scheme.outside
    if not types or outside is None:
        return entities, empty
    doubt = np.nonzero(~entity & (probs[:, outside] < POSSIBLE_ENTITY_CEILING))[0]
    possible = SpanArrays(
        note[doubt],
        type_probs[doubt].argmax(axis=1).astype(np.int64),
        starts[doubt],
        ends[doubt],
        probs[doubt, outside].astype(np.float64),
    )
    return entities, possible
