"""Clinical-note layout applied to entity spans: what a span may and may not be, whatever the model tagged.

Rules (each tested in ``tests/test_clinical_layout.py``):

- A span covers whole words: one that starts or ends inside a word ("-time employment" of "full-time employment")
  grows to the word's edges.
- A span never crosses a line break or a list bullet (at a line's start, or a bullet character within a line): it is
  cut into one span per piece, each trimmed.
- A span ends before a terminology tag: "stress (finding)" is "stress"; a span that is only a tag ("disorder") goes.
- A span in a section header or field label ("# Allergies", "HPI:") goes: headers are layout, not findings.
- A span that touches a person's name goes (names are PHI and never conditions): names written the way notes and
  de-identified corpora write them (numbered names such as ``Corrin41``, a title and a capitalised name, the capitalised
  words before "is a 45 year-old", de-identification placeholders, a "Name:" field).
- A span with no letter left, or only function words ("no", "of the"), goes.

All of it is numpy over the batch's spans on one joined string, except cutting the few spans that cross a line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from agents.clinical.sections import Sections
from agents.clinical.terms import SEMANTIC_TAG
from agents.runners.spans import SpanArrays

_SEPARATOR = "\n\n"
_NAMES = re.compile(
    "|".join(
        (
            r"\b[A-Z][a-z]+\d+\b",  # numbered names (Synthea, some de-identified corpora)
            r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?[ \t]+[A-Z][\w'-]+(?:[ \t]+[A-Z][\w'-]+)?",
            r"^[ \t]*(?:[A-Z][\w'-]+[ \t]+){0,2}[A-Z][\w'-]+(?=\s+is\s+an?\s+\d+[\s-]*(?:year|yr|y/?o|month|week|day))",
            r"\[\*\*[^\]\n]*\*\*\]",  # MIMIC-style placeholders
            r"\*\*(?:NAME|PATIENT|DOCTOR|NAMES?)\[[^\]\n]*\]",
            r"(?<=^(?i:patient name):)[^\n]*|(?<=^(?i:name):)[^\n]*",
        )
    ),
    re.MULTILINE,
)
_FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "as",
        "at",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "in",
        "is",
        "it",
        "no",
        "non",
        "not",
        "of",
        "on",
        "or",
        "she",
        "the",
        "their",
        "they",
        "to",
        "was",
        "were",
        "with",
    ]
)
#: where a span must end: a line break, or a bullet character within a line ("• asthma • COPD")
_BREAK = re.compile("[\n\u2022\u25aa\u25e6\u2023]")
_PIECE = re.compile("[^\n\u2022\u25aa\u25e6\u2023]+")
_EDGE = " \t\r\n-*\u2022,;:.[]/"


def _intervals(pattern: re.Pattern[str], text: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(m.start(), m.end()) for m in pattern.finditer(text) if m.end() > m.start()]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    arr = np.array(pairs, dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def _overlaps(start: np.ndarray, end: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether each span overlaps any of the sorted, disjoint intervals ``[lo, hi)``."""
    if not len(lo):
        return np.zeros(len(start), dtype=bool)
    idx = np.searchsorted(lo, end, side="left") - 1
    return (idx >= 0) & (hi[np.maximum(idx, 0)] > start)


