"""Each mention's best codes without scoring every entry of the index exactly.

A mention's score against an entry is ``EMBEDDING_WEIGHT * meaning + (1 - EMBEDDING_WEIGHT) * wording - PENALTY *
penalties + prior`` (:mod:`agents.clinical.coding`). Scoring all 61,167 entries exactly costs a float32 product with
the whole index and five passes over ``[mentions, entries]`` arrays per block of mentions. The coder scores exactly
only where it can matter:

1. **bound**: the meaning part from a product in bf16 on a CPU that multiplies it natively, whatever the encoder ran
   in (a quarter of the float32 product's CPU on the AMX host, docs/performance/hot-path.md), else in float32, plus
   the wording part; no penalty (it only lowers a score) and
   no prior (at most ``prior.max()``);
2. the :data:`CANDIDATES` best entries by that bound are scored exactly (float32 meaning from their own index rows);
3. any other entry scores at most the last candidate's bound, plus ``prior.max()``, plus how far the product's
   rounding can move it (:func:`product_slack`). The candidates scoring above that *floor* are exactly the top of the
   ranking of every entry: when they hold the best ``TOP`` distinct codes, those are the answer. Otherwise (a vague
   mention whose best entries lie close together), the mention is scored against every entry exactly, as a mention
   whose words are an entry's always is (it needs no product: its meaning score is its word score).

The ranking is by score, highest first, then by entry order, so ties (entries a mention matches word for word) are
broken the same way every time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: entries scored exactly per mention, the best by the bound: of the 1,053 embedded mentions of 300 bench notes, 128
#: leave none to the exhaustive score (64: two) and cost least here (docs/performance/hot-path.md, "seventh session")
CANDIDATES = 128
#: an exhaustive ranking sorts only the entries scoring at least the POOL-th best score (all of them when those hold
#: fewer than the codes wanted)
POOL = 64


def product_slack(precision: str) -> float:
    """How far a product of unit vectors in ``precision`` can be from float32's. bf16: the query and the index each
    rounded to 8 significant bits (2**-9 relative at most, so 2**-8 for their product, summed over the terms: at most
    2**-8 by Cauchy-Schwarz), and the product itself rounded the same way (2**-9); with 1% for the index's own rounding
    to float16 and 1e-5 for float32 sums in another order. ``tf32``: a float32 product on a GPU, which the process may
    let torch compute from inputs rounded to 11 significant bits (2**-10 for their product), kept in float32."""
    if precision == "bf16":
        return (2**-8 + 2**-9) * 1.01 + 1e-5
    if precision == "tf32":
        return 2**-10 * 1.01 + 1e-5
    return 1e-5


def bound_index(embeddings: np.ndarray, device: Any) -> tuple[Any, str]:
    """The index the bound multiplies mentions with, and the precision of that product (:func:`product_slack`). On a
    CPU: bf16 where the CPU multiplies it natively (a quarter of float32's CPU on the AMX host; the slack keeps the
    codes exact whatever the mentions were embedded in), else the float32 index itself. On a GPU: the float32 index
    there (a few ms for a whole batch of mentions; a bf16 product there may also sum in bf16, which no slack here
    covers)."""
    import torch

    from agents.runners.precision import native_bf16

    exact = torch.from_numpy(embeddings)
    if device.type != "cpu":
        return exact.to(device), "tf32"
    return (exact.to(torch.bfloat16), "bf16") if native_bf16() else (exact, "none")


def ranked_codes(score: np.ndarray, entries: np.ndarray, codes: np.ndarray, top: int) -> list[tuple[str, float]]:
    """The first ``top`` distinct codes (fewer when ``entries`` hold fewer) of ``entries`` ranked by ``score``
    (highest first, then by entry)."""
    found: list[tuple[str, float]] = []
    seen: set[str] = set()
    for j in np.lexsort((entries, -score)).tolist():
        code = str(codes[entries[j]])
        if code not in seen:
            seen.add(code)
            found.append((code, float(score[j])))
            if len(found) == top:
                break
    return found


def best_above(score: np.ndarray, entries: np.ndarray, floor: float, codes: np.ndarray, top: int) -> list[tuple[str, float]] | None:
    """The best ``top`` codes of the whole ranking, known from ``entries`` (their exact ``score``) when every other
    entry scores at most ``floor``; None when the entries above ``floor`` hold fewer than ``top`` codes."""
    above = score > floor
    found = ranked_codes(score[above], entries[above], codes, top)
    return found if len(found) == top else None


def best_of_all(score: np.ndarray, codes: np.ndarray, top: int) -> list[tuple[str, float]]:
    """The best ``top`` codes of one mention's exact scores against every entry."""
    n = len(score)
    if n > POOL:
        pool = np.nonzero(score >= np.partition(score, n - POOL)[n - POOL])[0]  # every entry tied with the last kept
        found = ranked_codes(score[pool], pool, codes, top)
        if len(found) == top:
            return found
    return ranked_codes(score, np.arange(n), codes, top)


def candidates(bound: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[mentions, k]`` entries with the highest ``bound`` (a torch tensor ``[mentions, entries]``), and per mention
    the bound of its last candidate: every other entry's bound is at most that."""
    import torch

    from agents.runners.device import wait_for_device

    values, index = torch.topk(bound, min(k, bound.shape[1]), dim=1)
    wait_for_device(bound.device)
    return index.cpu().numpy(), values[:, -1].cpu().numpy()
