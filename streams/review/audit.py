"""The audited precision of auto-accepted items judged against the target: what ``review-health``, its log line and the
``ehrstream_auto_precision*`` gauges say.

Rows come from the ``auto_precision`` view (one per task, label and model version, and one per task and model version
over all labels, ``label = ''``). A row is ``low`` when the lower end of its 95% Wilson interval is below the target
and it rests on at least ``min_items`` audited items (fewer cannot tell a good model from a bad one: 30 items all
correct still leave the lower end at 0.89); ``ok`` when the lower end clears the target; else ``too_few``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from streams.metrics import AUTO_PRECISION, AUTO_PRECISION_LOW, AUTO_PRECISION_LOWER

log = logging.getLogger(__name__)


def verdict(row: dict[str, Any], target: float, min_items: int) -> str:
    if int(row["items"]) < min_items:
        return "too_few"
    return "ok" if float(row["lower"]) >= target else "low"


def judged(rows: Iterable[dict[str, Any]], target: float, min_items: int) -> list[dict[str, Any]]:
    """The rows with their verdict."""
    return [{**row, "verdict": verdict(row, target, min_items)} for row in rows]


def publish(rows: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Sets the gauges from judged rows and logs one warning per task-level row that is low; returns those rows."""
    low = []
    for row in rows:
        task, label, model = str(row["task"]), str(row["label"]) or "(all)", str(row["model"])
        AUTO_PRECISION.labels(task, label, model).set(float(row["precision"]))
        AUTO_PRECISION_LOWER.labels(task, label, model).set(float(row["lower"]))
        if not row["label"]:
            is_low = row["verdict"] == "low"
            AUTO_PRECISION_LOW.labels(task, model).set(1.0 if is_low else 0.0)
            if is_low:
                low.append(row)
                log.warning(
                    "auto-accepted precision of task %s (model %s) may be below the target %.2f: %.3f over %d audited items, "
                    "95%% interval %.3f-%.3f; raise its thresholds or retrain",
                    task,
                    model,
                    target,
                    float(row["precision"]),
                    int(row["items"]),
                    float(row["lower"]),
                    float(row["upper"]),
                )
    return low
