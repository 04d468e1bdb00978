"""The batch-wise windows equal the Hugging Face fast tokenizer's own overflowing windows, token for token, on random
texts: multi-byte characters, empty and whitespace-only notes, notes of one window and of many, several sizes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from transformers import AutoTokenizer

from agents.model_dir import DEFAULT_BACKBONE, resolve_base
from agents.runners.windows import TokenCache, Tokenizer, batch_bounds, make_windows, window_bounds, windows_of

ALPHABET = [*"abcdefghij klmnop  qrs\ttuv\nwxyz.,;:-'()0123456789", "é", "ü", "ß", "中", "文", "😀", "Ω", "ﬁ", "\u00a0"]


def _random_texts(rng: random.Random, n: int) -> list[str]:
    texts = ["", "   ", "x"]
    for _ in range(n):
        size = rng.choice([5, 40, 300, 1500])
        texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, size))))
    return texts


def _hf_windows(tokenizer, texts: list[str], max_length: int, stride: int):  # type: ignore[no-untyped-def]
    enc = tokenizer(
        texts, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True
    )
    n = len(enc["input_ids"])
    return (
        enc["input_ids"],
        [[(int(a), int(b)) for a, b in enc["offset_mapping"][i]] for i in range(n)],
        [enc.word_ids(i) for i in range(n)],
        [int(s) for s in enc["overflow_to_sample_mapping"]],
    )


@pytest.mark.parametrize(("max_length", "stride"), [(128, 32), (256, 64), (16, 4), (12, 0)])
def test_batch_windows_equal_the_tokenizers_own_overflow(max_length: int, stride: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_base(DEFAULT_BACKBONE))
    texts = _random_texts(random.Random(max_length * 31 + stride), 40)
    ids, offsets, words, sample = _hf_windows(tokenizer, texts, max_length, stride)
    windows = make_windows(tokenizer, texts, max_length, stride)
    assert windows.sample == sample
    assert windows.input_ids == ids
    assert windows.word_ids == words
    got_offsets = [[(int(a), int(b)) for a, b in windows.offsets[w][: windows.lengths[w]]] for w in range(len(windows))]
    assert got_offsets == offsets
    assert (windows.ids[np.arange(windows.ids.shape[1])[None, :] >= windows.lengths[:, None]] == tokenizer.pad_token_id).all()


def test_ascii_texts_tokenised_without_the_normaliser_equal_the_tokenizers_own() -> None:
    """Texts of every ASCII character (capitals, control characters) and a few others: the same ids, offsets and word
    ids as the backend with its BERT normaliser, whether a batch is all plain ASCII (one call) or mixed."""
    tokenizer = Tokenizer(AutoTokenizer.from_pretrained(resolve_base(DEFAULT_BACKBONE)))
    assert tokenizer.unnormalised is not None and tokenizer.lowercase
    rng = random.Random(11)
    ascii_text = [chr(c) for c in range(128)] + list("ABCDEFGHIJ abcdef  .,") * 6
    texts = ["", "Chest Pain, SOB.", "HbA1c 7.2%; BP 140/90\r\n\tNo DVT."]
    printable = [c for c in ascii_text if c.isprintable() or c in "\t\n\r"]
    for alphabet in [ascii_text, printable] * 30:
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))))
    texts += ["Crohn's Disease", "Ménière's disease", "Fever 38°C", "x\x0by", "TAB\tNUL\x00END"]
    plain = [tokenizer.plain(t) for t in texts]
    assert sum(plain) >= 20 and not all(plain) and not tokenizer.plain("x\x0by") and not tokenizer.plain("Ménière")
    for batch in (texts, [t for t, p in zip(texts, plain, strict=True) if p]):
        want = tokenizer.backend.encode_batch(batch, add_special_tokens=False)
        got = tokenizer.encode(batch)
        assert [e.ids for e in got] == [e.ids for e in want]
        assert [e.offsets for e in got] == [e.offsets for e in want]
        assert [e.word_ids for e in got] == [e.word_ids for e in want]


def test_tasks_with_the_same_tokenizer_share_one_pass() -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_base(DEFAULT_BACKBONE))
    one, two = Tokenizer(tokenizer), Tokenizer(AutoTokenizer.from_pretrained(resolve_base(DEFAULT_BACKBONE)))
    cache = TokenCache(["Chest pain.", "Crohn's disease"])
    assert cache.tokens(one) is cache.tokens(two) and one.fingerprint == two.fingerprint
    small = windows_of(one, cache.tokens(one), 8, 2)
    assert small.sample == [0, 1] and windows_of(two, cache.tokens(two), 128, 32).sample == [0, 1]


def test_window_bounds_cover_every_token_and_refuse_a_stride_as_wide_as_the_window() -> None:
    text, start, end = window_bounds(np.array([0, 5, 6, 7, 20]), content=6, stride=2)
    assert text.tolist() == [0, 1, 2, 3, 3, 4, 4, 4, 4, 4]
    assert list(zip(start.tolist(), end.tolist(), strict=True)) == [
        (0, 0),  # an empty note is one window of special tokens
        (0, 5),
        (0, 6),  # exactly one window's worth
        (0, 6),
        (4, 7),  # overlapping by the stride, the last one ending at the note's end
        (0, 6),
        (4, 10),
        (8, 14),
        (12, 18),
        (16, 20),
    ]
    with pytest.raises(ValueError, match="stride"):
        window_bounds(np.array([3]), content=4, stride=4)


def test_forward_batches_hold_at_most_their_windows_and_padded_tokens_and_are_cut_greedily() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        lengths = np.sort(rng.integers(1, 513, size=int(rng.integers(0, 150))))
        max_windows, max_tokens = int(rng.integers(1, 65)), int(rng.choice([256, 2048, 4096]))
        bounds = batch_bounds(lengths, max_windows, max_tokens)
        assert [a for a, _ in bounds] == [0, *[b for _, b in bounds[:-1]]] and (not bounds or bounds[-1][1] == len(lengths))
        for first, end in bounds:
            size, width = end - first, int(lengths[end - 1])
            assert 1 <= size <= max_windows
            assert size == 1 or size * width <= max_tokens  # a single window wider than the bound still runs
            if end < len(lengths) and size < max_windows:  # greedy: the next window would have broken a bound
                assert (size + 1) * int(lengths[end]) > max_tokens
        plain = batch_bounds(lengths, max_windows, None)
        assert plain == [(a, min(a + max_windows, len(lengths))) for a in range(0, len(lengths), max_windows)]
