"""The review queue as Prometheus gauges: tasks waiting and the oldest one's age, per task, and the audited precision
of auto-accepted items (``streams.review.audit``), refreshed by a thread of the review app (every
``metrics_lag_seconds``) from the ``review_backlog`` and ``auto_precision`` views; a low precision is handed on to the
tightener when ``review.tighten_thresholds`` is on (``streams.review.tighten``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from streams.metrics import REVIEW_BACKLOG, REVIEW_OLDEST_AGE
from streams.review.audit import judged, publish
from streams.review.store import ReviewStore

log = logging.getLogger(__name__)


class BacklogMonitor:
    def __init__(
        self,
        store: ReviewStore,
        interval_s: float,
        target_precision: float = 0.9,
        min_audit_items: int = 30,
        on_low: Callable[[list[dict[str, Any]]], Any] | None = None,
    ) -> None:
        """``on_low``: called with the low task-level rows of each refresh (the tightener, when configured)."""
        self.store = store
        self.on_low = on_low
        self.interval_s = interval_s
        self.target_precision = target_precision
        self.min_audit_items = min_audit_items
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="review-backlog", daemon=True)

    def refresh(self) -> None:
        health = self.store.health()
        low = publish(judged(health["auto_precision"], self.target_precision, self.min_audit_items), self.target_precision)
        if low and self.on_low is not None:
            self.on_low(low)
        rows = {str(row["task"]): row for row in health["backlog"]}
        for task in set(rows) | {t for t in self.store.task_kinds}:
            row = rows.get(task)
            REVIEW_BACKLOG.labels(task).set(float(row["pending"]) if row else 0.0)
            REVIEW_OLDEST_AGE.labels(task).set(float(row["oldest_age_s"]) if row else 0.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # ClickHouse briefly away: keep the last values, try again
                log.warning("review backlog not refreshed: %s", type(exc).__name__)
            self._stop.wait(self.interval_s)

    def start(self) -> BacklogMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
