"""The fast forms of the clinical layer's regular expressions find exactly what their plain forms find, on random
strings built from the phrases they look for: the sentence bounds with the punctuation first, the historical times with
a cheap look-ahead first, the inline section labels as a trie, and the names tried only where one can start."""

from __future__ import annotations

import random
import re

from agents.clinical import assertion, layout, sections

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
    *("Mr.", "Mrs", "John", "Smith", "Corrin41", "is a 45 year old", "[**Name**]", "**NAME[x]", "Patient Name:", "name:", "O'Neil"),
]
GLUE = [" ", "", ":", "\n", "-", "/", ". ", "//", "\t", "!"]


def _found(pattern: re.Pattern[str], text: str) -> list[tuple[tuple[int, int], dict[str, str | None]]]:
    return [(m.span(), m.groupdict()) for m in pattern.finditer(text)]


def test_fast_patterns_find_what_the_plain_ones_find() -> None:
    classifier = assertion.AssertionClassifier()
    rng = random.Random(5)
    hits = 0
    for _ in range(2000):
        text = "".join(rng.choice(WORDS) + rng.choice(GLUE) for _ in range(rng.randint(0, 30)))
        for plain, fast in (
            (PLAIN_TIMES, classifier._times),
            (PLAIN_BOUNDS, classifier._bounds),
            (PLAIN_INLINE, sections._INLINE),
            (PLAIN_NAMES, layout._NAMES),
        ):
            want = _found(plain, text)
            assert _found(fast, text) == want, (plain.pattern[:30], text)
            hits += len(want)
    assert hits > 10_000  # the strings are built to hit all four
