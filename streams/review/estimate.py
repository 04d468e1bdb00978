"""The live precision of auto-accepted items, estimated from every reviewed item, not only from audits.

Audits alone are unbiased but few: at 2% of the notes, a corpus of short sentences yields a handful of audited
accepted spans, and no interval from them is narrow enough to act on. Every review also tells whether the model's
items were right, accepted ones included (the reviewer sees and decides the whole note), and each item carries the
confidence routing compared with its threshold. So:

1. from every item the model had accepted in a note a reviewer then decided (audited or flagged for other items; the
   decision's ``before`` holds its confidence and state), learn ``P(correct | confidence)`` in confidence bins (the
   deciles of the auto-accepted items' confidences);
2. average it over the confidences of **all** auto-accepted items of the stream (revision 0, state ``accepted``).

This is the model-based estimate of survey sampling: it assumes that, at equal confidence, reviewed items are right
as often as unreviewed ones (audits, drawn at random, keep that honest; the audit-only estimate is reported beside
it). The 95% interval is the normal one over the bins, ``sum (n_b / N)^2 p_b (1 - p_b) / m_b``, with ``p_b`` smoothed
by one right and one wrong answer so an empty or perfect bin still has a width.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streams.query.reader import Reader

#: a model item judged by a reviewer: its confidence and whether it was kept as it was
_REVIEWED_SQL = (
    "SELECT JSONExtractFloat(c.before, 'confidence') AS confidence, c.action = 'accept' AS correct "
    "FROM {db}.review_decisions AS r FINAL ARRAY JOIN r.changes AS c "
    "WHERE c.task = {task:String} AND c.action IN ('accept', 'reject_span', 'relabel_span') "
    "AND JSONExtractString(ifNull(c.before, '{}'), 'state') = 'accepted'"
)
#: every span the model auto-accepted (revision 0, state accepted): its confidence
_ACCEPTED_SQL = (
    "SELECT tupleElement(e, 'confidence') FROM {db}.extractions FINAL "
    "ARRAY JOIN entities AS e, arrayResize(entity_state, length(entities), '') AS s "
    "WHERE revision = 0 AND tupleElement(e, 'task') = {task:String} AND s = 'accepted'"
)


def judged_items(reader: Reader, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Every item of ``task`` the model had accepted and a reviewer judged: its confidence, and whether it was right."""
    rows = reader.query(_REVIEWED_SQL.replace("{db}", reader.database), {"task": task}).rows  # a validated identifier
    return np.array([float(r[0]) for r in rows], dtype=np.float64), np.array([bool(r[1]) for r in rows], dtype=bool)


def calibrated_precision(reader: Reader, task: str, bins: int = 10) -> dict[str, Any]:
    """The estimate for one NER task over everything in ClickHouse: precision, 95% interval, items behind it."""
    db = reader.database  # validated identifier
    confidence, correct_flags = judged_items(reader, task)
    accepted = np.array([float(r[0]) for r in reader.query(_ACCEPTED_SQL.replace("{db}", db), {"task": task}).rows])
    out: dict[str, Any] = {"task": task, "accepted_items": int(accepted.size), "reviewed_items": int(confidence.size)}
    if not accepted.size or not confidence.size:
        return {**out, "precision": None, "lower": None, "upper": None}
    correct = correct_flags.astype(np.float64)
    edges = np.unique(np.quantile(accepted, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        edges = np.array([accepted.min(), accepted.max() + 1e-9])
    accepted_bin = np.clip(np.searchsorted(edges, accepted, side="right") - 1, 0, edges.size - 2)
    judged_bin = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, edges.size - 2)
    share = np.bincount(accepted_bin, minlength=edges.size - 1) / accepted.size
    seen = np.bincount(judged_bin, minlength=edges.size - 1)
    right = np.bincount(judged_bin, weights=correct, minlength=edges.size - 1)
    p = (right + 1.0) / (seen + 2.0)  # one right and one wrong answer added: an empty bin reads 0.5 with a wide interval
    estimate = float(np.sum(share * p))
    half = 1.959964 * math.sqrt(float(np.sum(share**2 * p * (1 - p) / (seen + 2.0))))
    return {
        **out,
        "precision": round(estimate, 4),
        "lower": round(max(0.0, estimate - half), 4),
        "upper": round(min(1.0, estimate + half), 4),
    }
