"""What ``ehrstream simulate`` prints and draws: a table of the rounds and three PNG plots, promotions marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLUMNS = ("round", "notes_seen", "reviewed", "review_rate", "dev_f1", "precision_estimate", "estimate_lower", "estimate_upper",
           "audit_estimate", "audited_items", "auto_precision_true", "candidate", "promoted")  # fmt: skip


def table(rounds: list[dict[str, Any]]) -> str:
    rows = [[("" if r[c] is None else str(r[c])) for c in COLUMNS] for r in rounds]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _promotions(ax: Any, rounds: list[dict[str, Any]], x: str) -> None:
    for r in rounds:
        if r["promoted"]:
            ax.axvline(r[x], color="grey", linestyle=":", linewidth=1)


def plots(summary: dict[str, Any], out: Path) -> list[Path]:
    """review_rate.png (over the stream), dev_f1.png (against reviewed notes), precision.png (estimate with its
    interval against the truth); dotted lines mark promotions."""
    rounds, title = summary["rounds"], f"{summary['strategy']}: "
    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, x, series, ylabel in (
        ("review_rate.png", "notes_seen", [("review_rate", "notes with a flagged item")], "share of notes"),
        ("dev_f1.png", "reviewed", [("dev_f1", "live model, strict span F1 on --dev")], "F1"),
        (
            "precision.png",
            "notes_seen",
            [("precision_estimate", "live estimate"), ("audit_estimate", "audits only"), ("auto_precision_true", "true (gold)")],
            "precision",
        ),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for key, label in series:
            points = [(r[x], r[key]) for r in rounds if r[key] is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        if name == "precision.png":
            band = [(r[x], r["estimate_lower"], r["estimate_upper"]) for r in rounds if r["estimate_lower"] is not None]
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], alpha=0.2, label="95% interval")
        _promotions(ax, rounds, x)
        ax.set_xlabel("notes streamed" if x == "notes_seen" else "notes reviewed")
        ax.set_ylabel(ylabel)
        ax.set_title(title + ylabel + " (dotted: promotions)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        drawn.append(out / name)
    return drawn
