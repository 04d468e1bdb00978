"""The review budget: a queue that spends human time well instead of piling up forever.

With ``review.budget_per_hour`` set, each task's queue keeps at most ``budget_per_hour * budget_horizon_hours``
tasks: the most valuable ones in the queue's own order (audits first, then priority, the expected corrections).
Past that, the least valuable are released: an ``over_budget`` decision (reviewer ``over-budget``, no changes) takes
each out of the queue, and the sink writes the note's next revision with status ``over_budget`` and its flagged
items marked ``over_budget``: usable as the model gave them, and counted as unreviewed. Audits and tasks a reviewer
holds a lease on are never released. A thread of the review app runs it every ``metrics_lag_seconds``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Protocol

from schemas._base import utc_now
from schemas.extraction import ItemState
from schemas.review_decision import DecisionOutcome, ReviewDecision
from streams.review.store import QueueFilter, ReviewStore, StoredNote
from streams.settings import ReviewSettings

log = logging.getLogger(__name__)

OVER_BUDGET_REVIEWER = "over-budget"


class Publisher(Protocol):
    def send(self, decision: ReviewDecision, timeout_s: float = 15.0) -> None: ...


def over_budget_decision(note: StoredNote) -> ReviewDecision:
    """The note released unreviewed: the model's results, every pending item marked over_budget."""

    def released(state: ItemState) -> ItemState:
        return ItemState.over_budget if state is ItemState.pending else state

    results = [
        r.model_copy(
            update={
                "label_state": released(r.label_state),
                "entities": [e.model_copy(update={"state": released(e.state)}) for e in r.entities],
            }
        )
        for r in note.results
    ]
    return ReviewDecision(
        decision_id=str(uuid.uuid4()),
        note_id=note.note_id,
        base_revision=note.revision,
        reviewer_id=OVER_BUDGET_REVIEWER,
        decided_at=utc_now(),
        changes=[],
        comment="released unreviewed: the review queue was past its budget",
        results=results,
        outcome=DecisionOutcome.over_budget,
    )


class BudgetKeeper:
    def __init__(self, store: ReviewStore, publisher: Publisher, review: ReviewSettings) -> None:
        self.store = store
        self.publisher = publisher
        self.capacity = int(review.budget_per_hour * review.budget_horizon_hours)
        self.enabled = review.budget_per_hour > 0

    def enforce(self, leased: set[str] | frozenset[str] = frozenset()) -> int:
        """Release what lies past each task's capacity; returns how many notes were released."""
        if not self.enabled:
            return 0
        released: set[str] = set()
        for task in sorted(self.store.task_kinds):
            queued = self.store.queue(QueueFilter(task=task), 1_000_000)  # the queue's order: audits, then priority
            for position, queued_task in enumerate(queued):
                if position < self.capacity or queued_task.audit or queued_task.note_id in leased or queued_task.note_id in released:
                    continue
                note = self.store.note(queued_task.note_id)
                if note is None or note.revision != queued_task.revision:
                    continue
                self.publisher.send(over_budget_decision(note))
                released.add(note.note_id)
        if released:
            log.info("review budget: %d notes released unreviewed (over_budget)", len(released))
        return len(released)


class BudgetThread:
    """Runs :meth:`BudgetKeeper.enforce` every ``interval_s``, skipping notes reviewers hold."""

    def __init__(self, keeper: BudgetKeeper, interval_s: float, leased: Callable[[], Iterable[str]]) -> None:
        self.keeper = keeper
        self.interval_s = interval_s
        self._leased = leased
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="review-budget", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.keeper.enforce(set(self._leased()))
            except Exception as exc:  # ClickHouse or the broker briefly away: try again next time
                log.warning("review budget not enforced: %s", type(exc).__name__)

    def start(self) -> BudgetThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
