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


def decode_spans(starts: list[int], ends: list[int], probs: np.ndarray, scheme: TagScheme) -> tuple[list[Span], list[Span]]:
    """Entity spans and possible missed entities from word-level probabilities ``[words, labels]``.

    ``starts``/``ends`` are each word's character offsets. Returns ``(entities, possible)``.
    """
    if probs.shape[0] == 0:
        return [], []
    types = scheme.types
    type_probs = scheme.type_probabilities(probs)
    best = probs.argmax(axis=1)
    outside = scheme.outside
    entities: list[Span] = []
    possible: list[Span] = []
    current: tuple[str, int, int, float] | None = None  # (type, start, end, min confidence)

    for w in range(probs.shape[0]):
        prefix, typ = scheme.split(scheme.labels[int(best[w])])
        if prefix == "O":
            if current is not None:
                entities.append(Span(*current))
                current = None
            if types and outside is not None and probs[w, outside] < POSSIBLE_ENTITY_CEILING:
                candidate = types[int(type_probs[w].argmax())]
                possible.append(Span(candidate, starts[w], ends[w], float(probs[w, outside])))
            continue
        conf = float(type_probs[w, types.index(typ)])
        if prefix == "B" or current is None or current[0] != typ:
            if current is not None:
                entities.append(Span(*current))
            current = (typ, starts[w], ends[w], conf)
        else:
            current = (typ, current[1], ends[w], min(current[3], conf))
    if current is not None:
        entities.append(Span(*current))
    return entities, possible
