"""Many phrases as one regular expression that costs one dispatch per text position, not one attempt per phrase.

Python's ``re`` tries the branches of an alternation one by one at every position, so a list of a hundred phrases costs
a hundred attempts per character. The same phrases written as a character trie (``(?:a(?:bc|x)|b...)``) cost one
branch per character of the text instead. Continuations are tried before a phrase ends, so the longest phrase at a
position wins, as in a list sorted longest first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Trie = dict[str, "Trie"]


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
    """One expression matching any of ``phrases`` (compile it with ``re.IGNORECASE`` for case-blind matching); a space
    in a phrase matches ``space``; a phrase that ends with a word character must end on a word boundary."""
    return _emit(_build(phrases), "", space) if phrases else "(?!)"
