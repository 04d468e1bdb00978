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

All of it is numpy over the batch's spans on one joined string, except cutting the few spans that cross a line. What
the rules need of the text (:class:`BatchText`) is computed once per batch and shared by its span sets (the entities
and the possible missed entities).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.clinical.phrase_trie import fold
from agents.clinical.sections import Sections
from agents.clinical.terms import SEMANTIC_TAGS
from agents.runners.spans import SpanArrays

_SEPARATOR = "\n\n"
#: how names are written; every one starts at a capital, a "[" or "*", a line's start, or after a colon
NAME_FORMS = "|".join(
    (
        r"\b[A-Z][a-z]+\d+\b",  # numbered names (Synthea, some de-identified corpora)
        r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?[ \t]+[A-Z][\w'-]+(?:[ \t]+[A-Z][\w'-]+)?",
        r"^[ \t]*(?:[A-Z][\w'-]+[ \t]+){0,2}[A-Z][\w'-]+(?=\s+is\s+an?\s+\d+[\s-]*(?:year|yr|y/?o|month|week|day))",
        r"\[\*\*[^\]\n]*\*\*\]",  # MIMIC-style placeholders
        r"\*\*(?:NAME|PATIENT|DOCTOR|NAMES?)\[[^\]\n]*\]",
        r"(?<=^(?i:patient name):)[^\n]*|(?<=^(?i:name):)[^\n]*",
    )
)
#: the same, tried only where one can start (``re`` rejects the other positions at once: half the time)
_NAMES = re.compile(r"(?:(?=[A-Z\[*])|^|(?<=:))(?:" + NAME_FORMS + ")", re.MULTILINE)
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
#: a semantic tag without the blanks before it (``agents.clinical.terms.SEMANTIC_TAG``), in the folded text: the
#: parenthesis first, so ``re`` scans for it in C (see :func:`_tags`)
_TAG = re.compile(r"\((?:" + "|".join(map(re.escape, SEMANTIC_TAGS)) + r")\)")


