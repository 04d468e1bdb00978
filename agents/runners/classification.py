"""Document classification: one label distribution per note."""

from __future__ import annotations

import numpy as np

from agents.runners.base import ModelRunner, additive_mask
from agents.runners.columns import TaskColumns
from agents.runners.first_position import with_first_position
from agents.runners.windows import Windows
from schemas.extraction import TaskKind


def merge_window_probabilities(
    probs: list[np.ndarray], weights: np.ndarray | list[int], sample: np.ndarray | list[int], n: int
) -> np.ndarray:
    """A note's distribution: the mean of its windows' distributions, weighted by window length."""
    rows = np.stack(probs).astype(np.float64)
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(sample, dtype=np.int64)
    total = np.zeros((n, rows.shape[-1]), dtype=np.float64)
    np.add.at(total, s, rows * w[:, None])
    weight = np.bincount(s, weights=w, minlength=n)
    return (total / weight[:, None]).astype(np.float32)


class ClassificationRunner(ModelRunner):
    def _first_position_only(self) -> bool:
        """A BERT classifier's last layer for the first position only, the one its pooler reads
        (:mod:`agents.runners.first_position`), checked against the whole model with the runner's own mask."""
        assert self.model is not None
        pruned = with_first_position(self.model, lambda mask: additive_mask(mask, self.dtype) if self.prebuilt_mask else mask)
        if pruned is None:
            return False
        self.model = pruned
        return True

    def columns(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> TaskColumns:
        doc = merge_window_probabilities(probs, windows.lengths, windows.samples, len(texts))
        loaded = self.loaded
        return TaskColumns(self.task, TaskKind.classification, loaded.name, loaded.version, loaded.labels, len(texts), probs=doc)
