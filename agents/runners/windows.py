"""Splitting notes into overlapping model windows (the CPU half of inference).

Nothing is truncated: a note longer than the window becomes several windows that
overlap by ``stride`` tokens, and each window remembers which note it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Windows:
    """Token windows over a batch of texts, in text order."""

    input_ids: list[list[int]]
    #: (start, end) character offsets into the text, per token; (0, 0) for special tokens
    offsets: list[list[tuple[int, int]]]
    #: word index within the text, per token; None for special tokens
    word_ids: list[list[int | None]]
    #: index of the text each window belongs to
    sample: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def make_windows(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, stride: int) -> Windows:
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    n = len(enc["input_ids"])
    return Windows(
        input_ids=enc["input_ids"],
        offsets=[[(int(a), int(b)) for a, b in enc["offset_mapping"][i]] for i in range(n)],
        word_ids=[enc.word_ids(i) for i in range(n)],
        sample=[int(s) for s in enc["overflow_to_sample_mapping"]],
    )
