"""Document classification: one label distribution per note."""

from __future__ import annotations

import numpy as np

from agents.runners.base import ModelRunner
from agents.runners.windows import Windows
from agents.types import Decision, TaskOutput
from schemas.extraction import DocumentLabel, TaskKind, TaskResult
from schemas.review_task import ReasonKind


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
    def postprocess(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> list[TaskOutput]:
        labels = self.loaded.labels
        doc = merge_window_probabilities(probs, windows.lengths, windows.samples, len(texts))
        outputs = []
        for row in doc:
            order = np.argsort(-row, kind="stable")
            ranked = [DocumentLabel(label=labels[i], probability=float(min(1.0, row[i]))) for i in order]
            result = TaskResult(
                task=self.task,
                kind=TaskKind.classification,
                model_name=self.loaded.name,
                model_version=self.loaded.version,
                labels=ranked,
            )
            top = ranked[0]
            outputs.append(TaskOutput(result, [Decision(self.task, ReasonKind.document_label, top.label, top.probability)]))
        return outputs
