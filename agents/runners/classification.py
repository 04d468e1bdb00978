"""Document classification: one label distribution per note."""

from __future__ import annotations

import numpy as np

from agents.runners.base import ModelRunner
from agents.runners.windows import Windows
from agents.types import Decision, TaskOutput
from schemas.extraction import DocumentLabel, TaskKind, TaskResult
from schemas.review_task import ReasonKind


def merge_window_probabilities(probs: list[np.ndarray], weights: list[int], sample: list[int], n: int) -> np.ndarray:
    """A note's distribution: the mean of its windows' distributions, weighted by window length."""
    total = np.zeros((n, probs[0].shape[-1]), dtype=np.float64)
    weight = np.zeros(n, dtype=np.float64)
    for p, w, s in zip(probs, weights, sample, strict=True):
        total[s] += w * p
        weight[s] += w
    return (total / weight[:, None]).astype(np.float32)


class ClassificationRunner(ModelRunner):
    def postprocess(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> list[TaskOutput]:
        labels = self.loaded.labels
        doc = merge_window_probabilities(probs, [len(ids) for ids in windows.input_ids], windows.sample, len(texts))
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
