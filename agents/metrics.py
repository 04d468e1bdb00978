"""Scores for classification (macro-F1, accuracy) and NER (strict span P/R/F1)."""

from __future__ import annotations

from collections.abc import Sequence


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def classification_scores(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, object]:
    per_label = {}
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p != label)
        p, r, f = _prf(tp, fp, fn)
        per_label[label] = {"precision": p, "recall": r, "f1": f, "support": tp + fn}
    n = len(gold)
    macro = {k: sum(v[k] for v in per_label.values()) / len(labels) for k in ("precision", "recall", "f1")}
    return {
        "n": n,
        "accuracy": sum(1 for g, p in zip(gold, pred, strict=True) if g == p) / n if n else 0.0,
        "f1": macro["f1"],
        "precision": macro["precision"],
        "recall": macro["recall"],
        "per_label": per_label,
    }


Spans = Sequence[tuple[int, int, str]]


def span_scores(gold: Sequence[Spans], pred: Sequence[Spans]) -> dict[str, object]:
    """Strict match: same start, end and label. Micro-averaged over all mentions."""
    tp = fp = fn = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(g), set(p)
        tp += len(gs & ps)
        fp += len(ps - gs)
        fn += len(gs - ps)
    precision, recall, f1 = _prf(tp, fp, fn)
    return {"n": len(gold), "f1": f1, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn}
