"""Each mention's best codes without scoring every entry of the index exactly.

A mention's score against an entry is ``EMBEDDING_WEIGHT * meaning + (1 - EMBEDDING_WEIGHT) * wording - PENALTY *
penalties + prior`` (:mod:`agents.clinical.coding`). Scoring all 61,167 entries exactly costs a float32 product with
the whole index and five passes over ``[mentions, entries]`` arrays per block of mentions. The coder scores exactly
only where it can matter:

1. **bound**: the meaning part from an approximate product (:func:`bound_product`: int8 on a CPU, tf32 on a GPU),
   plus the wording part; no penalty (it only lowers a score) and no prior (at most ``prior.max()``);
2. the :data:`CANDIDATES` best entries by that bound are scored exactly (float32 meaning from their own index rows);
3. any other entry scores at most the last candidate's bound, plus ``prior.max()``, plus how far the product's
   rounding can move it (each product gives that per mention). The candidates scoring above that *floor* are exactly the top of the
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


#: what a tf32 product on a GPU can be off by: inputs the process may let torch round to 11 significant bits (2**-10
#: for their product, summed over the terms: at most 2**-10 by Cauchy-Schwarz), kept in float32
TF32_SLACK = 2**-10 * 1.01 + 1e-5


class Int8Product:
    """The bound's product on a CPU: ONNX Runtime's ``MatMulIntegerToFloat`` over the index quantised to int8 once, row
    by row (each row's largest magnitude to 127), with the queries quantised per call (the batch's largest to 127). On the
    Zen 4 EPYC, one thread: 1.7 ms for 5 mentions against bf16's 6.2, 24 against 71 for 200 (the whole index is read
    for each call, and int8 halves it; docs/performance/hot-path.md, "twenty-second session").

    What it can be off by is exact, per mention: ``q·e - q̂·ê = (q - q̂)·e + q̂·(e - ê)``, so at most
    ``|q - q̂| max|e| + |q̂| max|e - ê|``, the norms of the query's own rounding and of the rounded query, with the
    index's largest norm and largest rounding (computed once). Anything ONNX Runtime's float32 scaling adds is far below
    the ``1e-5`` added to it.

    Without int8 dot-product instructions (VNNI) ONNX Runtime multiplies uint8 by int8 with 16-bit multiply-adds that
    saturate at 32,767, and two products of 255 and 127 exceed it; there the index keeps 63 levels a side (255 * 63 * 2
    is 32,130), which doubles its rounding and the slack with it, but never the answer (``index_levels`` chooses)."""

    def __init__(self, embeddings: np.ndarray, threads: int = 1, index_levels: int | None = None) -> None:
        from onnx import TensorProto, helper, numpy_helper

        from agents.runners.onnx_int8 import cpu_session
        from agents.runners.precision import native_int8

        top = index_levels or (127 if native_int8() else 63)
        exact = embeddings.astype(np.float64)
        steps = (np.abs(exact).max(axis=1) / top).astype(np.float32)
        steps[steps == 0] = 1.0  # an all-zero row stays zero
        levels = np.clip(np.rint(exact / steps[:, None]), -top, top)
        self.index_error = float(np.sqrt(((exact - levels * steps[:, None].astype(np.float64)) ** 2).sum(axis=1)).max())
        self.index_norm = float(np.sqrt((exact**2).sum(axis=1)).max())
        entries, dim = embeddings.shape
        graph = helper.make_graph(
            [helper.make_node("MatMulIntegerToFloat", ["queries", "index", "step", "steps", "zero"], ["product"], domain="com.microsoft")],
            "bound",
            [
                helper.make_tensor_value_info("queries", TensorProto.UINT8, [None, dim]),
                helper.make_tensor_value_info("step", TensorProto.FLOAT, []),
            ],
            [helper.make_tensor_value_info("product", TensorProto.FLOAT, [None, entries])],
            initializer=[
                numpy_helper.from_array(np.ascontiguousarray(levels.astype(np.int8).T), "index"),
                numpy_helper.from_array(steps, "steps"),
                numpy_helper.from_array(np.array(128, dtype=np.uint8), "zero"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
        self._session = cpu_session(model.SerializeToString(), threads)

    def __call__(self, queries: np.ndarray) -> tuple[Any, np.ndarray]:
        """``([mentions, entries]`` float32 torch tensor, per mention how far it can be from the exact product)."""
        import torch

        exact = queries.astype(np.float64)
        top = float(np.abs(exact).max()) if exact.size else 0.0
        step = np.float32(top / 127 if top > 0 else 1.0)
        levels = np.clip(np.rint(exact / float(step)), -127, 127)
        rounded = levels * float(step)
        slack = np.sqrt(((exact - rounded) ** 2).sum(axis=1)) * self.index_norm + np.sqrt((rounded**2).sum(axis=1)) * self.index_error
        (product,) = self._session.run(None, {"queries": (levels + 128).astype(np.uint8), "step": np.asarray(step)})
        return torch.from_numpy(product), slack + 1e-5


class DeviceProduct:
    """The bound's product on a GPU: the float32 index there (a few ms for a whole batch of mentions; a bf16 product
    there may also sum in bf16, which no slack here covers)."""

    def __init__(self, embeddings: np.ndarray, device: Any) -> None:
        import torch

        self.index = torch.from_numpy(embeddings).to(device)

    def __call__(self, queries: np.ndarray) -> tuple[Any, np.ndarray]:
        import torch

        return torch.from_numpy(queries).to(self.index.device) @ self.index.T, np.full(len(queries), TF32_SLACK)


def bound_product(embeddings: np.ndarray, device: Any) -> Int8Product | DeviceProduct:
    """The bound's product where the coder's encoder runs (on a CPU with the worker's torch thread budget, as the
    encoder's own session)."""
    import torch

    return Int8Product(embeddings, torch.get_num_threads()) if device.type == "cpu" else DeviceProduct(embeddings, device)


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
