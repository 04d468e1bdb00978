"""The fast forms of the clinical layer's regular expressions find exactly what their plain forms find, on random
strings built from the phrases they look for: the sentence bounds with the punctuation first, the historical times with
cheap guards first, the inline section labels and the assertion cues as tries, these three case-sensitive in the folded
text with the character before them consumed, the semantic tags found from their parenthesis, and the names tried
only where one can start."""

from __future__ import annotations

import random
import re
import sys

import numpy as np

from agents.clinical import assertion, layout, sections
from agents.clinical.phrase_trie import fold, scannable
from agents.clinical.terms import SEMANTIC_TAG

PLAIN_TIMES = re.compile("|".join(rf"(?<![\w-])(?:{t})(?!\w)" for t in assertion._HISTORICAL_TIMES), re.IGNORECASE)
_NOT_AFTER = r"(?<!\bdr)(?<!\bmr)(?<!\bms)(?<!\bmrs)(?<!\bvs)(?<!\be\.g)(?<!\bi\.e)(?<!\bst)(?<!\bno)"
PLAIN_BOUNDS = re.compile(rf"(?:{_NOT_AFTER}[.!?](?=\s|$))|[;\n]", re.IGNORECASE)
PLAIN_INLINE = re.compile(
    r"(?<![\w/])(?P<name>"
    + "|".join(sorted((re.escape(n).replace(r"\ ", r"[ \t]+") for n in sections._CANONICAL if len(n) > 5), key=len, reverse=True))
    + r")[ \t]*:(?!//)",
    re.IGNORECASE,
)
PLAIN_NAMES = re.compile(layout.NAME_FORMS, re.MULTILINE)
WORDS = [
    *("past medical history", "Past  Medical\tHistory", "history", "Family history", "follow-up", "impression/plan"),
    *("in 2019", "3 years ago", "for the past 2 years", "at age 5", "in March of 2020", "a few months ago"),
    *("since 1999", "two weeks ago", "over the last 3 decades", "several yrs prior", "circa 2001", "of 2005", "until 2010"),
    *("at the age of 12", "a couple of months before", "an year ago", "12 weeks ago", "twenty years", "for", "in", "at the"),
    *("allergies", "Medications", "Dr.", "dr!", "e.g.", "i.e.", "No.", "st.", "vs.", "Mrs.", "?", ";", "é", "中文"),
    *("-", "x", "foo/", "a", ":", " ", "\n", "9"),
    *("(disorder)", " (Finding)", "\t(regime/therapy)", "(social  concept)", "(foo)", "(", ")", "(PERSON)"),
    *("İn 2019", "ın 2019", "Paſt Medical Hiſtory", "NO EVIDENCE OF", "Is Negative For", "not ruled out", "( )", "Denies"),
    *("Mr.", "Mrs", "John", "Smith", "Corrin41", "is a 45 year old", "[**Name**]", "**NAME[x]", "Patient Name:", "name:", "O'Neil"),
]
GLUE = [" ", "", ":", "\n", "-", "/", ". ", "//", "\t", "!"]


def _found(pattern: re.Pattern[str], text: str) -> list[tuple[tuple[int, int], dict[str, str | None]]]:
    return [(m.span(), m.groupdict()) for m in pattern.finditer(text)]


def _plain_cues(phrases: list[str]) -> re.Pattern[str]:
    """Every phrase at every position, case-blind, longest first; one that starts with a word character where no word
    character or hyphen precedes it."""
    words = sorted((p for p in phrases if re.match(r"\w", p)), key=len, reverse=True)
    others = sorted((p for p in phrases if not re.match(r"\w", p)), key=len, reverse=True)

    def alternatives(group: list[str]) -> str:
        return "|".join(re.escape(p).replace(r"\ ", r"[\s-]+") + (r"(?!\w)" if re.search(r"\w$", p) else "") for p in group)

    return re.compile(rf"(?=((?<![\w-])(?:{alternatives(words)})|(?:{alternatives(others)})))", re.IGNORECASE)


def _cased(phrase: str, rng: random.Random) -> str:
    return rng.choice((phrase, phrase.upper(), phrase.title(), phrase.replace(" ", "-"), phrase.replace(" ", "  ")))


def test_fast_patterns_find_what_the_plain_ones_find() -> None:
    classifier = assertion.AssertionClassifier()
    phrases = list(classifier._rules)
    plain_cues = _plain_cues(phrases)
    rng = random.Random(5)
    hits = 0
    for _ in range(2000):
        pieces = [rng.choice(WORDS) if rng.random() < 0.7 else _cased(rng.choice(phrases), rng) for _ in range(rng.randint(0, 30))]
        text = "".join(piece + rng.choice(GLUE) for piece in pieces)
        scan = scannable(text)
        for plain, fast in ((PLAIN_BOUNDS, classifier._bounds), (PLAIN_NAMES, layout._NAMES)):
            want = _found(plain, text)
            assert _found(fast, text) == want, (plain.pattern[:30], text)
            hits += len(want)
        tags = [m.span() for m in SEMANTIC_TAG.finditer(text)]
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        assert list(zip(*(a.tolist() for a in layout._tags(text, codes)), strict=True)) == tags, text
        times = [m.span() for m in PLAIN_TIMES.finditer(text)]
        assert classifier.time_spans(scan) == times, text
        inline = [(m.start("name"), m.end(), fold(m.group("name"))) for m in PLAIN_INLINE.finditer(text)]
        assert sections.inline_labels(text) == inline, text
        cues = [(m.start(), m.end(1), fold(m.group(1))) for m in plain_cues.finditer(text)]
        assert classifier.cue_matches(scan) == cues, text
        hits += len(tags) + len(times) + len(inline) + len(cues)
    assert hits > 20_000  # the strings are built to hit all six


def test_fold_keeps_offsets_and_matches_as_ignorecase_does() -> None:
    """Every character folds to one character, and to an ASCII letter exactly when ``re.IGNORECASE`` matches it with
    that letter (İ, dotless ı and long ſ included)."""
    letters = re.compile("[a-z]", re.IGNORECASE)
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        folded = fold(char)
        assert len(folded) == 1, hex(code)
        if letters.fullmatch(char):
            assert re.fullmatch(folded, char, re.IGNORECASE), hex(code)
        else:
            assert not ("a" <= folded <= "z"), hex(code)
    text = "Paſt HİSTORY of İllness: ı"
    assert len(fold(text)) == len(text)
