"""What the review app reads from ClickHouse: the queue, a note's newest revision, its history, queue health.

The queue is the ``review_queue`` view (review tasks whose revision is still the note's
newest), filled by the sink from the review topic. Every value is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.extraction import Code, DocumentLabel, Entity, ItemState, TaskKind, TaskResult
from streams.query.reader import Reader
from streams.sink.backend import as_utc

_FILTER = (
    "({task:String} = '' OR arrayExists(r -> r.task = {task:String}, reasons)) "
    "AND ({label:String} = '' OR arrayExists(r -> r.label = {label:String}, reasons)) "
    "AND ({note_type:String} = '' OR note_type = {note_type:String})"
)

#: the queue's order: audits first, then by priority (expected corrections), oldest first among equals; or random
_QUEUE_ORDER = {False: "audit DESC, priority DESC, queued_at, note_id", True: "rand()"}


def iso(value: Any) -> str:
    """A ClickHouse DateTime64 (text from chdb, datetime from clickhouse-connect) as ISO 8601 UTC."""
    return as_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class QueueFilter:
    task: str = ""
    label: str = ""
    note_type: str = ""

    def parameters(self) -> dict[str, Any]:
        return {"task": self.task, "label": self.label, "note_type": self.note_type}


@dataclass(frozen=True)
class QueuedTask:
    note_id: str
    revision: int
    note_type: str
    queued_at: str
    reasons: list[dict[str, Any]]
    audit: bool = False
    priority: float = 0.0


@dataclass(frozen=True)
class StoredNote:
    """A note's newest revision as stored: what a reviewer sees and what a decision is checked against."""

    note_id: str
    revision: int
    status: str
    note_type: str
    created_at: str
    text: str
    results: list[TaskResult]
    reasons: list[dict[str, Any]] = field(default_factory=list)
    #: the note's review task is an audit: every accepted item is to be checked, not only the flagged ones
    audit: bool = False

    def result(self, task: str) -> TaskResult | None:
        return next((r for r in self.results if r.task == task), None)


def _reason(value: Any) -> dict[str, Any]:
    names = ("task", "kind", "label", "start", "end", "confidence", "threshold")
    return {name: value[name] for name in names}


