"""Training data from ClickHouse: reviewed results plus confident machine labels.

Reviewed notes (status ``reviewed``, written when a reviewer's decision is applied) are
taken as they are. Auto-accepted notes are taken only when the task's decisions clear a
confidence floor: the top document label's probability for classification; for NER every
span's confidence (a note is kept or dropped whole, since dropping one span would teach
the model that its text is not an entity). This is the confidence filter for noisy labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.errors import TrainingDataError
from agents.learning.datasets import ClassificationExample, Example, NerExample
from schemas.extraction import TaskKind
from streams.query.reader import run_query
from streams.settings import Settings


@dataclass(frozen=True)
class ClickHouseExamples:
    examples: list[Example]
    #: the note each example came from (same order)
    note_ids: list[str]
    reviewed: int
    machine_labelled: int
    below_floor: int


def examples_from_clickhouse(
    settings: Settings, task: str, kind: TaskKind, floor: float, reviewed_only: bool = False
) -> ClickHouseExamples:
    """``reviewed_only``: the notes reviewers decided and nothing else (calibration, the learning loop's data)."""
    db = settings.clickhouse_database  # validated identifier; values are bound
    sql = (
        "SELECT note_id, text, status, "  # noqa: S608
        "arrayFilter(x -> x.task = {task:String}, doc_labels) AS labels, "
        "arrayFilter(x -> x.task = {task:String}, entities) AS spans "
        f"FROM {db}.extractions_final WHERE status IN {{statuses:Array(String)}} ORDER BY note_id"
    )
    statuses = ["reviewed"] if reviewed_only else ["reviewed", "auto_accepted"]
    rows = run_query(settings, sql, {"task": task, "statuses": statuses}).rows
    examples: list[Example] = []
    note_ids: list[str] = []
    reviewed = machine = dropped = 0
    for note_id, text, status, labels, spans in rows:
        is_reviewed = status == "reviewed"
        if kind is TaskKind.classification:
            if not labels:
                continue
            top = max(labels, key=_probability)
            if not is_reviewed and _probability(top) < floor:
                dropped += 1
                continue
            examples.append(ClassificationExample(text, top["label"]))
            note_ids.append(str(note_id))
        else:
            parsed = [
                (
                    int(s["start"]),
                    int(s["end"]),
                    str(s["label"]),
                    float(s["confidence"]),
                )
                for s in spans
            ]
            if not is_reviewed and any(conf < floor for *_, conf in parsed):
                dropped += 1
                continue
            examples.append(NerExample(text, [(a, b, label) for a, b, label, _ in parsed]))
            note_ids.append(str(note_id))
        reviewed += is_reviewed
        machine += not is_reviewed
    if not examples:
        raise TrainingDataError("clickhouse", f"no reviewed or confident ({floor}) rows for task {task!r} in {db}.extractions_final")
    return ClickHouseExamples(examples, note_ids, reviewed, machine, dropped)


def _probability(value: Any) -> float:
    return float(value["probability"])
