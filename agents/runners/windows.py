"""Splitting notes into overlapping model windows (the CPU half of inference), as arrays.

Nothing is truncated: a note longer than the window becomes several windows that overlap by ``stride`` tokens, and
each window remembers which note it came from. The windows are exactly those of a Hugging Face fast tokenizer called
with ``truncation=True, max_length, stride, return_overflowing_tokens=True`` (``tests/test_windows.py`` checks it on
random texts), but built batch-wise:

1. :func:`tokenize`: one call of the Rust tokenizer over the whole batch, without special tokens, its ids, character
   offsets and word ids taken as flat numpy arrays (:class:`Tokens`). Tasks whose models share a tokenizer share this
   pass (:class:`TokenCache`), whatever their window sizes. A BERT normaliser costs a third of the call, and on ASCII
   text without control characters it only lower-cases (or does nothing): such texts are lower-cased by Python and
   tokenised without it (:meth:`Tokenizer.encode`), with the same ids, offsets and word ids.
2. :func:`windows_of`: window bounds computed with numpy (content windows of ``max_length`` minus the special tokens,
   starting every ``max_length - specials - stride`` tokens, the last one ending at the note's end), then gathered into
   padded ``[windows, max_length]`` matrices with the tokenizer's special tokens around each window.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding
from tokenizers.normalizers import BertNormalizer
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Tokens:
    """One tokenizer pass over a batch of texts, without special tokens: flat arrays, text ``i`` at
    ``bounds[i]:bounds[i + 1]``."""

    ids: np.ndarray  # int64 [tokens]
    offsets: np.ndarray  # int64 [tokens, 2]: character offsets into the text
    word_ids: np.ndarray  # int64 [tokens]
    bounds: np.ndarray  # int64 [texts + 1]


@dataclass(frozen=True)
class Windows:
    """Token windows over a batch of texts, in text order, as padded matrices (``lengths`` says how much of each row
    is real). Specials and padding have offsets (0, 0) and word id -1."""

    ids: np.ndarray  # int64 [windows, width]
    offsets: np.ndarray  # int64 [windows, width, 2]
    words: np.ndarray  # int64 [windows, width]
    lengths: np.ndarray  # int64 [windows]
    #: index of the text each window belongs to
    samples: np.ndarray  # int64 [windows]
    pad_id: int = 0

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    # the list views, for training and evaluation code that walks windows one by one (not the hot path)
    @property
    def input_ids(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.ids, self.lengths, strict=True)]

    @property
    def word_ids(self) -> list[list[int | None]]:
        return [[None if w < 0 else int(w) for w in row[:n]] for row, n in zip(self.words, self.lengths, strict=True)]

    @property
    def sample(self) -> list[int]:
        return [int(s) for s in self.samples]


#: the ASCII control characters a BERT normaliser's ``clean_text`` removes (tab, line feed and return are white space)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Tokenizer:
    """A model's tokenizer as the windowing needs it: the Rust backend without padding or truncation, and the
    special tokens its post-processor puts before and after one sequence."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        backend = copy.deepcopy(tokenizer.backend_tokenizer)
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a")["input_ids"]
        at = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
        self.prefix = np.asarray(full[:at], dtype=np.int64)
        self.suffix = np.asarray(full[at + len(plain) :], dtype=np.int64)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        #: tokenizers with the same fingerprint tokenise identically, so tasks may share one pass
        self.fingerprint = hashlib.sha1(backend.to_str().encode(), usedforsecurity=False).hexdigest()
        #: the backend without its BERT normaliser, for the texts :meth:`plain` picks (None: no such normaliser)
        self.unnormalised = None
        normaliser = backend.normalizer
        if isinstance(normaliser, BertNormalizer):
            self.unnormalised = copy.deepcopy(backend)
            self.unnormalised.normalizer = None
        self.lowercase = bool(getattr(normaliser, "lowercase", False))
        self._cleans = bool(getattr(normaliser, "clean_text", False))

    def plain(self, text: str) -> bool:
        """Whether the BERT normaliser would only lower-case ``text`` (ASCII: no accents, no CJK characters to space
        out) or leave it as it is (no control characters to remove)."""
        return self.unnormalised is not None and text.isascii() and not (self._cleans and _CONTROL.search(text))

    def encode(self, texts: list[str]) -> list[Encoding]:
        """The backend's encodings of ``texts`` without special tokens; :meth:`plain` texts lower-cased here and
        tokenised without the normaliser (one call for the batch when all are)."""
        if self.unnormalised is None:
            return list(self.backend.encode_batch(texts, add_special_tokens=False))
        plain = [self.plain(text) for text in texts]
        encoded: dict[int, Encoding] = {}
        for wanted, backend in ((True, self.unnormalised), (False, self.backend)):
            indices = [i for i, p in enumerate(plain) if p is wanted]
            if indices:
                chosen = [texts[i].lower() if wanted and self.lowercase else texts[i] for i in indices]
                encoded.update(zip(indices, backend.encode_batch(chosen, add_special_tokens=False), strict=True))
        return [encoded[i] for i in range(len(texts))]


def tokenize(tokenizer: Tokenizer, texts: list[str]) -> Tokens:
    encodings = tokenizer.encode(texts)
    counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    bounds = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    total = int(bounds[-1])
    # each encoding's lists read straight into one array per field (no array per note, no list of pairs to convert)
    flat = itertools.chain.from_iterable
    ids = np.fromiter(flat(e.ids for e in encodings), dtype=np.int64, count=total)
    offsets = np.fromiter(flat(flat(e.offsets for e in encodings)), dtype=np.int64, count=2 * total).reshape(total, 2)
    words = np.fromiter(flat(e.word_ids for e in encodings), dtype=np.int64, count=total)
    return Tokens(ids, offsets, words, bounds)


