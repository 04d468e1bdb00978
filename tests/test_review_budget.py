"""The review budget on chdb: past a task's capacity, the least valuable tasks (never audits, never leased ones) are
released as over_budget decisions; the sink's own code turns each into the note's next revision, status over_budget,
flagged items over_budget, and the queue no longer holds them."""

from __future__ import annotations

from schemas.extraction import ExtractionStatus, ItemState, TaskKind
from schemas.review_decision import DecisionOutcome, ReviewDecision
from streams.review.budget import OVER_BUDGET_REVIEWER, BudgetKeeper
from streams.review.store import QueueFilter, ReviewStore
from streams.settings import ReviewSettings
from streams.sink.backend import ChdbBackend
from streams.sink.reviews import base_rows, reviewed_revision
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row
from tests.review_helpers import pending_note, store_pending


class Captured:
    def __init__(self) -> None:
        self.sent: list[ReviewDecision] = []

    def send(self, decision: ReviewDecision, timeout_s: float = 15.0) -> None:
        self.sent.append(decision)


def test_the_least_valuable_tasks_past_the_budget_are_released_unreviewed(database: ChdbBackend) -> None:
    notes = []
    for name, priority, audit in (("a", 0.0, True), ("b", 0.9, False), ("c", 0.5, False), ("d", 0.3, False), ("e", 0.1, False)):
        extraction, task = pending_note(name)
        label, spans = extraction.results
        entities = [e.model_copy(update={"state": ItemState.pending}) for e in spans.entities]
        flagged = [label.model_copy(update={"label_state": ItemState.pending}), spans.model_copy(update={"entities": entities})]
        notes.append((extraction.model_copy(update={"results": flagged}), task.model_copy(update={"priority": priority, "audit": audit})))
    store_pending(database, *notes)
    store = ReviewStore(database, {"condition": TaskKind.classification, "disease": TaskKind.ner})
    assert [t.note_id for t in store.queue(QueueFilter(), 10)] == ["a", "b", "c", "d", "e"]  # audits, then priority

    publisher = Captured()
    keeper = BudgetKeeper(store, publisher, ReviewSettings(budget_per_hour=2, budget_horizon_hours=1.0))
    assert keeper.enforce(leased={"d"}) == 2  # capacity 2 (a, b); c and e go; d is in a reviewer's hands
    assert sorted(d.note_id for d in publisher.sent) == ["c", "e"]
    assert all(d.outcome is DecisionOutcome.over_budget and d.reviewer_id == OVER_BUDGET_REVIEWER and not d.changes for d in publisher.sent)
    assert BudgetKeeper(store, Captured(), ReviewSettings()).enforce() == 0  # no budget configured: nothing released

    # the sink applies them as it applies any decision
    bases = base_rows(database, [d.note_id for d in publisher.sent])
    rows = [extraction_row(reviewed_revision(bases.get((d.note_id, d.base_revision)), d), 0, i) for i, d in enumerate(publisher.sent)]
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row(rows))
    db = database.database
    states = database.query(
        f"SELECT note_id, status, entity_state, label_state FROM {db}.extractions_final WHERE note_id IN ('c', 'e') ORDER BY note_id"
    ).rows
    assert [(r[0], r[1], list(r[2]), dict(r[3])) for r in states] == [
        (n, ExtractionStatus.over_budget.value, ["over_budget"], {"condition": "over_budget"}) for n in ("c", "e")
    ]
    assert [t.note_id for t in store.queue(QueueFilter(), 10)] == ["a", "b", "d"]
    counts = dict(database.query(f"SELECT state, count() FROM {db}.items WHERE note_id IN ('c', 'e') GROUP BY state").rows)
    assert counts == {"over_budget": 4}