class ReviewStore:
    def __init__(self, reader: Reader, task_kinds: dict[str, TaskKind]) -> None:
        self.reader = reader
        self.db = reader.database  # validated identifier
        self.task_kinds = task_kinds

    def queue(self, filters: QueueFilter, limit: int, shuffled: bool = False) -> list[QueuedTask]:
        """Pending tasks in the order the queue serves them: audits first, then by priority (expected corrections),
        oldest first among equals; ``shuffled``: in a random order instead (the queue's random picks)."""
        rows = self.reader.query(
            f"SELECT note_id, revision, note_type, queued_at, reasons, audit, priority FROM {self.db}.review_queue "  # noqa: S608
            f"WHERE {_FILTER} ORDER BY {_QUEUE_ORDER[shuffled]} LIMIT {{limit:UInt32}}",
            {**filters.parameters(), "limit": limit},
        ).rows
        return [
            QueuedTask(str(r[0]), int(r[1]), str(r[2]), iso(r[3]), [_reason(x) for x in r[4]], bool(r[5]), round(float(r[6]), 4))
            for r in rows
        ]

    def queue_size(self, filters: QueueFilter) -> int:
        result = self.reader.query(f"SELECT count() FROM {self.db}.review_queue WHERE {_FILTER}", filters.parameters())  # noqa: S608
        return int(result.scalar() or 0)

    def facets(self) -> dict[str, list[str]]:
        """The tasks, labels and note types present in the queue (the page's filter choices)."""
        result = self.reader.query(
            "SELECT groupUniqArrayArray(arrayMap(r -> r.task, reasons)), groupUniqArrayArray(arrayMap(r -> r.label, reasons)), "  # noqa: S608
            f"groupUniqArray(note_type) FROM {self.db}.review_queue"
        )
        tasks, labels, note_types = result.rows[0] if result.rows else ([], [], [])
        return {"tasks": sorted(tasks), "labels": sorted(labels), "note_types": sorted(note_types)}

    def note(self, note_id: str) -> StoredNote | None:
        """The note's newest revision, with the review reasons recorded for that revision."""
        rows = self.reader.query(
            "SELECT note_id, revision, status, note_type, created_at, text, models, doc_labels, entities, entity_context, "  # noqa: S608
            "entity_state, label_state "
            f"FROM {self.db}.extractions FINAL WHERE note_id = {{id:String}} ORDER BY revision DESC LIMIT 1",
            {"id": note_id},
        ).rows
        if not rows:
            return None
        note_id, revision, status, note_type, created_at, text, models, doc_labels, entities, context, states, label_states = rows[0]
        reasons = self.reader.query(
            f"SELECT reasons, audit FROM {self.db}.review_tasks FINAL WHERE note_id = {{id:String}} AND revision = {{rev:UInt32}}",  # noqa: S608
            {"id": note_id, "rev": int(revision)},
        ).rows
        fallback = {"auto_accepted": "accepted", "reviewed": "reviewed"}.get(str(status), "pending")  # rows before item states
        return StoredNote(
            note_id=str(note_id),
            revision=int(revision),
            status=str(status),
            note_type=str(note_type),
            created_at=iso(created_at),
            text=str(text),
            results=self._results(dict(models), doc_labels, entities, context, [str(x) for x in states], dict(label_states), fallback),
            reasons=[_reason(x) for x in reasons[0][0]] if reasons else [],
            audit=bool(reasons[0][1]) if reasons else False,
        )

    def _results(
        self,
        models: dict[str, str],
        doc_labels: list[Any],
        entities: list[Any],
        context: list[Any],
        states: list[str],
        label_states: dict[str, str],
        fallback: str,
    ) -> list[TaskResult]:
        """Each task's result; ``context[i]`` is the clinical meaning of ``entities[i]`` and ``states[i]`` its state
        (both empty for rows written before them: the state is then ``fallback``, what the note's status said)."""
        out = []
        state = [ItemState(states[i] if i < len(states) and states[i] else fallback) for i in range(len(entities))]
        meaning = [{**(_meaning(context[i]) if i < len(context) else {}), "state": state[i]} for i in range(len(entities))]
        for task, model in sorted(models.items()):
            name, _, version = model.rpartition("@")
            labels = [
                DocumentLabel(label=x["label"], probability=min(1.0, float(x["probability"]))) for x in doc_labels if x["task"] == task
            ]
            spans = [
                Entity(
                    label=x["label"],
                    start=int(x["start"]),
                    end=int(x["end"]),
                    text=x["text"],
                    confidence=min(1.0, float(x["confidence"])),
                    **m,
                )
                for x, m in zip(entities, meaning, strict=True)
                if x["task"] == task
            ]
            kind = self.task_kinds.get(task, TaskKind.classification if labels else TaskKind.ner)
            label_state = ItemState(label_states.get(task) or fallback)
            out.append(
                TaskResult(
                    task=task, kind=kind, model_name=name, model_version=version, label_state=label_state, labels=labels, entities=spans
                )
            )
        return out

    def history(self, note_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every revision of the note (the audit trail) and every decision taken on it, oldest first."""
        revisions = self.reader.query(
            f"SELECT revision, status, processed_at, models FROM {self.db}.extractions FINAL "  # noqa: S608
            "WHERE note_id = {id:String} ORDER BY revision",
            {"id": note_id},
        ).rows
        decisions = self.reader.query(
            f"SELECT decision_id, base_revision, reviewer_id, decided_at, changes, comment FROM {self.db}.review_decisions FINAL "  # noqa: S608
            "WHERE note_id = {id:String} ORDER BY decided_at, decision_id",
            {"id": note_id},
        ).rows
        change_names = ("task", "action", "label", "before", "after")
        return {
            "revisions": [{"revision": int(r[0]), "status": r[1], "processed_at": iso(r[2]), "models": dict(r[3])} for r in revisions],
            "decisions": [
                {
                    "decision_id": d[0],
                    "base_revision": int(d[1]),
                    "reviewer_id": d[2],
                    "decided_at": iso(d[3]),
                    "changes": [{n: c[n] for n in change_names} for c in d[4]],
                    "comment": d[5],
                }
                for d in decisions
            ],
        }

    def health(self) -> dict[str, list[dict[str, Any]]]:
        """Backlog per task, decisions per reviewer per day, model-reviewer agreement per label, the review load per
        day, and the audited precision of auto-accepted items per task, label and model version."""

        def table(sql: str) -> list[dict[str, Any]]:
            result = self.reader.query(sql)
            return [dict(zip(result.columns, (_plain(v) for v in row), strict=True)) for row in result.rows]

        db = self.db
        return {
            "backlog": table(f"SELECT task, pending, oldest_queued_at, oldest_age_s FROM {db}.review_backlog ORDER BY task"),  # noqa: S608
            "throughput": table(
                f"SELECT day, reviewer_id, decisions, with_corrections FROM {db}.review_throughput "  # noqa: S608
                "ORDER BY day DESC, reviewer_id LIMIT 200"
            ),
            "agreement": table(
                f"SELECT task, label, items, accepted, corrected, added, agreement FROM {db}.review_agreement ORDER BY task, label"  # noqa: S608
            ),
            "review_load": table(
                "SELECT day, notes, notes_flagged, flagged_share, flagged_items, flagged_items_per_note, audited "  # noqa: S608
                f"FROM {db}.review_load ORDER BY day DESC LIMIT 30"
            ),
            "auto_precision": table(
                f"SELECT task, label, model, items, correct, precision, lower, upper FROM {db}.auto_precision "  # noqa: S608
                "ORDER BY task, model, label"
            ),
        }


def _meaning(value: Any) -> dict[str, Any]:
    """The Entity fields of one ``entity_context`` tuple (chdb and the server return named tuples as dicts)."""
    codes = [
        Code(system=c["system"], code=c["code"], display=c["display"], score=min(1.0, max(0.0, float(c["score"])))) for c in value["codes"]
    ]
    return {
        "assertion": value["assertion"] or "present",
        "assertion_cue": value["assertion_cue"],
        "section": value["section"],
        "codes": codes,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
