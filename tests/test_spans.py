"""Span decoding on handcrafted probability arrays: no model, no GPU."""

from __future__ import annotations

import numpy as np
import pytest

from agents.runners.spans import TagScheme, decode_spans

LABELS = ["O", "B-Disease", "I-Disease", "B-Drug", "I-Drug"]
SCHEME = TagScheme(LABELS)


def rows(*tags: tuple[str, float]) -> np.ndarray:
    """One row per word: the named tag gets p, the rest share 1 - p evenly."""
    out = np.zeros((len(tags), len(LABELS)), dtype=np.float32)
    for i, (tag, p) in enumerate(tags):
        out[i, :] = (1 - p) / (len(LABELS) - 1)
        out[i, LABELS.index(tag)] = p
    return out


def offsets(n: int) -> tuple[list[int], list[int]]:
    return [i * 10 for i in range(n)], [i * 10 + 5 for i in range(n)]


def test_b_then_i_is_one_span_with_min_type_probability() -> None:
    starts, ends = offsets(4)
    probs = rows(("O", 0.9999), ("B-Disease", 0.9), ("I-Disease", 0.7), ("O", 0.9999))
    entities, possible = decode_spans(starts, ends, probs, SCHEME)
    assert [(e.label, e.start, e.end) for e in entities] == [("Disease", 10, 25)]
    # confidence = min over words of p(B-Disease) + p(I-Disease)
    expected = min(0.9 + 0.025, 0.7 + 0.075)
    assert entities[0].confidence == pytest.approx(expected, abs=1e-6)
    assert possible == []


def test_i_without_b_starts_a_span_and_type_change_splits() -> None:
    starts, ends = offsets(3)
    probs = rows(("I-Disease", 0.8), ("I-Drug", 0.8), ("B-Drug", 0.8))
    entities, _ = decode_spans(starts, ends, probs, SCHEME)
    assert [(e.label, e.start, e.end) for e in entities] == [("Disease", 0, 5), ("Drug", 10, 15), ("Drug", 20, 25)]


def test_uncertain_o_words_are_possible_entities_with_p_o_as_confidence() -> None:
    starts, ends = offsets(2)
    probs = rows(("O", 0.6), ("O", 0.99999))
    probs[0] = [0.6, 0.05, 0.05, 0.25, 0.05]  # most likely entity type: Drug
    entities, possible = decode_spans(starts, ends, probs, SCHEME)
    assert entities == []
    assert [(p.label, p.start, p.end, round(p.confidence, 3)) for p in possible] == [("Drug", 0, 5, 0.6)]


def test_io_labels_without_prefix_read_as_inside() -> None:
    scheme = TagScheme(["O", "Disease"])
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.99999, 0.00001]], dtype=np.float32)
    entities, _ = decode_spans([0, 6, 12], [5, 11, 15], probs, scheme)
    assert [(e.label, e.start, e.end) for e in entities] == [("Disease", 0, 11)]
    assert entities[0].confidence == pytest.approx(0.8)


def test_empty_input() -> None:
    assert decode_spans([], [], np.zeros((0, len(LABELS)), dtype=np.float32), SCHEME) == ([], [])