def window_bounds(counts: np.ndarray, content: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text, first token, end token) of every window, in text order: windows of ``content`` tokens starting every
    ``content - stride`` tokens until one reaches the text's end; a text of at most ``content`` tokens (or none) is
    one window."""
    step = content - stride
    if step <= 0:
        raise ValueError(f"stride {stride} must be smaller than the window's {content} content tokens")
    per_text = np.where(counts <= content, 1, 1 + np.ceil(np.maximum(counts - content, 0) / step).astype(np.int64))
    text = np.repeat(np.arange(len(counts), dtype=np.int64), per_text)
    first_window = np.repeat(np.cumsum(per_text) - per_text, per_text)
    start = (np.arange(len(text), dtype=np.int64) - first_window) * step
    end = np.minimum(start + content, counts[text])
    return text, start, end


def windows_of(tokenizer: Tokenizer, tokens: Tokens, max_length: int, stride: int) -> Windows:
    """The padded windows of a tokenised batch (see the module's docstring)."""
    n_prefix, n_suffix = len(tokenizer.prefix), len(tokenizer.suffix)
    content = max_length - n_prefix - n_suffix
    counts = np.diff(tokens.bounds)
    text, start, end = window_bounds(counts, content, stride)
    sizes = end - start
    lengths = sizes + n_prefix + n_suffix
    width = int(lengths.max()) if len(lengths) else n_prefix + n_suffix
    n = len(text)
    ids = np.full((n, width), tokenizer.pad_id, dtype=np.int64)
    offsets = np.zeros((n, width, 2), dtype=np.int64)
    words = np.full((n, width), -1, dtype=np.int64)
    ids[:, :n_prefix] = tokenizer.prefix
    # every content token of every window at once: (window, column) <- flat token index
    column = np.arange(width - n_prefix, dtype=np.int64)
    inside = column[None, :] < sizes[:, None]
    rows, cols = np.nonzero(inside)
    source = tokens.bounds[text[rows]] + start[rows] + cols
    ids[rows, cols + n_prefix] = tokens.ids[source]
    offsets[rows, cols + n_prefix] = tokens.offsets[source]
    words[rows, cols + n_prefix] = tokens.word_ids[source]
    if n_suffix:
        tail = (sizes + n_prefix)[:, None] + np.arange(n_suffix, dtype=np.int64)[None, :]
        ids[np.arange(n)[:, None], tail] = tokenizer.suffix[None, :]
    return Windows(ids, offsets, words, lengths, text, tokenizer.pad_id)


def batch_bounds(lengths: np.ndarray, max_windows: int, max_tokens: int | None) -> list[tuple[int, int]]:
    """Where to cut windows sorted by ascending length into forward batches: ``[first, end)`` pairs, in order, each as
    long as both limits allow (a batch of ``n`` windows costs ``n * width`` padded tokens, ``width`` its last window's
    length) and at least one window long. Bounding the padded tokens keeps batches of long windows small, where padding
    and attention cost most, and lets short windows share one call. One numpy search per batch."""
    n = len(lengths)
    if max_tokens is None:
        return [(first, min(first + max_windows, n)) for first in range(0, n, max_windows)]
    cost = lengths.astype(np.int64)
    out = []
    first = 0
    while first < n:
        ahead = cost[first : first + max_windows]
        padded = np.arange(1, len(ahead) + 1, dtype=np.int64) * ahead  # non-decreasing: widths never shrink
        size = max(1, int(np.searchsorted(padded, max_tokens, side="right")))
        out.append((first, first + size))
        first += size
    return out


def sorted_batches(windows: Windows, max_windows: int, max_tokens: int | None) -> list[np.ndarray]:
    """The windows' indices in forward batches: sorted by length, cut by :func:`batch_bounds`."""
    order = np.argsort(windows.lengths, kind="stable")
    return [order[first:end] for first, end in batch_bounds(windows.lengths[order], max_windows, max_tokens)]


def padded(windows: Windows, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A batch of windows as ``[batch, width]`` token ids and a 0/1 mask, ``width`` its longest window's length."""
    lengths = windows.lengths[idx]
    width = int(lengths.max())
    ids = np.ascontiguousarray(windows.ids[idx, :width])
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return ids, mask


def put_back(out: list[np.ndarray], values: np.ndarray, idx: np.ndarray, lengths: np.ndarray) -> None:
    """A batch's outputs into ``out`` in window order: per token (``[batch, width, ...]``) each window's real tokens,
    per window (``[batch, ...]``) its row."""
    if values.ndim == 3:
        for row, i in enumerate(idx.tolist()):
            out[i] = values[row, : lengths[i]]
    else:
        for row, i in enumerate(idx.tolist()):
            out[i] = values[row]


class TokenCache:
    """One tokenizer pass per batch and tokenizer fingerprint: tasks that share a tokenizer share the pass."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self._passes: dict[str, Tokens] = {}

    def tokens(self, tokenizer: Tokenizer) -> Tokens:
        found = self._passes.get(tokenizer.fingerprint)
        if found is None:
            found = self._passes[tokenizer.fingerprint] = tokenize(tokenizer, self.texts)
        return found


def make_windows(tokenizer: PreTrainedTokenizerBase | Tokenizer, texts: list[str], max_length: int, stride: int) -> Windows:
    """The windows of ``texts`` (one tokenizer pass)."""
    prepared = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
    return windows_of(prepared, tokenize(prepared, texts), max_length, stride)
