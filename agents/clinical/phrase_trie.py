"""Many phrases as one regular expression that costs one dispatch per text position, not one attempt per phrase.

Python's ``re`` tries the branches of an alternation one by one at every position, so a list of a hundred phrases costs
a hundred attempts per character. The same phrases written as a character trie (``(?:a(?:bc|x)|b...)``) cost one
branch per character of the text instead. Continuations are tried before a phrase ends, so the longest phrase at a
position wins, as in a list sorted longest first.

Case-blind matching costs more: ``re`` skips a branch whose first literal is not the text's character without entering
it, but only for a case-sensitive literal. So the phrases are matched case-sensitively in lower case, in the text as
:func:`fold` lowers it (about half the time of ``re.IGNORECASE`` on clinical notes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Trie = dict[str, "Trie"]

#: what ``re.IGNORECASE`` takes for an ASCII letter and ``str.lower`` does not give as that letter (İ lowers to two
#: characters; dotless ı and long ſ match i and s case-blind)
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s"})


def fold(text: str) -> str:
    """``text`` in lower case, character for character (same length, same offsets), such that a case-sensitive pattern
    of lower-case ASCII finds in it what the same pattern compiled with ``re.IGNORECASE`` finds in ``text``."""
    return text.lower() if text.isascii() else text.translate(_FOLD).lower()


def scannable(text: str) -> str:
    """:func:`fold`'s text after a line break, for patterns that consume the character before a phrase instead of
    looking behind for it (so ``re`` scans for that character in C): a phrase at the text's start has one too. Offsets
    in it are one more than in ``text``."""
    return "\n" + fold(text)


def _build(phrases: Sequence[str]) -> Trie:
    root: Trie = {}
    for phrase in phrases:
        node = root
        for ch in phrase:
            node = node.setdefault(ch, {})
        node[""] = {}
    return root


def _emit(node: Trie, last: str, space: str) -> str:
    alts = [(space if ch == " " else re.escape(ch)) + _emit(child, ch, space) for ch, child in sorted(node.items()) if ch]
    if "" in node:
        alts.append(r"(?!\w)" if re.match(r"\w", last) else "")
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def phrase_pattern(phrases: Sequence[str], space: str) -> str:
    """One expression matching any of ``phrases`` (lower-case phrases matched in :func:`fold`'s text, for case-blind
    matching); a space in a phrase matches ``space``; a phrase that ends with a word character must end on a word
    boundary."""
    return _emit(_build(phrases), "", space) if phrases else "(?!)"
