"""``ehrstream demo``: the whole path on the embedded stack, with an honest account of every note.

Starts Tansu, the sink (owning chdb) and a worker subprocess; publishes N records drawn
from the shipped corpora's test splits and a few hand-written clinical-note samples,
with one bad record in fifty (each a different kind of damage) to exercise the
dead-letter path; then counts what came out on the topics (independently of the sink)
and what is in ClickHouse's final view.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata
from tqdm import tqdm

from agents.config import REPO_ROOT
from schemas.clinical_note import ClinicalNote
from schemas.codec import MARKER, Codecs
from schemas.dead_letter import DeadLetter
from schemas.extraction import Extraction, ExtractionStatus
from streams.ingest import InputFormat
from streams.ingest.publish import PublishSummary, read_notes
from streams.kafka.clients import consumer as make_consumer
from streams.kafka.clients import ensure_topics
from streams.kafka.clients import producer as make_producer
from streams.kafka.schema_registry import build_codecs
from streams.runtime.broker import embedded_broker
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerPool, with_partitions_for_workers
from streams.settings import Settings
from streams.waiting import poll_until

log = logging.getLogger(__name__)

SAMPLES = REPO_ROOT / "samples" / "clinical_notes.jsonl"
BAD_RECORDS: list[bytes] = [
    b"\xff\xfe\x00 not a note at all \x81",
    b'{"note_id": "broken", "patient_id": ',
    b'{"note_id": "demo-empty", "patient_id": "p", "note_type": "progress_note", '
    b'"created_at": "2026-11-01T00:00:00Z", "text": "   ", "source": "demo"}',
    MARKER + b"\x00" * 8 + b"\x02ab",
    b'{"note_id": "demo-missing", "text": "a note without its required fields"}',
]


@dataclass(frozen=True)
class DemoCorpus:
    notes: list[ClinicalNote]

    @classmethod
    def load(cls, datasets: Path) -> DemoCorpus:
        base = datetime(2026, 11, 1, tzinfo=UTC)
        notes: list[ClinicalNote] = []
        abstracts = datasets / "medical_abstracts" / "test.csv"
        if abstracts.exists():
            with abstracts.open(newline="", encoding="utf-8") as fh:
                for i, row in enumerate(csv.DictReader(fh)):
                    notes.append(
                        _note(f"abstract-{i}", "abstract", row["medical_abstract"], "medical_abstracts/test", base + timedelta(minutes=i))
                    )
        pubtator = datasets / "ncbi_disease" / "test.pubtator.txt"
        if pubtator.exists():
            docs: dict[str, list[str]] = {}
            for line in pubtator.read_text(encoding="utf-8").splitlines():
                parts = line.split("|", 2)
                if len(parts) == 3 and parts[1] in ("t", "a"):
                    docs.setdefault(parts[0], []).append(parts[2])
            for pmid, texts in docs.items():
                notes.append(_note(f"pubmed-{pmid}", "abstract", " ".join(texts), "ncbi_disease/test", base))
        samples = [ClinicalNote.model_validate_json(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
        # interleave: a hand-written clinical note every tenth record
        mixed: list[ClinicalNote] = []
        for i, note in enumerate(notes):
            if i % 9 == 0:
                mixed.append(samples[(i // 9) % len(samples)])
            mixed.append(note)
        return cls(mixed or samples)


def _note(key: str, note_type: str, text: str, source: str, created: datetime) -> ClinicalNote:
    return ClinicalNote(
        note_id=key,
        patient_id=f"demo-patient-{zlib.crc32(key.encode()) % 997}",
        note_type=note_type,
        created_at=created,
        text=text,
        source=source,
    )


def demo_records(corpus: DemoCorpus, n: int, run_id: str, codecs: Codecs) -> list[tuple[bytes, bytes]]:
    """N (key, value) records: good notes as Avro and JSON alternately, one bad record in fifty."""
    codec = codecs.of(ClinicalNote)
    out = []
    for i in range(n):
        if i % 50 == 49:
            out.append((f"{run_id}-{i:06d}".encode(), BAD_RECORDS[(i // 50) % len(BAD_RECORDS)]))
            continue
        note = corpus.notes[i % len(corpus.notes)]
        note = note.model_copy(update={"note_id": f"{run_id}-{i:06d}", "meta": {"demo_source_id": note.note_id}})
        value = codec.encode(note) if i % 2 == 0 else note.model_dump_json().encode()
        out.append((note.note_id.encode(), value))
    return out


@dataclass
class TopicCounts:
    extracted: int = 0
    auto_accepted: int = 0
    routed_to_review: int = 0
    dead_lettered: int = 0


#: the consumer group the demo's count commits as, so that the durable embedded broker keeps what it has not read
COUNT_GROUP = "ehrstream-demo-count"


class TopicCounter:
    """Distinct notes per status on the extractions topic, and dead letters, read from the start by one consumer that
    keeps reading forward: each :meth:`update` reads what arrived since the last and commits where it got to. The
    durable embedded broker deletes a record batch once every group committing on its partition is past it (after
    ``embedded_retention_seconds``); the count commits as a group of its own (:data:`COUNT_GROUP`), from offset 0 before
    it reads, so nothing it has not counted goes."""

    def __init__(self, settings: Settings, bootstrap: str, codecs: Codecs) -> None:
        self.settings = settings
        self.consumer = make_consumer(settings, bootstrap, group_id=COUNT_GROUP, consumer_timeout_ms=1000)
        self.parts = [
            TopicPartition(t, p)
            for t in (settings.topics.extractions, settings.topics.deadletter)
            for p in sorted(self.consumer.partitions_for_topic(t) or [])
        ]
        self.consumer.assign(self.parts)
        self.consumer.seek_to_beginning(*self.parts)
        self.consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in self.parts})
        self._extraction, self._dead = codecs.of(Extraction), codecs.of(DeadLetter)
        self._status: dict[str, ExtractionStatus] = {}
        self._dead_letters: set[tuple[str, int, int]] = set()

    def update(self) -> TopicCounts:
        """The counts once everything on the topics now has been read."""
        end = self.consumer.end_offsets(self.parts)
        while any(self.consumer.position(tp) < end[tp] for tp in self.parts):
            for tp, messages in self.consumer.poll(timeout_ms=500).items():
                for m in messages:
                    if tp.topic == self.settings.topics.extractions:
                        e = self._extraction.decode(m.value)
                        self._status[e.note_id] = e.status
                    else:
                        d = self._dead.decode(m.value)
                        self._dead_letters.add((d.source_topic, d.source_partition, d.source_offset))
        self.consumer.commit({tp: OffsetAndMetadata(self.consumer.position(tp), "", -1) for tp in self.parts})
        counts = TopicCounts(extracted=len(self._status), dead_lettered=len(self._dead_letters))
        counts.auto_accepted = sum(1 for s in self._status.values() if s is ExtractionStatus.auto_accepted)
        counts.routed_to_review = counts.extracted - counts.auto_accepted
        return counts

    def close(self) -> None:
        self.consumer.close()


def input_records(
    path: Path, fmt: InputFormat, echo: Callable[[str], None], codecs: Codecs
) -> tuple[list[tuple[bytes, bytes]], PublishSummary]:
    """The valid notes of a file or directory as (key, Avro) records, and the publish summary of what was rejected."""
    codec = codecs.of(ClinicalNote)
    summary = PublishSummary()
    records: list[tuple[bytes, bytes]] = []
    for file, position, note in read_notes(path, fmt):
        if isinstance(note, str):
            summary.reject(position, note, file)
            echo(f"rejected {file + ' ' if file else ''}#{position}: {note}")
            continue
        records.append((note.note_id.encode("utf-8"), codec.encode(note)))
        summary.accepted += 1
    return records, summary


def fresh_data_dir(settings: Settings) -> None:
    """The demo's own directory emptied (a fresh broker, database and logs each run), but for what is derived from the
    models (``settings.cache_dir()``: the quantised int8 models, about 10 s of each worker's start)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    kept = settings.cache_dir()
    for child in settings.data_dir.iterdir():
        if child == kept and child.is_dir() and not child.is_symlink():
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def run_demo(
    settings: Settings,
    n: int,
    datasets: Path,
    echo: Callable[[str], None],
    source: tuple[Path, InputFormat] | None = None,
) -> dict[str, Any]:
    """The whole path once: ``n`` records of the sample corpus (one bad in fifty), or the notes of ``source``."""
    started = time.monotonic()
    settings = with_partitions_for_workers(settings)
    fresh_data_dir(settings)
    rejected = 0
    codecs = build_codecs(settings)
    if source is not None:
        records, read = input_records(*source, echo=echo, codecs=codecs)
        rejected = read.rejected
        echo(f"{source[0]} ({source[1]}): {read.accepted} notes, {read.rejected} rejected before publishing")
    else:
        records = demo_records(DemoCorpus.load(datasets), n, run_id="demo", codecs=codecs)
    n = len(records)
    if n == 0:
        raise ValueError("nothing to publish: every input record was rejected")
    with embedded_broker(settings, settings.data_dir / "tansu.log") as broker:
        echo(f"embedded Kafka (tansu) on {broker.bootstrap}")
        ensure_topics(settings, broker.bootstrap)
        sink = SinkThread(settings, broker.bootstrap, codecs=codecs)
        workers = WorkerPool(settings, broker.bootstrap, settings.data_dir)
        sink.start()
        workers.start()
        echo(f"{len(workers)} worker(s) started, {workers.threads} torch thread(s) each (logs: {settings.data_dir}/worker*.log)")
        echo(f"publishing {n} records")
        try:
            producer = make_producer(settings, broker.bootstrap)
            for key, value in records:
                producer.send(settings.topics.notes, key=key, value=value)
            producer.flush()
            producer.close()
            counts = TopicCounts()
            counter = TopicCounter(settings, broker.bootstrap, codecs)
            bar = tqdm(total=n, desc="extracted or dead-lettered", unit="note", disable=None)  # a bar on a terminal only

            def all_accounted() -> bool:
                nonlocal counts
                if not workers.all_alive():
                    raise RuntimeError(f"a worker exited; see {settings.data_dir}/worker*.log")
                counts = counter.update()
                bar.update(counts.extracted + counts.dead_lettered - bar.n)
                return counts.extracted + counts.dead_lettered >= n

            try:
                poll_until(all_accounted, 120 + n * 0.5, "every record to be extracted or dead-lettered", interval_s=2.0)
            finally:
                bar.close()
                counter.close()

            def in_clickhouse() -> bool:
                return clickhouse_notes(sink) >= counts.extracted

            poll_until(in_clickhouse, 60, "the sink to write every extraction")
            poll_until(lambda: review_tasks(sink) >= counts.routed_to_review, 60, "the sink to write every review task")
            stored = clickhouse_notes(sink)
            load = review_load(sink)
        finally:
            workers.stop()
            sink.stop()
    summary = {
        "published": n,
        "rejected": rejected,
        "extracted": counts.extracted,
        "auto_accepted": counts.auto_accepted,
        "routed_to_review": counts.routed_to_review,
        "dead_lettered": counts.dead_lettered,
        "clickhouse_notes": stored,
        **load,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    return summary


def clickhouse_notes(sink: SinkThread) -> int:
    db = sink.backend.database
    # db is a validated identifier (settings pattern); identifiers cannot be bound as parameters
    return int(sink.backend.query(f"SELECT count() FROM (SELECT note_id FROM {db}.extractions_final)").scalar() or 0)  # noqa: S608


def review_tasks(sink: SinkThread) -> int:
    db = sink.backend.database  # validated identifier
    return int(sink.backend.query(f"SELECT count() FROM {db}.review_tasks FINAL WHERE revision = 0").scalar() or 0)  # noqa: S608


def review_load(sink: SinkThread) -> dict[str, Any]:
    """What the run asks of reviewers (the ``review_load`` view): flagged items per note, and the items they would
    have had to decide if every item of a flagged note went to review with it (note-level routing, for comparison)."""
    db = sink.backend.database  # validated identifier
    load = sink.backend.query(
        f"SELECT sum(notes_flagged), sum(flagged_items), sum(audited), sum(notes) FROM {db}.review_load"  # noqa: S608
    ).rows[0]
    whole = sink.backend.query(
        f"SELECT sum(length(entities) + length(arrayDistinct(arrayMap(d -> d.task, doc_labels)))) FROM {db}.extractions FINAL "  # noqa: S608
        "WHERE revision = 0 AND status = 'pending_review'"
    ).scalar()
    possible = sink.backend.query(
        f"SELECT sum(countEqual(arrayMap(r -> r.kind, reasons), 'possible_entity')) FROM {db}.review_tasks FINAL "  # noqa: S608
        "WHERE revision = 0"
    ).scalar()
    notes_flagged, items, audited, notes = (int(v or 0) for v in load)
    whole = int(whole or 0) + int(possible or 0)
    return {
        "notes_with_flagged_items": notes_flagged,
        "flagged_items": items,
        "flagged_items_per_note": round(items / notes, 2) if notes else 0.0,
        "items_per_note_if_routed_by_note": round(whole / notes, 2) if notes else 0.0,
        "audited": audited,
    }


def summary_table(summary: dict[str, Any]) -> str:
    width = max(len(k) for k in summary)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in summary.items())
