"""The kinds of code a mention must give grounds for (a secondary neoplasm, a history-of code, pregnancy, ...), as bit
flags: an entry's (its code and description say it is of that kind) and a mention's (its words license that kind).
The coder lowers an entry's score for each kind it is of that the mention does not license
(:mod:`agents.clinical.coding`)."""

from __future__ import annotations

import re

import numpy as np

#: kinds of code a mention must give grounds for: (entry test on the description and code, mention words that license it)
FLAGS: tuple[tuple[str, re.Pattern[str], re.Pattern[str]], ...] = (
    ("secondary", re.compile(r"^secondary|secondary malignant"), re.compile(r"secondary|metasta")),
    ("history", re.compile(r"personal history|family history"), re.compile(r"history|h/o|hx")),
    (
        "pregnancy",
        re.compile(r"^O|pregnan|childbirth|puerperium|gestation"),
        re.compile(r"pregnan|gestation|obstetric|labou?r|delivery|abortion|miscarriage|postpartum|puerper|trimester|fetal|prenatal"),
    ),
    ("perinatal", re.compile(r"^P|newborn|neonatal|perinatal"), re.compile(r"newborn|neonat|perinatal|infant|birth")),
    ("congenital", re.compile(r"^Q|congenital"), re.compile(r"congenital|birth defect|inherited")),
    ("pathological", re.compile(r"pathological fracture|with current pathological"), re.compile(r"patholog|osteopor|due to")),
    (
        "encounter",
        re.compile(r"^Z0[0-4]|encounter for (?:screening|observation|examination)"),
        re.compile(r"screen|observation|encounter|exam"),
    ),
    ("elsewhere", re.compile(r"in diseases classified elsewhere"), re.compile(r"elsewhere")),
    ("laterality", re.compile(r"\b(?:right|left|bilateral)\b"), re.compile(r"\b(?:right|left|bilateral|both|rt|lt)\b")),
    (
        "diabetes type",
        re.compile(r"^E(?:08|09|10|13)"),
        re.compile(r"type 1|type i\b|juvenile|drug|chemical|underlying|secondary|other specified"),
    ),
    ("external cause", re.compile(r"^[V-Y]"), re.compile(r"accident|collision|crash|struck|assault|fell|fall from|drown|bitten|bite")),
    (
        "poisoning",
        re.compile(r"^T(?:3[6-9]|4[0-9]|50)|poisoning|underdosing|adverse effect"),
        re.compile(r"poison|overdos|toxic|adverse|underdos"),
    ),
    ("unspecified complications", re.compile(r"with unspecified complications|other specified complication"), re.compile(r"complication")),
)


def entry_flags(codes: list[str] | np.ndarray, texts: list[str]) -> np.ndarray:
    """Per entry, its kinds (bit ``i``: ``FLAGS[i]``'s entry test finds its code or its lower-case text)."""
    flags = np.zeros(len(texts), dtype=np.int64)
    for bit, (_, entry_test, _) in enumerate(FLAGS):
        found = [bool(entry_test.search(code) or entry_test.search(text)) for code, text in zip(codes, texts, strict=True)]
        flags |= np.array(found, dtype=np.int64) << bit
    return flags


def mention_flags(keys: list[str]) -> np.ndarray:
    """Per normalised mention, the kinds it licenses (bit ``i``: ``FLAGS[i]``'s mention test finds it)."""
    licensed = np.zeros(len(keys), dtype=np.int64)
    for bit, (_, _, mention_test) in enumerate(FLAGS):
        licensed |= np.array([bool(mention_test.search(k)) for k in keys], dtype=np.int64) << bit
    return licensed


def unlicensed_kinds(flag_values: np.ndarray, keys: list[str]) -> np.ndarray:
    """``[keys, flag values]``: how many of the kinds each of the entries' distinct ``flag_values`` stands for the
    key gives no grounds for (:func:`mention_flags`)."""
    unlicensed = flag_values[None, :] & ~mention_flags(keys)[:, None]
    counts = np.zeros(unlicensed.shape, dtype=np.float32)
    for bit in range(len(FLAGS)):
        counts += ((unlicensed >> bit) & 1).astype(np.float32)
    return counts
