"""The sink process: consume result topics, batch-insert into ClickHouse, then commit.

Offsets are committed only after the rows they carry are written, so a crash or a
ClickHouse outage replays records instead of losing them; the tables' keys make the
replay harmless. While ClickHouse refuses writes the sink pauses its partitions, keeps
its group membership alive by polling, and retries the same batch with backoff.
Records it cannot decode go to the dead-letter topic (stage ``sink``), and so does a record batch it cannot read
at all (CRC mismatch, unknown codec), which is skipped (``streams.kafka.undecodable``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from schemas.codec import Codecs
from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.errors import RecordError
from schemas.extraction import Extraction
from schemas.review_decision import ReviewDecision
from schemas.review_task import ReviewTask
from streams.errors import SinkBackpressureError, SinkError
from streams.kafka.clients import consumer as make_consumer
from streams.kafka.clients import producer as make_producer
from streams.kafka.undecodable import SkippedBatch
from streams.metrics import DEAD_LETTERS, SINK_RETRIES, SINK_ROWS, STAGE_SECONDS
from streams.settings import Settings
from streams.sink.avro_intake import AvroIntake, Pending
from streams.sink.backend import ClickHouseBackend
from streams.sink.reviews import PendingDecision, base_rows, reviewed_revision
from streams.sink.rows import TABLE_COLUMNS, dead_letter_row, extraction_row, json_each_row, review_decision_row, review_task_row
from streams.waiting import backoff

log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    retries: int = 0
    dead_lettered: int = 0


@dataclass
class _Batch:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    #: decisions whose reviewed revision is built at write time (it needs the base row from ClickHouse)
    decisions: list[PendingDecision] = field(default_factory=list)
    #: per table, the records handed to ClickHouse unread (``streams.sink.avro_intake``)
    avro: dict[str, Pending] = field(default_factory=lambda: defaultdict(Pending))
    count: int = 0
    #: per partition the batch read from, the offset to commit once it is written (past its last record)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def read(self, topic: str, partition: int, last_offset: int) -> None:
        self.count += 1
        tp = TopicPartition(topic, partition)
        self.offsets[tp] = max(self.offsets.get(tp, 0), last_offset + 1)

    def clear(self) -> None:
        self.rows.clear()
        self.dead.clear()
        self.decisions.clear()
        for pending in self.avro.values():
            pending.clear()
        self.count = 0
        self.offsets = {}  # a new dict: the caller still holds the written batch's to commit


class ClickHouseSink:
    def __init__(self, settings: Settings, bootstrap: str, backend: ClickHouseBackend, codecs: Codecs) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.backend = backend
        self.stats = SinkStats()
        self.topics = settings.topics
        self._extractions = codecs.of(Extraction)
        self._reviews = codecs.of(ReviewTask)
        self._decisions = codecs.of(ReviewDecision)
        self._dead = codecs.of(DeadLetter)
        #: per topic, the columnar intake of its records where the backend reads Avro (the other records are read here)
        self._intakes = (
            {
                self.topics.extractions: AvroIntake(self._extractions, "extractions"),
                self.topics.review: AvroIntake(self._reviews, "review_tasks"),
            }
            if backend.reads_avro
            else {}
        )
        self._statements = {t: i.statement(backend.database, TABLE_COLUMNS[i.table]) for t, i in self._intakes.items()}
        self._batch = _Batch()

    def run(self, stop: threading.Event) -> None:
        consumer = make_consumer(
            self.settings,
            self.bootstrap,
            *self.topics.results(),
            group_id=self.settings.sink_group,
            on_undecodable=self._skipped,
            max_poll_records=self.settings.sink_batch_rows,
        )
        producer = make_producer(self.settings, self.bootstrap)
        log.info("sink consuming %s", ", ".join(self.topics.results()))
        linger = self.settings.sink_linger_seconds
        next_write = 0.0  # monotonic time from which the next write may start
        try:
            while not stop.is_set():
                deadline = time.monotonic() + self.settings.sink_flush_seconds
                while self._batch.count < self.settings.sink_batch_rows and not stop.is_set():
                    now = time.monotonic()
                    if now >= deadline:
                        break
                    # with rows in hand, wait the linger for more (a quiet topic is written at once), or until the next
                    # write may start if that is later (a busy one is written in fewer, larger batches)
                    wait = min(deadline, max(now + linger, next_write)) - now if self._batch.count else deadline - now
                    room = self.settings.sink_batch_rows - self._batch.count
                    polled = consumer.poll(timeout_ms=max(1, int(wait * 1000)), max_records=room)
                    if not polled and self._batch.count and time.monotonic() >= next_write:
                        break
                    for messages in polled.values():
                        for message in messages:
                            self._add(message)
                if self._batch.count:
                    next_write = time.monotonic() + self.settings.sink_min_write_interval_seconds
                    offsets = self._batch.offsets
                    if not self._flush(consumer, producer, stop):
                        return  # stopped while ClickHouse was refusing: nothing committed, records will be replayed
                    self._commit(consumer, offsets)
        finally:
            producer.close(timeout=5)
            consumer.close(autocommit=False)

    @staticmethod
    def _commit(consumer: KafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """Commit the partitions the written batch read from, and only those still assigned: every commit is a durable
        write on the broker, and the result topics' other partitions (dead letters, decisions) rarely move."""
        owned = consumer.assignment()
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items() if tp in owned})

    def _add(self, message: Any) -> None:
        batch = self._batch
        batch.read(message.topic, message.partition, message.offset)
        value: bytes = message.value or b""
        intake = self._intakes.get(message.topic)
        if intake is not None and intake.takes(value):
            batch.avro[intake.table].add(message.partition, message.offset, message.key, value)
        else:
            self._read(message.topic, message.partition, message.offset, message.key, value)

    def _read(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        """One record decoded here (the codec validates it) into its table's row, or dead-lettered."""
        batch = self._batch
        try:
            if topic == self.topics.extractions:
                batch.rows["extractions"].append(extraction_row(self._extractions.decode(value), partition, offset))
            elif topic == self.topics.review:
                batch.rows["review_tasks"].append(review_task_row(self._reviews.decode(value)))
            elif topic == self.topics.review_decisions:
                decision = self._decisions.decode(value)
                batch.decisions.append(PendingDecision(decision, partition, offset, value, key))
            else:
                batch.rows["dead_letters"].append(dead_letter_row(self._dead.decode(value)))
        except RecordError as exc:
            self._dead_letter(value, key, topic, partition, offset, exc)

    def _skipped(self, skipped: SkippedBatch) -> None:
        """A batch the consumer could not read and skipped (already logged and counted): one dead letter, written with
        the batch it was skipped in, so the offsets past it are committed only once the letter is stored."""
        DEAD_LETTERS.labels("sink", ErrorKind.undecodable.value).inc()
        self._batch.read(skipped.topic, skipped.partition, skipped.last_offset)
        letter = skipped.dead_letter("sink")
        if skipped.topic == self.topics.deadletter:
            self._batch.rows["dead_letters"].append(dead_letter_row(letter))
        else:
            self._batch.dead.append((None, self._dead.encode(letter)))

    def _dead_letter(self, value: bytes, key: bytes | None, topic: str, partition: int, offset: int, exc: RecordError) -> None:
        log.warning("sink dead-lettered %s[%d]@%d: %s", topic, partition, offset, exc.kind.value)
        DEAD_LETTERS.labels("sink", exc.kind.value).inc()
        letter = DeadLetter.of_record(
            value, key, topic, partition, offset, exc.kind, exc.message, "sink", self.settings.max_record_bytes // 2
        )
        if topic == self.topics.deadletter:
            # a dead letter that is itself unreadable is stored as such, not sent round again
            self._batch.rows["dead_letters"].append(dead_letter_row(letter))
        else:
            self._batch.dead.append((key, self._dead.encode(letter)))

    def _write_avro(self) -> None:
        """Each table's unread records as one Avro container, from ``sink_avro_min_bytes`` on (smaller batches are read
        here: see the setting). A batch ClickHouse refuses (a record it cannot parse, or one the models would refuse)
        is read here record by record instead: the good rows are stored, the rest dead-lettered. A ClickHouse outage
        takes the same turn, and the rows then wait with the others for the retry."""
        for topic, intake in self._intakes.items():
            pending = self._batch.avro.get(intake.table)
            if not pending:
                continue
            if pending.size >= self.settings.sink_avro_min_bytes:
                try:
                    with STAGE_SECONDS.labels("insert").time():
                        self.backend.insert_avro(self._statements[topic], intake.structure, intake.container(pending))
                except SinkError as exc:
                    log.warning("ClickHouse did not take %d %s records as Avro (code %s); reading them here", len(pending), topic, exc.code)
                else:
                    self.stats.rows[intake.table] += len(pending)
                    SINK_ROWS.labels(intake.table).inc(len(pending))
                    pending.clear()
                    continue
            for partition, offset, key, value in zip(pending.partitions, pending.offsets, pending.keys, pending.values, strict=True):
                self._read(topic, partition, offset, key, value)
            pending.clear()

    def _apply_decisions(self) -> None:
        """Turn the batch's decisions into reviewed revisions (or dead letters). Raises SinkError to retry."""
        pending = self._batch.decisions
        if not pending:
            return
        bases = base_rows(self.backend, [p.decision.note_id for p in pending])
        for p in pending:
            try:
                revision = reviewed_revision(bases.get((p.decision.note_id, p.decision.base_revision)), p.decision)
            except RecordError as exc:
                self._dead_letter(p.raw, p.key, self.topics.review_decisions, p.partition, p.offset, exc)
                continue
            self._batch.rows["extractions"].append(extraction_row(revision, p.partition, p.offset))
            self._batch.rows["review_decisions"].append(review_decision_row(p.decision, p.partition, p.offset))
        pending.clear()

    def _flush(self, consumer: KafkaConsumer, producer: KafkaProducer, stop: threading.Event) -> bool:
        """Write the batch, retrying with backoff (0.2 s doubling to 10 s) while ClickHouse refuses, consumption paused.
        Returns False if stopped first; past ``sink_retry_max_seconds`` raises :class:`SinkBackpressureError`."""
        paused = False

        def wait_paused(seconds: float) -> None:
            nonlocal paused
            if not paused:
                consumer.pause(*consumer.assignment())
                paused = True
            end = time.monotonic() + seconds
            while time.monotonic() < end and not stop.is_set():
                consumer.poll(timeout_ms=100)  # paused: returns nothing, keeps the group membership

        def on_retry(error: BaseException, waited: float, _next: float) -> None:
            self.stats.retries += 1
            SINK_RETRIES.inc()
            code, reason = getattr(error, "code", None), getattr(error, "reason", str(error))
            log.error("ClickHouse write failed (code %s, %.0f s so far), retrying: %s", code, waited, reason)

        retrying = backoff(
            SinkError, first_s=0.2, give_up_after_s=self.settings.sink_retry_max_seconds, stop=stop, sleep=wait_paused, on_retry=on_retry
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._write(producer)
            self.stats.batches += 1
            return True
        except SinkError as exc:
            if stop.is_set():
                return False
            self.stats.retries += 1
            SINK_RETRIES.inc()
            raise SinkBackpressureError(
                exc.operation, f"still failing after {self.settings.sink_retry_max_seconds:.0f} s: {exc.reason}", exc.code, exc.table
            ) from exc
        finally:
            if paused:
                consumer.resume(*consumer.assignment())
            self._batch.clear()

    def _write(self, producer: KafkaProducer) -> None:
        self._write_avro()
        self._apply_decisions()
        for table, rows in self._batch.rows.items():
            if rows:
                with STAGE_SECONDS.labels("insert").time():
                    self.backend.insert_json(table, TABLE_COLUMNS[table], json_each_row(rows))
                self.stats.rows[table] += len(rows)
                SINK_ROWS.labels(table).inc(len(rows))
                rows.clear()  # a retry after a partial write re-sends only the tables not yet written
        for key, value in self._batch.dead:
            producer.send(self.topics.deadletter, key=key, value=value)
        if self._batch.dead:
            producer.flush()
            self.stats.dead_lettered += len(self._batch.dead)
            self._batch.dead.clear()
