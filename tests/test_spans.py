"""Span decoding on handcrafted probability arrays, and the batch decoder equal to the plain word-by-word definition on
random batches: no model, no GPU."""

from __future__ import annotations

import numpy as np
import pytest

from agents.runners.spans import POSSIBLE_ENTITY_CEILING, Span, TagScheme, decode_batch


def decode_spans(starts: list[int], ends: list[int], probs: np.ndarray, scheme: TagScheme) -> tuple[list[Span], list[Span]]:
    """One note through the batch decoder, as Span lists."""
    note = np.zeros(len(starts), dtype=np.int64)
    found = decode_batch(note, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64), probs, scheme)
    types = scheme.types
    return tuple(  # type: ignore[return-value]
        [
            Span(types[k], s, e, c)
            for k, s, e, c in zip(a.label.tolist(), a.start.tolist(), a.end.tolist(), a.confidence.tolist(), strict=True)
        ]
        for a in found
    )


def reference_decode(starts: list[int], ends: list[int], probs: np.ndarray, scheme: TagScheme) -> tuple[list[Span], list[Span]]:
    """The plain word-by-word definition (the code this project ran before the batch version): one note's entity
    spans and possible missed entities from word-level probabilities ``[words, labels]``."""
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


@pytest.mark.parametrize(
    "labels", [["O", "B-Disease", "I-Disease"], ["O", "B-Disease", "I-Disease", "B-Drug", "I-Drug"], ["O", "Disease", "Drug"]]
)
def test_the_batch_decoder_equals_the_plain_definition_on_random_batches(labels: list[str]) -> None:
    scheme = TagScheme(labels)
    rng = np.random.default_rng(len(labels))
    for _ in range(50):
        sizes = rng.integers(0, 30, size=rng.integers(1, 8))  # notes of 0 to 29 words
        sharp = rng.random() < 0.5  # peaked rows: long runs of one tag, many words sure of O
        logits = rng.normal(size=(int(sizes.sum()), len(labels))) * (12 if sharp else 2)
        probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
        if sharp:
            probs[rng.random(len(probs)) < 0.3] = np.eye(len(labels), dtype=np.float32)[0]  # p(O) = 1: not possible entities
        note = np.repeat(np.arange(len(sizes)), sizes)
        starts = np.concatenate([np.arange(n) * 7 for n in sizes]).astype(np.int64) if len(probs) else np.zeros(0, np.int64)
        ends = starts + rng.integers(1, 6, size=len(starts))
        entities, possible = decode_batch(note, starts, ends, probs, scheme)
        cuts = np.r_[0, np.cumsum(sizes)]
        for i in range(len(sizes)):
            a, b = int(cuts[i]), int(cuts[i + 1])
            want_e, want_p = reference_decode(starts[a:b].tolist(), ends[a:b].tolist(), probs[a:b], scheme)
            for got, want in ((entities, want_e), (possible, want_p)):
                mine = got.note == i
                assert [scheme.types[k] for k in got.label[mine]] == [s.label for s in want]
                assert list(zip(got.start[mine].tolist(), got.end[mine].tolist(), strict=True)) == [(s.start, s.end) for s in want]
                assert got.confidence[mine].tolist() == [s.confidence for s in want]  # exactly: same float32 sums, same min
    assert POSSIBLE_ENTITY_CEILING < 1.0
