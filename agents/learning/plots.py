"""PNG plots a person can open: reliability diagram, confusion matrix, review trade-off, data efficiency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def reliability_diagram(report: dict[str, Any], path: Path, title: str) -> Path:
    bins = report["calibration"]["bins"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=1 / 15, alpha=0.7, edgecolor="black", label="accuracy in bin")
    ax.plot(
        [b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color="C1", label="(mean confidence, accuracy) per bin"
    )
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{title}\nECE {report['calibration']['ece']:.3f}")
    ax.legend(loc="upper left")
    return _save(fig, path)


def confusion_matrix(report: dict[str, Any], path: Path, title: str) -> Path:
    labels, matrix = report["confusion"]["labels"], report["confusion"]["matrix"]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    return _save(fig, path)


def tradeoff_curve(report: dict[str, Any], path: Path, title: str, chosen: float | None = None) -> Path:
    rows = [r for r in report["tradeoff"] if r["auto_precision"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([r["review_share"] for r in rows], [r["auto_precision"] for r in rows], marker=".", label="threshold 0 → 0.999")
    if chosen is not None:
        row = min(report["tradeoff"], key=lambda r: abs(r["threshold"] - chosen))
        if row["auto_precision"] is not None:
            ax.scatter([row["review_share"]], [row["auto_precision"]], color="C3", zorder=3, s=60, label=f"threshold {chosen:.2f}")
    ax.set(xlabel="share of notes routed to review", ylabel="precision of auto-accepted", title=title, xlim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def data_efficiency(points: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, series in points.items():
        ax.plot([n for n, _ in series], [f for _, f in series], marker="o", label=name)
    ax.set_xscale("log")
    ax.set(xlabel="training examples", ylabel="F1 on the test split", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
