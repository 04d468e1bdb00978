"""Assertion status of mentions: is the condition present, absent, possible, hypothetical, historical, or someone
else's? A ConText-style rule engine (the lexicon is ``assertion_rules.toml``) run over a whole batch at once.

How a batch is read:

1. The texts are joined into one string (separated by blank lines), so every regular expression runs once per batch.
2. Cues are found with a trie of every phrase (:func:`_tries`, matched in the folded text: see
   :mod:`agents.clinical.phrase_trie`), at every position: the longest phrase at a position wins, and a phrase inside a
   longer one is dropped ("no change" masks "no", "not ruled out" masks "ruled out"), while overlapping ones both count
   ("is negative" and "negative for" in "is negative for").
3. Sentences end at ``.``, ``!`` or ``?`` before white space, at ``;`` and at line breaks. A cue governs mentions in
   its own sentence, after it (forward), before it (backward) or both, until a terminator, a cue of another category
   (``recent`` phrases end historical scopes only) or its word cap.
4. Each mention takes the applicable cue nearest to it in each category, and its status from the first category in
   :data:`PRIORITY` that has one. A mention with no cue takes its section's default (Family History: family; Past
   Medical/Surgical History: historical).

Everything after the regular expressions is numpy over the batch's (mention, cue) pairs within a sentence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.clinical import cues
from agents.clinical.phrase_trie import fold, phrase_pattern, scannable
from schemas.extraction import Assertion

#: statuses by precedence when cues of several categories govern a mention
PRIORITY: tuple[Assertion, ...] = (
    Assertion.absent,
    Assertion.family,
    Assertion.hypothetical,
    Assertion.possible,
    Assertion.historical,
)
_CATEGORY = {a.value: i for i, a in enumerate(PRIORITY)}
_PSEUDO, _RECENT, _STOP = len(PRIORITY), len(PRIORITY) + 1, len(PRIORITY) + 2
_NO_CAP = 10_000
_SEPARATOR = "\n\n"

_NUMBER = (
    r"(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|thirty|several|many|few|a few"
    r"|a couple of|couple of)"
)
_HISTORICAL_TIMES = [
    rf"{_NUMBER}[\s-]+(?:years?|yrs?|months?|mos?|decades?)[\s-]+(?:ago|prior|previously|before)",
    r"(?:[3-9]|[1-9]\d|three|four|five|six|seven|eight|nine|ten|several|many)[\s-]+weeks?[\s-]+ago",
    r"(?:in|since|during|from|until|circa|around|of)\s+(?:19|20)\d\d",
    r"in\s+(?:january|february|march|april|may|june|july|august|september|october|november|december)\s+(?:of\s+)?(?:19|20)\d\d",
    rf"(?:for|over)\s+(?:the\s+)?(?:past|last)?\s*{_NUMBER}[\s-]+(?:years?|yrs?|months?|decades?)",
    r"at\s+(?:the\s+)?age\s+(?:of\s+)?\d+",
]


def _tries(phrases: Sequence[str]) -> tuple[str, str]:
    """Two expressions for every phrase, over :func:`~agents.clinical.phrase_trie.scannable` text, each a character trie
    (each position of the text costs one dispatch on its first character, not one attempt per phrase), longer
    continuations tried before a phrase ends, so the longest phrase at a position wins; spaces in a phrase match any run
    of spaces or hyphens. Phrases that start with a word character start where no word character or hyphen precedes:
    that character is consumed (``re`` scans for it in C and tries the trie at word starts only) and the phrase is
    group 1, a look-ahead, so overlapping phrases are all found. The others (``?``) are group 1 of a look-ahead at every
    position."""
    words = [p for p in phrases if re.match(r"\w", p)]
    others = [p for p in phrases if not re.match(r"\w", p)]
    space = r"[\s-]+"
    return rf"[^\w-](?=({phrase_pattern(words, space)}))", rf"(?=({phrase_pattern(others, space)}))"


@dataclass(frozen=True)
class _Rule:
    category: int
    forward: bool
    backward: bool
    cap: int


def _rules() -> dict[str, list[_Rule]]:
    lexicon = cues.load_lexicon()
    table: dict[str, list[_Rule]] = {}

    def add(phrase: str, rule: _Rule) -> None:
        table.setdefault(fold(" ".join(phrase.replace("-", " ").split())), []).append(rule)

    for row in lexicon.cues:
        add(row.phrase, _Rule(_CATEGORY[row.category], row.forward, row.backward, _NO_CAP if row.cap is None else row.cap))
    for phrases, category in ((lexicon.pseudo, _PSEUDO), (lexicon.recent, _RECENT), (lexicon.stop, _STOP)):
        for phrase in phrases:
            add(phrase, _Rule(category, False, False, 0))
    return table


@dataclass(frozen=True)
class AssertionArrays:
    """Per mention: its status (an index into :class:`~schemas.extraction.Assertion`'s members, in
    :data:`ASSERTIONS` order), and the governing cue's character span in the mention's text (-1 when none)."""

    status: np.ndarray
    cue_start: np.ndarray
    cue_end: np.ndarray
    #: how many statuses have a cue governing the mention (0 or 1: one reading; more: a guess by precedence)
    readings: np.ndarray

    def statuses(self) -> list[Assertion]:
        return [ASSERTIONS[i] for i in self.status.tolist()]


#: index -> status, as stored in :attr:`AssertionArrays.status`
ASSERTIONS: tuple[Assertion, ...] = (*PRIORITY, Assertion.present)
_PRESENT = len(PRIORITY)


#: every word a historical time expression can start with (besides a digit), for the pattern's guard
_TIME_FIRST_WORDS = (
    *("a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "fifteen"),
    *("twenty", "thirty", "several", "many", "few", "couple", "in", "since", "during", "from", "until", "circa"),
    *("around", "of", "for", "over", "at"),
)


def times_pattern() -> str:
    """Every historical time expression (group 1) starting where no word character or hyphen precedes it and ending at a
    word's end, over :func:`~agents.clinical.phrase_trie.scannable` text. Cheap guards come first, so ``re`` rejects
    most positions at once: the character before, consumed (``re`` scans for it in C), then a digit or the first letter
    of a word an expression can start with, then a digit or one of those words (a trie: one dispatch per character),
    before the expressions themselves are tried one by one."""
    starts = "".join(sorted({w[0] for w in _TIME_FIRST_WORDS}))
    first = phrase_pattern(sorted(_TIME_FIRST_WORDS), r"\s+")
    return rf"[^\w-](?=[0-9{starts}])(?=\d|{first})((?:" + "|".join(_HISTORICAL_TIMES) + r")(?!\w))"


#: abbreviations whose period ends no sentence, checked behind the punctuation mark just matched
_ABBREVIATIONS = ("dr", "mr", "ms", "mrs", "vs", r"e\.g", r"i\.e", "st", "no")


def bounds_pattern() -> str:
    """Where sentences end: ``.``, ``!`` or ``?`` before white space or the end, unless it follows one of
    :data:`_ABBREVIATIONS`; and every ``;`` and line break. The expression starts with the one character class, so
    ``re`` scans for it in C instead of trying look-behinds at every position."""
    not_after = "".join(rf"(?<!\b{a}.)" for a in _ABBREVIATIONS)
    return rf"[.!?;\n](?:(?<=[.!?]){not_after}(?=\s|$)|(?<=[;\n]))"


class AssertionClassifier:
    """Compiled once (a worker builds it at start-up); :meth:`classify` then runs per batch."""

    def __init__(self) -> None:
        self._rules = _rules()
        words, others = _tries(list(self._rules))
        self._cues = re.compile(words)
        self._other_cues = re.compile(others)
        self._times = re.compile(times_pattern())
        self._bounds = re.compile(bounds_pattern(), re.IGNORECASE)

    def cue_matches(self, scan: str) -> list[tuple[int, int, str]]:
        """(start, end, phrase) of every cue phrase at every position of ``scan``
        (:func:`~agents.clinical.phrase_trie.scannable` text), as offsets into the text, in order."""
        found = [(m.start(), m.end(1) - 1, m.group(1)) for m in self._cues.finditer(scan)]
        found += [(m.start() - 1, m.end(1) - 1, m.group(1)) for m in self._other_cues.finditer(scan)]
        found.sort()  # the two kinds never start at one position (a word character, or not)
        return found

    def time_spans(self, scan: str) -> list[tuple[int, int]]:
        """(start, end) of every historical time expression in ``scan`` (:func:`~agents.clinical.phrase_trie.scannable`
        text), as offsets into the text."""
        return [(m.start(1) - 1, m.end(1) - 1) for m in self._times.finditer(scan)]

    def _find_cues(self, joined: str) -> tuple[np.ndarray, ...]:
        starts, ends, cats, fwd, bwd, caps = [], [], [], [], [], []
        reach = -1  # the end of the furthest match so far: a match inside it is part of a longer phrase
        scan = scannable(joined)
        for begin, stop, phrase in self.cue_matches(scan):
            if stop <= reach:
                continue
            reach = stop
            for rule in self._rules[" ".join(phrase.replace("-", " ").split())]:
                starts.append(begin)
                ends.append(stop)
                cats.append(rule.category)
                fwd.append(rule.forward)
                bwd.append(rule.backward)
                caps.append(rule.cap)
        for begin, stop in self.time_spans(scan):
            starts.append(begin)
            ends.append(stop)
            cats.append(_CATEGORY["historical"])
            fwd.append(True)
            bwd.append(True)
            caps.append(6)
        order = np.argsort(np.array(starts, dtype=np.int64), kind="stable")
        return (
            np.array(starts, dtype=np.int64)[order],
            np.array(ends, dtype=np.int64)[order],
            np.array(cats, dtype=np.int64)[order],
            np.array(fwd, dtype=bool)[order],
            np.array(bwd, dtype=bool)[order],
            np.array(caps, dtype=np.int64)[order],
        )

    def classify(
        self,
        texts: Sequence[str],
        note: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        section_default: np.ndarray | None = None,
    ) -> AssertionArrays:
        """The status of each mention ``texts[note[k]][start[k]:end[k]]``. ``section_default``: per mention, the index
        (into :data:`ASSERTIONS`) its section implies when no cue governs it, or -1."""
        n = len(note)
        present = np.full(n, _PRESENT, dtype=np.int64)
        none = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return AssertionArrays(present, none, none, np.zeros(n, dtype=np.int64))
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
        base = np.concatenate([[0], np.cumsum(lengths + len(_SEPARATOR))[:-1]])
        joined = _SEPARATOR.join(texts)
        t_start, t_end = base[note] + start, base[note] + end
        c_start, c_end, c_cat, c_fwd, c_bwd, c_cap = self._find_cues(joined)
        bounds = np.array([m.start() for m in self._bounds.finditer(joined)], dtype=np.int64)
        words = _word_starts(joined)

        # (mention, cue) pairs within the mention's sentence
        sentence = np.searchsorted(bounds, t_start, side="left")
        s_lo = np.where(sentence > 0, bounds[np.maximum(sentence - 1, 0)] + 1, 0) if len(bounds) else np.zeros(n, np.int64)
        s_hi = bounds[np.minimum(sentence, len(bounds) - 1)] if len(bounds) else np.full(n, len(joined), np.int64)
        s_hi = np.where(sentence < len(bounds), s_hi, len(joined) + 1)
        lo = np.searchsorted(c_start, s_lo, side="left")
        hi = np.searchsorted(c_start, s_hi, side="right")  # a cue on the boundary (a "?") belongs to the sentence
        counts = np.maximum(hi - lo, 0)
        pm = np.repeat(np.arange(n), counts)
        pc = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
        cat = c_cat[pc]
        governing = cat < _PSEUDO
        ms, me, cs, ce = t_start[pm], t_end[pm], c_start[pc], c_end[pc]
        # a cue that starts before the mention governs it forward, one that ends after it backward, even when the
        # model's span took some of the cue's words ("No [Known Allergies]") or starts with the cue ("[No Known
        # Allergies]": the annotator then moves the span past it); a cue elsewhere inside the mention governs nothing
        before = governing & c_fwd[pc] & (cs <= ms) & (ce <= me)
        after = governing & c_bwd[pc] & (ce > me) & (cs >= ms) & ~before
        gap_from = np.where(after, me, np.minimum(ce, ms))
        gap_to = np.where(after, np.maximum(cs, me), ms)
        words_between = np.searchsorted(words, gap_to, side="left") - np.searchsorted(words, gap_from, side="left")
        ok = (before | after) & (words_between <= c_cap[pc])
        # a terminator, or a cue of another category, between the cue and the mention ends the scope
        for category in range(len(PRIORITY)):
            mask = ok & (cat == category)
            if not mask.any():
                continue
            other = (c_cat != category) & (c_cat != _PSEUDO)
            if category != _CATEGORY["historical"]:
                other &= c_cat != _RECENT
            barrier = np.sort(c_start[other])
            a, b = gap_from[mask], gap_to[mask]
            blocked = np.searchsorted(barrier, b, side="left") - np.searchsorted(barrier, a, side="left") > 0
            ok[np.nonzero(mask)[0][blocked]] = False
        distance = gap_to - gap_from
        # the winner per mention: lowest category (PRIORITY order), then the nearest cue
        key = np.where(ok, cat * (1 << 40) + np.maximum(distance, 0), np.iinfo(np.int64).max)
        best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, pm, key)
        won = ok & (key == best[pm])
        status, cue_start, cue_end = present.copy(), none.copy(), none.copy()
        first = np.unique(pm[won], return_index=True)[1]
        winners = np.nonzero(won)[0][first]
        status[pm[winners]] = cat[winners]
        cue_start[pm[winners]] = cs[winners] - base[note[pm[winners]]]
        cue_end[pm[winners]] = ce[winners] - base[note[pm[winners]]]
        if section_default is not None:
            fallback = (status == _PRESENT) & (section_default >= 0)
            status[fallback] = section_default[fallback]
        pairs = np.unique(pm[ok] * len(ASSERTIONS) + cat[ok])  # distinct (mention, status) with a governing cue
        readings = np.bincount(pairs // len(ASSERTIONS), minlength=n).astype(np.int64)
        return AssertionArrays(status, cue_start, cue_end, readings)


def _word_starts(text: str) -> np.ndarray:
    """Character offsets where a word (a run of non-space characters) starts."""
    if not text:
        return np.zeros(0, dtype=np.int64)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    space = (codes == 32) | (codes == 10) | (codes == 9) | (codes == 13)
    starts = ~space & np.r_[True, space[:-1]]
    return np.nonzero(starts)[0].astype(np.int64)


def section_defaults(sections: Sequence[str | None]) -> np.ndarray:
    """Per mention, the status index its section implies (Family History: family; Past Medical History: historical),
    or -1."""
    from agents.clinical.sections import SECTION_ASSERTION

    index = {a.value: i for i, a in enumerate(ASSERTIONS)}
    return np.array([index[SECTION_ASSERTION[s]] if s in SECTION_ASSERTION else -1 for s in sections], dtype=np.int64)