def _intervals(pattern: re.Pattern[str], text: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(m.start(), m.end()) for m in pattern.finditer(text) if m.end() > m.start()]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    arr = np.array(pairs, dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def _tags(text: str, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``agents.clinical.terms.SEMANTIC_TAG`` matches in ``text`` (``codes``: its characters): each tag found in
    the folded text, its start moved back over the spaces and tabs before it."""
    start, end = _intervals(_TAG, fold(text))
    if len(start):
        at = np.arange(len(codes), dtype=np.int64)
        after_solid = np.maximum.accumulate(np.where((codes == 32) | (codes == 9), 0, at + 1))  # past the last non-blank
        start = np.where(start > 0, after_solid[np.maximum(start - 1, 0)], 0)
    return start, end


def _overlaps(start: np.ndarray, end: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether each span overlaps any of the sorted, disjoint intervals ``[lo, hi)``."""
    if not len(lo):
        return np.zeros(len(start), dtype=bool)
    idx = np.searchsorted(lo, end, side="left") - 1
    return (idx >= 0) & (hi[np.maximum(idx, 0)] > start)


def _word_chars(codes: np.ndarray) -> np.ndarray:
    """Per character: part of a word (letters, digits, any non-ASCII letter, and a hyphen between two of them)."""
    lower = codes | 0x20
    word = ((lower >= 97) & (lower <= 122)) | ((codes >= 48) & (codes <= 57)) | (codes > 127)
    hyphen = codes == 45
    inner = np.zeros_like(word)
    inner[1:-1] = hyphen[1:-1] & word[:-2] & word[2:]
    return word | inner


def _char_test(codes: np.ndarray, ascii_table: np.ndarray, test: str) -> np.ndarray:
    """``str.<test>()`` of every character: a table for ASCII, one call per distinct other character."""
    out: np.ndarray = ascii_table[np.minimum(codes, 127)]
    wide = codes > 127
    if wide.any():
        distinct, inverse = np.unique(codes[wide], return_inverse=True)
        out[wide] = np.array([getattr(chr(c), test)() for c in distinct.tolist()], dtype=bool)[inverse]
    return out


_ASCII_ALPHA = np.array([chr(c).isalpha() for c in range(128)], dtype=bool)
_ASCII_SPACE = np.array([chr(c).isspace() for c in range(128)], dtype=bool)
_FUNCTION_MAX = max(len(w) for w in _FUNCTION_WORDS)


def _packed(codes: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Each piece ``[start, end)`` of ASCII letters, at most as long as the longest function word, as one integer of
    its lower-case letters (base 27); any other piece -1."""
    size = end - start
    k = np.arange(_FUNCTION_MAX, dtype=np.int64)
    idx = np.minimum(start[:, None] + k[None, :], max(len(codes) - 1, 0))
    inside = k[None, :] < size[:, None]
    letter = (codes[idx] | 0x20) - 96
    ascii_letter = (codes[idx] < 128) & (letter >= 1) & (letter <= 26)
    value = np.where(inside, letter, 0) * (27**k)[None, :]
    ok = (size > 0) & (size <= _FUNCTION_MAX) & (ascii_letter | ~inside).all(axis=1)
    return np.where(ok, value.sum(axis=1), -1)


def _function_codes() -> np.ndarray:
    words = sorted(_FUNCTION_WORDS)
    codes = np.frombuffer(" ".join(words).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    starts = np.cumsum(lengths + 1) - lengths - 1
    return _packed(codes, starts, starts + lengths)


_FUNCTION_CODES = _function_codes()


@dataclass(frozen=True)
class BatchText:
    """A batch's texts joined into one string, with what the rules need of it, per character or as intervals."""

    joined: str
    #: where each text starts in ``joined``
    base: np.ndarray
    codes: np.ndarray
    word: np.ndarray
    run_start: np.ndarray
    run_end: np.ndarray
    #: letters before each character (``str.isalpha``), length + 1
    letters: np.ndarray
    #: the whitespace-separated pieces (``str.split``): each character's piece, the pieces' bounds, the nearest
    #: non-space character at or after / at or before each position, and per piece whether it is a function word
    piece: np.ndarray
    piece_start: np.ndarray
    piece_end: np.ndarray
    next_solid: np.ndarray
    prev_solid: np.ndarray
    content_pieces: np.ndarray
    tags: tuple[np.ndarray, np.ndarray]
    breaks: np.ndarray
    names: tuple[np.ndarray, np.ndarray]

    @classmethod
    def of(cls, texts: Sequence[str]) -> BatchText:
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
        base = np.concatenate([[0], np.cumsum(lengths + len(_SEPARATOR))[:-1]]).astype(np.int64)
        joined = _SEPARATOR.join(texts)
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        n = len(codes)
        at = np.arange(n, dtype=np.int64)
        word = _word_chars(codes)
        run_start = np.maximum.accumulate(np.where(np.r_[True, ~word[:-1]], at, 0)) if n else at
        run_end = np.minimum.accumulate(np.where(np.r_[~word[1:], True], at + 1, n)[::-1])[::-1] if n else at
        letters = np.concatenate([[0], np.cumsum(_char_test(codes, _ASCII_ALPHA, "isalpha"))]).astype(np.int64)
        solid = ~_char_test(codes, _ASCII_SPACE, "isspace")
        first = solid & np.r_[True, ~solid[:-1]] if n else solid
        piece = np.cumsum(first) - 1
        piece_start = np.nonzero(first)[0]
        piece_end = np.nonzero(solid & np.r_[~solid[1:], True])[0] + 1 if n else piece_start
        # the nearest non-space character at or after (n when none) and at or before (-1 when none) each position
        next_solid = np.minimum.accumulate(np.where(solid, at, n)[::-1])[::-1] if n else at
        prev_solid = np.maximum.accumulate(np.where(solid, at, -1)) if n else at
        content_pieces = np.concatenate([[0], np.cumsum(~np.isin(_packed(codes, piece_start, piece_end), _FUNCTION_CODES))])
        return cls(
            joined,
            base,
            codes,
            word,
            run_start,
            run_end,
            letters,
            piece,
            piece_start,
            piece_end,
            np.r_[next_solid, n],
            prev_solid,
            content_pieces,
            _tags(joined, codes),
            np.array([m.start() for m in _BREAK.finditer(joined)], dtype=np.int64),
            _intervals(_NAMES, joined),
        )

    def has_content(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Whether each span ``joined[start:end]`` has a letter and a piece that is not a function word: the batch
        form of :func:`has_content`."""
        alpha = self.letters[end] > self.letters[start]
        first_at = self.next_solid[start]
        last_at = self.prev_solid[np.maximum(end - 1, 0)]
        any_piece = (first_at < end) & (end > start)
        safe_first = np.where(any_piece, first_at, 0)
        safe_last = np.where(any_piece, last_at, 0)
        p_first, p_last = self.piece[safe_first], self.piece[safe_last]
        clip_first = _packed(self.codes, safe_first, np.minimum(end, self.piece_end[p_first]))
        clip_last = _packed(self.codes, np.maximum(start, self.piece_start[p_last]), safe_last + 1)
        inner = self.content_pieces[np.maximum(p_last, p_first)] - self.content_pieces[np.minimum(p_first + 1, p_last)]
        all_function = np.isin(clip_first, _FUNCTION_CODES) & np.isin(clip_last, _FUNCTION_CODES) & (inner <= 0)
        content: np.ndarray = alpha & any_piece & ~all_function
        return content


def has_content(span: str) -> bool:
    """A span keeps when it has a letter and a word that is not a function word (ASCII case folded)."""
    return any(c.isalpha() for c in span) and not all(_ascii_lower(w) in _FUNCTION_WORDS for w in span.split())


def _ascii_lower(word: str) -> str:
    return "".join(chr(ord(c) | 0x20) if "A" <= c <= "Z" else c for c in word)


def refine(texts: Sequence[str] | BatchText, spans: SpanArrays, sections: Sequence[Sections]) -> SpanArrays:
    """The batch's spans with the rules of the module applied (in note then text order). ``texts``: the batch's texts,
    or their :class:`BatchText` when several span sets of one batch are refined."""
    if not len(spans):
        return spans
    text = texts if isinstance(texts, BatchText) else BatchText.of(texts)
    joined, base, word = text.joined, text.base, text.word
    start, end = base[spans.note] + spans.start, base[spans.note] + spans.end
    # whole words: move each edge to the edge of the word it falls in
    inside_start = (start > 0) & word[np.minimum(start, len(word) - 1)] & word[np.maximum(start - 1, 0)]
    start = np.where(inside_start, text.run_start[np.minimum(start, len(word) - 1)], start)
    inside_end = (end < len(word)) & word[np.maximum(end - 1, 0)] & word[np.minimum(end, len(word) - 1)]
    end = np.where(inside_end, text.run_end[np.maximum(end - 1, 0)], end)
    # terminology tags: end the span before the tag that it runs into
    tag_lo, tag_hi = text.tags
    if len(tag_lo):
        idx = np.searchsorted(tag_lo, end, side="left") - 1
        hit = (idx >= 0) & (tag_hi[np.maximum(idx, 0)] > start)
        end = np.where(hit, np.maximum(start, tag_lo[np.maximum(idx, 0)]), end)
    # cut spans that cross a line or a bullet, one piece each
    note, label, confidence = spans.note, spans.label, spans.confidence
    crossing = np.searchsorted(text.breaks, end, side="left") > np.searchsorted(text.breaks, start, side="left")
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
    start, end = _trim(text.codes, start, end)
    keep = (end > start) & text.has_content(start, end)
    keep &= ~_overlaps(start, end, *text.names)
    header = np.zeros(len(start), dtype=bool)
    local_start, local_end = start - base[note], end - base[note]
    for i, found in enumerate(sections):
        mine = note == i
        if mine.any() and len(found.start):
            header[mine] = found.in_header(local_start[mine], local_end[mine])
    keep &= ~header
    order = np.lexsort((local_start[keep], note[keep]))
    return SpanArrays(note[keep][order], label[keep][order], local_start[keep][order], local_end[keep][order], confidence[keep][order])


def _trim(codes: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each edge past layout characters; vectorised over spans, one step per character trimmed."""
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
