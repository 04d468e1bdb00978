"""What a model (and a threshold) will do, in numbers: scores, calibration, the review trade-off.

* classification: accuracy (= micro-F1), macro and per-label P/R/F1, a confusion matrix;
* NER: strict (same start, end, label) and overlap (same label, any shared character)
  P/R/F1, micro and per label, and a label confusion matrix with ``O`` for missed/spurious;
* calibration: expected calibration error (15 equal-width bins) and the reliability bins;
* the review trade-off: for each threshold, the share of notes routed to review and the
  precision of what would be auto-accepted (top-label accuracy for classification, strict
  span precision for NER), with the same routing rule the worker uses
  (``streams.routing``: a note is auto-accepted only when every decision clears it).

``fit_temperature`` and ``choose_thresholds`` are what ``ehrstream calibrate`` runs on a dev split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.learning.datasets import ClassificationExample, Example, NerExample
from agents.runners import ModelRunner
from agents.runners.base import softmax
from agents.runners.classification import merge_window_probabilities
from agents.runners.ner import word_probabilities
from agents.runners.spans import TagScheme
from agents.runners.windows import Windows
from agents.types import TaskOutput
from schemas.extraction import TaskKind
from schemas.review_task import ReasonKind

#: a threshold must rest on at least this many auto-accepted notes, else the task (or label) is always reviewed
MIN_LABEL_SUPPORT = 20
THRESHOLDS = [round(t, 2) for t in np.arange(0.0, 1.0, 0.01)] + [0.995, 0.999]
Span = tuple[int, int, str]


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error and reliability bins of (confidence, was-it-right) pairs."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows, ece = [], 0.0
    n = len(confidence)
    for i in range(bins):
        mask = (confidence > edges[i]) & (confidence <= edges[i + 1]) if i else (confidence >= 0) & (confidence <= edges[1])
        count = int(mask.sum())
        if count:
            acc, conf = float(correct[mask].mean()), float(confidence[mask].mean())
            ece += count / n * abs(acc - conf)
            rows.append({"low": float(edges[i]), "high": float(edges[i + 1]), "count": count, "accuracy": acc, "confidence": conf})
    return {"ece": ece if n else 0.0, "bins": rows}


@dataclass
class Run:
    """A model's raw outputs over labelled examples, kept so thresholds and temperatures can be replayed cheaply."""

    runner: ModelRunner
    examples: list[Example]
    windows: Windows
    logits: list[np.ndarray]

    @classmethod
    def of(cls, runner: ModelRunner, examples: Sequence[Example]) -> Run:
        windows = runner.preprocess([ex.text for ex in examples])
        return cls(runner, list(examples), windows, runner.window_logits(windows, progress=True))

    def outputs(self, temperature: float | None = None) -> list[TaskOutput]:
        t = self.runner.loaded.temperature if temperature is None else temperature
        probs = [softmax(x / t) for x in self.logits]
        return self.runner.postprocess([ex.text for ex in self.examples], self.windows, probs)

    def nll(self, temperature: float) -> float:
        """Mean negative log-likelihood of the gold labels (documents, or words for NER)."""
        probs = [softmax(x / temperature) for x in self.logits]
        if self.runner.loaded.kind is TaskKind.classification:
            doc = merge_window_probabilities(probs, self.windows.lengths, self.windows.samples, len(self.examples))
            index = {label: i for i, label in enumerate(self.runner.loaded.labels)}
            gold = [index[ex.label] for ex in self.examples if isinstance(ex, ClassificationExample)]
            return float(-np.log(np.clip(doc[np.arange(len(gold)), gold], 1e-12, 1.0)).mean())
        index = {label: i for i, label in enumerate(self.runner.loaded.labels)}
        losses: list[float] = []
        for ex, (starts, _ends, word_probs) in zip(self.examples, word_probabilities(self.windows, probs, len(self.examples)), strict=True):
            assert isinstance(ex, NerExample)
            for w, start in enumerate(starts):
                tag = word_tag(start, ex.spans)
                if tag in index:
                    losses.append(-float(np.log(max(word_probs[w, index[tag]], 1e-12))))
        return float(np.mean(losses)) if losses else 0.0


def word_tag(start: int, spans: Sequence[Span]) -> str:
    for span_start, span_end, label in spans:
        if start == span_start:
            return f"B-{label}"
        if span_start < start < span_end:
            return f"I-{label}"
    return "O"


