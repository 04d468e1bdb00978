"""The worker's Kafka consumer, as ehrstream needs it of Faust's aiokafka driver: committed records only, and no
batch that cannot be read stops its partition.

* **Committed only.** Feeds that produce with transactions (Kafka Connect, Debezium, exactly-once Java or
  librdkafka producers) abort some of them, and an aborted note must never be extracted. faust-streaming 0.15 sets
  ``isolation_level=read_committed`` only when the app runs exactly-once itself, so the worker's consumer is built
  here with it set.
* **Undecodable batches are skipped, reported, and the partition flows on.** A record batch whose CRC does not
  match, or whose compression codec is not one Kafka defines (none, gzip, snappy, lz4, zstd), would make aiokafka
  raise on every fetch of that partition, and the worker would crash and restart on the same batch forever. The
  policy: the batch's whole offset range is skipped; it is logged (topic, partition, offset range, reason; never
  content), counted (``ehrstream_undecodable_batches_total``) and handed to :attr:`WorkerApp.undecodable`, which the
  worker turns into a dead letter per batch (kind ``undecodable``; the raw bytes stay on the topic at the offsets the
  letter names, since aiokafka does not hand them out). aiokafka builds its per-partition record iterators from
  ``aiokafka.consumer.fetcher.PartitionRecords``; the worker replaces that one class with a checking subclass when it
  builds its consumer (the only patch of a library in ehrstream, and only in the worker process).
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from typing import Any

import aiokafka
import faust
from aiokafka.consumer import fetcher as aiokafka_fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from streams.kafka.clients import ISOLATION_LEVEL
from streams.metrics import UNDECODABLE_BATCHES

log = logging.getLogger(__name__)

#: the compression codecs Kafka defines (attribute bits 0-2 of a record batch)
KNOWN_CODECS = frozenset({0, 1, 2, 3, 4})


@dataclass(frozen=True)
class SkippedBatch:
    """A record batch the worker could not read and skipped."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    reason: str


class _CheckedBatches:
    """The fetched batches of one partition, minus the ones that cannot be read (reported, and skipped by moving the
    partition's position past them)."""

    def __init__(self, records: Any, owner: _CheckingPartitionRecords) -> None:
        self._records = records
        self._owner = owner
        self._pending: Any = None

    def has_next(self) -> bool:
        while self._pending is None and self._records.has_next():
            batch = self._records.next_batch()
            reason = _unreadable(batch, self._owner.check_crcs)
            if reason is None:
                self._pending = batch
            else:
                self._owner.skip(batch, reason)
        return self._pending is not None

    def next_batch(self) -> Any:
        batch, self._pending = self._pending, None
        return batch


def _unreadable(batch: Any, check_crcs: bool) -> str | None:
    if check_crcs and not batch.validate_crc():
        return "CRC mismatch"
    codec = getattr(batch, "compression_type", 0)
    if codec not in KNOWN_CODECS:
        return f"unknown compression codec {codec:#04x}"
    return None


class _CheckingPartitionRecords(aiokafka_fetcher.PartitionRecords):  # type: ignore[misc]
    #: where skipped batches are reported; set by :class:`WorkerApp` for its process
    reports: queue.SimpleQueue[SkippedBatch] | None = None

    def __init__(self, tp: Any, records: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(tp, _CheckedBatches(records, self), *args, **kwargs)

    @property
    def check_crcs(self) -> bool:
        return bool(self._check_crcs)

    def skip(self, batch: Any, reason: str) -> None:
        report = SkippedBatch(self._tp.topic, self._tp.partition, batch.base_offset, batch.next_offset - 1, reason)
        log.error(
            "undecodable record batch %s[%d]@%d-%d (%s): skipped, reported as a dead letter",
            report.topic,
            report.partition,
            report.first_offset,
            report.last_offset,
            reason,
        )
        UNDECODABLE_BATCHES.labels(report.topic).inc()
        self.next_fetch_offset: int = max(int(self.next_fetch_offset), int(batch.next_offset))
        if self.reports is not None:
            self.reports.put(report)


class _WorkerConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka builds its fetcher from these when the consumer starts (Faust fixes the wait at 1.5 s)
        consumer._isolation_level = ISOLATION_LEVEL
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_max_wait_s", 1.5) * 1000)
        _CheckingPartitionRecords.reports = getattr(self.app, "undecodable", None)
        aiokafka_fetcher.PartitionRecords = _CheckingPartitionRecords
        return consumer


class _WorkerConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _WorkerConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _WorkerTransport(faust_aiokafka.Transport):
    Consumer = _WorkerConsumer


class WorkerApp(faust.App):
    """``faust.App`` whose worker consumer reads committed records only and skips (and reports) batches it cannot
    read; ``undecodable`` holds the reports until the worker dead-letters them."""

    def __init__(self, *args: Any, fetch_max_wait_s: float = 1.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.undecodable: queue.SimpleQueue[SkippedBatch] = queue.SimpleQueue()
        self.fetch_max_wait_s = fetch_max_wait_s

    def _new_transport(self) -> TransportT:
        return _WorkerTransport(self.conf.broker_consumer, self)
