"""What the ICD-10-CM coder searches: the entries of the public-domain code tables (the 2024 tabular list shipped by
``simple-icd-10-cm``, offline) and the default billable code of a category. See :mod:`agents.clinical.coding`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agents.clinical.terms import SEMANTIC_TAG

_ENCOUNTER = re.compile(r",\s*(?:initial encounter|subsequent encounter|sequela)\b.*$", re.IGNORECASE)


def clean(text: str) -> str:
    """Lower case, terminology tags dropped, spaces collapsed: how the table's own entries are searched."""
    return " ".join(SEMANTIC_TAG.sub("", text).lower().strip(" .,;:").split())


@dataclass(frozen=True)
class Entry:
    text: str
    #: the billable code this entry leads to (for a seventh-character family: its code without the seventh character)
    code: str


def table_entries(prefixes: tuple[str, ...] = ()) -> tuple[list[Entry], dict[str, dict[str, str]]]:
    """What is searched, from the ICD-10-CM tabular list (only codes starting with ``prefixes`` when given: the tests'
    small index), and the seventh-character families (shared part -> seventh character -> code)."""
    import simple_icd_10_cm as cm

    entries: list[Entry] = []
    families: dict[str, dict[str, str]] = {}
    seen: set[tuple[str, str]] = set()

    def add(text: str, code: str) -> None:
        key = (text.lower(), code)
        if key not in seen:
            seen.add(key)
            entries.append(Entry(text, code))

    def target_of(code: str) -> str:
        return code[:-1] if len(code.replace(".", "")) == 7 else code

    leaves = [c for c in cm.get_all_codes(with_dots=True) if cm.is_leaf(c) and (not prefixes or c.startswith(prefixes))]
    for code in leaves:
        description = cm.get_description(code)
        target = target_of(code)
        if target != code:
            families.setdefault(target, {})[code[-1]] = code
            description = _ENCOUNTER.sub("", description)
        add(description, target)
        for term in cm.get_inclusion_term(code):
            add(term, target)
    # a category or subcategory is searched by its description and inclusion terms too, and leads to its default
    # billable code (:func:`plainness`), as coders code a mention that says no more than the category
    # ("acute pancreatitis" -> K85.90, "breast cancer" -> C50.919, "glaucoma" -> H40.9)
    for code in cm.get_all_codes(with_dots=True):
        if cm.is_leaf(code) or cm.is_chapter_or_block(code) or (prefixes and not code.startswith(prefixes)):
            continue
        target = target_of(default_code(code))
        add(_ENCOUNTER.sub("", cm.get_description(code)), target)
        for term in cm.get_inclusion_term(code):
            add(term, target)
    return entries, families


def code_displays(entries: list[Entry], families: dict[str, dict[str, str]]) -> dict[str, str]:
    """The table's description of every code the coder can give: each entry's billable code, and each member of a
    seventh-character family (an entry of a family leads to its shared part, which is no code of the table). Kept in the
    index, so a worker need not parse the table (2-3 s of CPU) to name the codes it gives."""
    import simple_icd_10_cm as cm

    codes = {e.code for e in entries if e.code not in families} | {c for family in families.values() for c in family.values()}
    return {code: cm.get_description(code) for code in sorted(codes)}


_PLAIN = (
    (re.compile(r"unspecified"), 2.0),
    (re.compile(r"^unspecified|, unspecified$"), 0.5),
    (re.compile(r"\bwithout\b"), 1.5),
    (re.compile(r"not intractable"), 1.0),
    (re.compile(r"\bwith\b"), -3.0),
    (re.compile(r"(?<!not )intractable"), -2.0),
    (re.compile(r"^other|, other|\bother specified"), -2.0),
    (re.compile(r"in relapse|in remission"), -2.0),
    (re.compile(r"\b(?:right|left|bilateral)\b"), -1.0),
)


def plainness(description: str) -> float:
    """How little a code claims beyond its parent: unspecified (most of all when the description says so of itself),
    without complications, not intractable, no side. See :func:`default_code`."""
    lower = description.lower()
    return sum(weight for pattern, weight in _PLAIN if pattern.search(lower))


def default_code(code: str) -> str:
    """The billable code a category or subcategory stands for when a mention says no more than it: down the tree, at
    each level the plainest child, then one ending in 9 (ICD-10-CM's place for "unspecified"), then the first:
    C50 -> C50.9 -> C50.91 -> C50.919, J18 -> J18.9, H40 -> H40.9."""
    import simple_icd_10_cm as cm

    while not cm.is_leaf(code):
        code = min(cm.get_children(code), key=lambda c: (-plainness(cm.get_description(c)), not c.endswith("9"), c))
    return code
