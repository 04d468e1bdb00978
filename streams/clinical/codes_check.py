"""Scoring the ICD-10-CM coder on a mapping set: a TSV of mentions (column ``mention``, or ``display`` as in the
Synthea mapping) and their ICD-10-CM codes (column ``icd10cm``; ``-`` where no code applies: left out)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from agents.clinical.coding import Icd10Coder


def evaluate_codes(coder: Icd10Coder, path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["icd10cm"] != "-"]
    column = "mention" if "mention" in rows[0] else "display"
    mentions = [r[column] for r in rows]
    started = time.perf_counter()
    found = coder.candidates(mentions)
    seconds = time.perf_counter() - started
    top = [f[0]["code"] if f else "" for f in found]
    gold = [r["icd10cm"] for r in rows]
    category = sum(t[:3] == g[:3] for t, g in zip(top, gold, strict=True))
    full = sum(t == g for t, g in zip(top, gold, strict=True))
    in_top3 = sum(g in [c["code"] for c in f] for f, g in zip(found, gold, strict=True))
    wrong = [
        {"mention": m, "want": g, "got": t, "score": f[0]["score"] if f else None}
        for m, g, t, f in zip(mentions, gold, top, found, strict=True)
        if t[:3] != g[:3]
    ]
    right_scores = [f[0]["score"] for f, t, g in zip(found, top, gold, strict=True) if f and t == g]
    wrong_scores = [f[0]["score"] for f, t, g in zip(found, top, gold, strict=True) if f and t != g]
    return {
        "file": path.name,
        "mentions": len(rows),
        "category_top1": round(category / len(rows), 4),
        "code_top1": round(full / len(rows), 4),
        "code_top3": round(in_top3 / len(rows), 4),
        "mean_score_right": round(sum(right_scores) / len(right_scores), 4) if right_scores else None,
        "mean_score_wrong": round(sum(wrong_scores) / len(wrong_scores), 4) if wrong_scores else None,
        "ms_per_mention": round(1000 * seconds / len(rows), 3),
        "wrong_category": wrong,
    }
