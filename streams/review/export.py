"""Reviewed notes out of ClickHouse as training data.

* ``jsonl``: ehrstream's own training format (``{"text", "label"}`` or ``{"text", "entities"}``),
  which ``ehrstream train --data FILE`` reads.
* ``prodigy``: Prodigy's task JSONL (``spans`` for NER as ``ner.manual`` writes them,
  ``options``/``accept`` for a document label as ``textcat.manual`` writes them), ``answer: accept``.
* ``labelstudio``: a Label Studio JSON import (a list of tasks with one completed annotation,
  ``labels`` results over ``text`` for NER, ``choices`` for a document label).

Only reviewed notes (status ``reviewed``, the newest revision) are exported; the note id
and revision go in each record's metadata so a record can be traced to its audit trail.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from schemas.extraction import TaskKind
from streams.query.reader import Reader

ExportFormat = Literal["jsonl", "prodigy", "labelstudio"]
FORMATS: tuple[ExportFormat, ...] = ("jsonl", "prodigy", "labelstudio")


@dataclass(frozen=True)
class ReviewedNote:
    note_id: str
    revision: int
    text: str
    label: str | None
    spans: list[tuple[int, int, str]]


def reviewed_notes(reader: Reader, task: str, kind: TaskKind) -> list[ReviewedNote]:
    db = reader.database  # validated identifier; values are bound
    rows = reader.query(
        "SELECT note_id, revision, text, arrayFilter(x -> x.task = {task:String}, doc_labels), "  # noqa: S608
        "arrayFilter(x -> x.task = {task:String}, entities) "
        f"FROM {db}.extractions_final WHERE status = 'reviewed' AND has(mapKeys(models), {{task:String}}) ORDER BY note_id",
        {"task": task},
    ).rows
    out = []
    for note_id, revision, text, labels, entities in rows:
        top = max(labels, key=lambda x: float(x["probability"])) if labels else None
        out.append(
            ReviewedNote(
                note_id=str(note_id),
                revision=int(revision),
                text=str(text),
                label=str(top["label"]) if kind is TaskKind.classification and top is not None else None,
                spans=[(int(e["start"]), int(e["end"]), str(e["label"])) for e in entities],
            )
        )
    return [n for n in out if kind is TaskKind.ner or n.label is not None]


def _jsonl(notes: Iterable[ReviewedNote], task: str, kind: TaskKind) -> str:
    lines = []
    for n in notes:
        meta = {"note_id": n.note_id, "revision": n.revision, "task": task}
        if kind is TaskKind.classification:
            record: dict[str, Any] = {"text": n.text, "label": n.label, "meta": meta}
        else:
            record = {"text": n.text, "entities": [{"start": a, "end": b, "label": lab} for a, b, lab in n.spans], "meta": meta}
        lines.append(json.dumps(record, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def _prodigy(notes: Iterable[ReviewedNote], task: str, kind: TaskKind, labels: list[str]) -> str:
    lines = []
    for n in notes:
        meta = {"note_id": n.note_id, "revision": n.revision, "task": task}
        if kind is TaskKind.classification:
            record: dict[str, Any] = {
                "text": n.text,
                "options": [{"id": lab, "text": lab} for lab in labels or [str(n.label)]],
                "accept": [n.label],
                "answer": "accept",
                "meta": meta,
            }
        else:
            record = {
                "text": n.text,
                "spans": [{"start": a, "end": b, "label": lab, "text": n.text[a:b]} for a, b, lab in n.spans],
                "answer": "accept",
                "meta": meta,
            }
        lines.append(json.dumps(record, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def _labelstudio(notes: Iterable[ReviewedNote], task: str, kind: TaskKind) -> str:
    tasks = []
    for n in notes:
        if kind is TaskKind.classification:
            result = [{"from_name": task, "to_name": "text", "type": "choices", "value": {"choices": [n.label]}}]
        else:
            result = [
                {
                    "from_name": task,
                    "to_name": "text",
                    "type": "labels",
                    "value": {"start": a, "end": b, "text": n.text[a:b], "labels": [lab]},
                }
                for a, b, lab in n.spans
            ]
        tasks.append({"data": {"text": n.text, "note_id": n.note_id, "revision": n.revision}, "annotations": [{"result": result}]})
    return json.dumps(tasks, ensure_ascii=False, indent=1) + "\n"


def export_reviewed(reader: Reader, task: str, kind: TaskKind, fmt: ExportFormat, out: Path, labels: list[str]) -> int:
    """Write the task's reviewed notes to ``out`` in ``fmt``; returns how many notes were written."""
    notes = reviewed_notes(reader, task, kind)
    if fmt == "jsonl":
        text = _jsonl(notes, task, kind)
    elif fmt == "prodigy":
        text = _prodigy(notes, task, kind, labels)
    else:
        text = _labelstudio(notes, task, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return len(notes)