def fit_temperature(run: Run) -> float:
    """The temperature minimising the dev NLL (grid over 0.25-5, then refined)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(5.0), 41))
    best = float(min(grid, key=run.nll))
    fine = np.linspace(best * 0.9, best * 1.1, 21)
    return round(float(min(fine, key=run.nll)), 4)


# --- reports -----------------------------------------------------------------------------------


def classification_report(examples: Sequence[Example], outputs: Sequence[TaskOutput], labels: list[str]) -> dict[str, Any]:
    gold = [ex.label for ex in examples if isinstance(ex, ClassificationExample)]
    pred = [out.result.labels[0].label for out in outputs]
    conf = np.array([out.result.labels[0].probability for out in outputs], dtype=np.float64)
    correct = np.array([g == p for g, p in zip(gold, pred, strict=True)])
    per_label = {}
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label == p)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if p == label != g)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == label != p)
        per_label[label] = {**_prf(tp, fp, fn), "support": tp + fn}
    macro = {k: float(np.mean([v[k] for v in per_label.values()])) for k in ("precision", "recall", "f1")}
    accuracy = float(correct.mean()) if len(correct) else 0.0
    curve = []
    for t in THRESHOLDS:
        auto = conf >= t
        curve.append(
            {
                "threshold": t,
                "review_share": float(1 - auto.mean()),
                "auto_precision": float(correct[auto].mean()) if auto.any() else None,
                "auto_notes": int(auto.sum()),
            }
        )
    return {
        "kind": "classification",
        "n": len(gold),
        "f1": macro["f1"],
        "precision": macro["precision"],
        "recall": macro["recall"],
        "accuracy": accuracy,
        "micro": {"precision": accuracy, "recall": accuracy, "f1": accuracy},
        "macro": macro,
        "per_label": per_label,
        "confusion": {
            "labels": labels,
            "matrix": [[sum(1 for g, p in zip(gold, pred, strict=True) if g == a and p == b) for b in labels] for a in labels],
        },
        "calibration": calibration(conf, correct),
        "tradeoff": curve,
    }


def _overlaps(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def ner_report(examples: Sequence[Example], outputs: Sequence[TaskOutput], labels: list[str], guard: float = 0.0) -> dict[str, Any]:
    types = TagScheme(labels).types
    gold = [list(ex.spans) for ex in examples if isinstance(ex, NerExample)]
    pred = [[(e.start, e.end, e.label) for e in out.result.entities] for out in outputs]

    def score(match: str, only: str | None = None) -> dict[str, float]:
        tp = fp = fn = 0
        for g, p in zip(gold, pred, strict=True):
            g = [s for s in g if only is None or s[2] == only]
            p = [s for s in p if only is None or s[2] == only]
            if match == "strict":
                gs, ps = set(g), set(p)
                tp, fp, fn = tp + len(gs & ps), fp + len(ps - gs), fn + len(gs - ps)
            else:
                tp += sum(1 for s in p if any(_overlaps(s, t) and s[2] == t[2] for t in g))
                fp += sum(1 for s in p if not any(_overlaps(s, t) and s[2] == t[2] for t in g))
                fn += sum(1 for t in g if not any(_overlaps(s, t) and s[2] == t[2] for s in p))
        return {**_prf(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn}

    strict, overlap = score("strict"), score("overlap")
    per_label = {t: {"strict": score("strict", t), "overlap": score("overlap", t)} for t in types}
    macro = {k: float(np.mean([v["strict"][k] for v in per_label.values()])) if per_label else 0.0 for k in ("precision", "recall", "f1")}
    names = [*types, "O"]
    matrix = [[0] * len(names) for _ in names]
    for g, p in zip(gold, pred, strict=True):
        for t in g:
            hit = next((s for s in p if _overlaps(s, t)), None)
            matrix[names.index(t[2])][names.index(hit[2] if hit else "O")] += 1
        for s in p:
            if not any(_overlaps(s, t) for t in g):
                matrix[names.index("O")][names.index(s[2])] += 1
    conf = np.array([e.confidence for out in outputs for e in out.result.entities], dtype=np.float64)
    correct = np.array([(e.start, e.end, e.label) in set(g) for out, g in zip(outputs, gold, strict=True) for e in out.result.entities])
    curve = ner_tradeoff(outputs, gold, guard=guard)
    return {
        "kind": "ner",
        "n": len(gold),
        "f1": strict["f1"],
        "precision": strict["precision"],
        "recall": strict["recall"],
        "strict": strict,
        "overlap": overlap,
        "macro": macro,
        "per_label": per_label,
        "confusion": {"labels": names, "matrix": matrix},
        "calibration": calibration(conf, correct),
        "tradeoff": curve,
    }


def ner_tradeoff(
    outputs: Sequence[TaskOutput], gold: Sequence[Sequence[Span]], only: str | None = None, guard: float = 0.0
) -> list[dict[str, Any]]:
    """Per threshold: review share of notes, and strict span precision of the auto-accepted notes.

    The threshold applies to entity decisions; "possible missed entity" decisions are held to the
    fixed recall guard ``guard`` (the task's ``possible_entity_threshold``), as the worker does.
    ``only`` restricts both the decisions and the spans to one entity type (per-label thresholds).
    """
    curve = []
    for t in THRESHOLDS:
        auto = [
            all(
                d.confidence >= (guard if d.kind is ReasonKind.possible_entity else t)
                for d in out.decisions
                if only is None or d.label == only
            )
            for out in outputs
        ]
        tp = n_pred = 0
        for accepted, out, g in zip(auto, outputs, gold, strict=True):
            if accepted:
                spans = {(e.start, e.end, e.label) for e in out.result.entities if only is None or e.label == only}
                tp += len(spans & set(g))
                n_pred += len(spans)
        curve.append(
            {
                "threshold": t,
                "review_share": 1 - float(np.mean(auto)) if auto else 0.0,
                "auto_precision": tp / n_pred if n_pred else None,
                "auto_notes": int(sum(auto)),
            }
        )
    return curve


def _least_review(curve: list[dict[str, Any]], target: float) -> tuple[dict[str, Any], bool]:
    feasible = [
        row
        for row in curve
        if row["auto_precision"] is not None and row["auto_precision"] >= target and row["auto_notes"] >= MIN_LABEL_SUPPORT
    ]
    return (feasible[0], True) if feasible else (curve[-1], False)


def report(run: Run, temperature: float | None = None, guard: float = 0.0) -> dict[str, Any]:
    """The full report; ``guard`` is the NER recall-guard threshold used in the trade-off curve."""
    outputs = run.outputs(temperature)
    loaded = run.runner.loaded
    if loaded.kind is TaskKind.ner:
        return ner_report(run.examples, outputs, loaded.labels, guard)
    return classification_report(run.examples, outputs, loaded.labels)


def choose_thresholds(run: Run, target_precision: float, temperature: float, guard: float = 0.0) -> dict[str, Any]:
    """The least-review threshold whose auto-accepted precision reaches the target, per task and per label.

    Task threshold: on the trade-off curve, the lowest threshold with auto-accept precision >= target.
    Per label, the same rule over that label alone: for classification, the notes whose top label it
    is; for NER, the decisions and spans of that entity type. An easy label is then not held to a
    hard label's threshold. A classification label whose threshold would rest on fewer than
    ``MIN_LABEL_SUPPORT`` notes gets the strictest threshold (always reviewed) instead.
    """
    outputs = run.outputs(temperature)
    rep = report(run, temperature, guard)
    task_row, reached = _least_review(rep["tradeoff"], target_precision)
    per_label: dict[str, float] = {}
    if run.runner.loaded.kind is TaskKind.ner:
        gold = [list(ex.spans) for ex in run.examples if isinstance(ex, NerExample)]
        for label in TagScheme(run.runner.loaded.labels).types:
            per_label[label] = _least_review(ner_tradeoff(outputs, gold, only=label, guard=guard), target_precision)[0]["threshold"]
    else:
        pairs = [
            (out.result.labels[0], ex.label) for out, ex in zip(outputs, run.examples, strict=True) if isinstance(ex, ClassificationExample)
        ]
        for label in run.runner.loaded.labels:
            mine = [(top.probability, top.label == gold) for top, gold in pairs if top.label == label]
            per_label[label] = THRESHOLDS[-1]
            for t in THRESHOLDS:
                kept = [ok for p, ok in mine if p >= t]
                if len(kept) >= MIN_LABEL_SUPPORT and float(np.mean(kept)) >= target_precision:
                    per_label[label] = t
                    break
    return {
        "threshold": task_row["threshold"],
        "review_share": task_row["review_share"],
        "auto_precision": task_row["auto_precision"],
        "reached_target": reached,
        "label_thresholds": per_label,
    }