def _word_chars(text: str) -> np.ndarray:
    """Per character: part of a word (letters, digits, any non-ASCII letter, and a hyphen between two of them)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lower = codes | 0x20
    word = ((lower >= 97) & (lower <= 122)) | ((codes >= 48) & (codes <= 57)) | (codes > 127)
    hyphen = codes == 45
    inner = np.zeros_like(word)
    inner[1:-1] = hyphen[1:-1] & word[:-2] & word[2:]
    return word | inner


def refine(texts: Sequence[str], spans: SpanArrays, sections: Sequence[Sections]) -> SpanArrays:
    """The batch's spans with the rules of the module applied (in note then text order)."""
    if not len(spans):
        return spans
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    base = np.concatenate([[0], np.cumsum(lengths + len(_SEPARATOR))[:-1]])
    joined = _SEPARATOR.join(texts)
    start, end = base[spans.note] + spans.start, base[spans.note] + spans.end
    # whole words: move each edge to the edge of the word it falls in
    word = _word_chars(joined)
    run_start = np.maximum.accumulate(np.where(np.r_[True, ~word[:-1]], np.arange(len(word)), 0))
    run_end = np.minimum.accumulate(np.where(np.r_[~word[1:], True], np.arange(len(word)) + 1, len(word))[::-1])[::-1]
    inside_start = (start > 0) & word[np.minimum(start, len(word) - 1)] & word[np.maximum(start - 1, 0)]
    start = np.where(inside_start, run_start[np.minimum(start, len(word) - 1)], start)
    inside_end = (end < len(word)) & word[np.maximum(end - 1, 0)] & word[np.minimum(end, len(word) - 1)]
    end = np.where(inside_end, run_end[np.maximum(end - 1, 0)], end)
    # terminology tags: end the span before the tag that it runs into
    tag_lo, tag_hi = _intervals(SEMANTIC_TAG, joined)
    if len(tag_lo):
        idx = np.searchsorted(tag_lo, end, side="left") - 1
        hit = (idx >= 0) & (tag_hi[np.maximum(idx, 0)] > start)
        end = np.where(hit, np.maximum(start, tag_lo[np.maximum(idx, 0)]), end)
    # cut spans that cross a line or a bullet, one piece each
    note, label, confidence = spans.note, spans.label, spans.confidence
    breaks = np.array([m.start() for m in _BREAK.finditer(joined)], dtype=np.int64)
    crossing = np.searchsorted(breaks, end, side="left") > np.searchsorted(breaks, start, side="left")
    if crossing.any():
        keep = ~crossing
        pieces = [
            (k, start[k] + m.start(), start[k] + m.end())
            for k in np.nonzero(crossing)[0].tolist()
            for m in _PIECE.finditer(joined[start[k] : end[k]])
        ]
        picks = np.array([p[0] for p in pieces], dtype=np.int64)
        start = np.concatenate([start[keep], np.array([p[1] for p in pieces], dtype=np.int64)])
        end = np.concatenate([end[keep], np.array([p[2] for p in pieces], dtype=np.int64)])
        note = np.concatenate([note[keep], note[picks]])
        label = np.concatenate([label[keep], label[picks]])
        confidence = np.concatenate([confidence[keep], confidence[picks]])
    # trim bullets, punctuation and space at both edges
    start, end = _trim(joined, start, end)
    keep = end > start
    keep &= np.array([_has_content(joined[a:b]) for a, b in zip(start.tolist(), end.tolist(), strict=True)], dtype=bool)
    name_lo, name_hi = _intervals(_NAMES, joined)
    keep &= ~_overlaps(start, end, name_lo, name_hi)
    header = np.zeros(len(start), dtype=bool)
    local_start, local_end = start - base[note], end - base[note]
    for i, found in enumerate(sections):
        mine = note == i
        if mine.any() and len(found.start):
            header[mine] = found.in_header(local_start[mine], local_end[mine])
    keep &= ~header
    order = np.lexsort((local_start[keep], note[keep]))
    return SpanArrays(note[keep][order], label[keep][order], local_start[keep][order], local_end[keep][order], confidence[keep][order])


def _has_content(span: str) -> bool:
    return any(c.isalpha() for c in span) and not all(w in _FUNCTION_WORDS for w in span.lower().split())


def _trim(joined: str, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each edge past layout characters; vectorised over spans, one step per character trimmed."""
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    edge = np.zeros(max(int(codes.max(initial=0)) + 1, 0x2023), dtype=bool)
    edge[[ord(c) for c in _EDGE]] = True
    layout = edge[codes]
    start, end = start.copy(), end.copy()
    for _ in range(8):
        move = (start < end) & layout[np.minimum(start, len(codes) - 1)]
        if not move.any():
            break
        start += move
    for _ in range(8):
        move = (end > start) & layout[np.maximum(end - 1, 0)]
        if not move.any():
            break
        end -= move
    return start, end
