"""The worker's Kafka consumer, as ehrstream needs it of Faust's aiokafka driver: committed records only, and no
batch that cannot be read stops its partition.

* **Committed only.** Feeds that produce with transactions (Kafka Connect, Debezium, exactly-once Java or
  librdkafka producers) abort some of them, and an aborted note must never be extracted. faust-streaming 0.15 sets
  ``isolation_level=read_committed`` only when the app runs exactly-once itself, so the worker's consumer is built
  here with it set.
* **Undecodable batches are skipped, reported, and the partition flows on**, by the policy of
  ``streams.kafka.undecodable``: the reports go to :attr:`WorkerApp.undecodable`, which the worker turns into one
  dead letter per batch. aiokafka builds its per-partition record iterators from
  ``aiokafka.consumer.fetcher.PartitionRecords``; the worker replaces that one class with a checking subclass when it
  builds its consumer (the only patch of a library in ehrstream, and only in the worker process).
"""

from __future__ import annotations

import logging
import queue
from typing import Any

import aiokafka
import faust
from aiokafka.consumer import fetcher as aiokafka_fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from streams.kafka.clients import ISOLATION_LEVEL
from streams.kafka.undecodable import SkippedBatch, report, unreadable

log = logging.getLogger(__name__)


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
            reason = unreadable(batch, self._owner.check_crcs)
            if reason is None:
                self._pending = batch
            else:
                self._owner.skip(batch, reason)
        return self._pending is not None

    def next_batch(self) -> Any:
        batch, self._pending = self._pending, None
        return batch


class _CheckingPartitionRecords(aiokafka_fetcher.PartitionRecords):  # type: ignore[misc]
    #: where skipped batches are reported; set by :class:`WorkerApp` for its process
    reports: queue.SimpleQueue[SkippedBatch] | None = None

    def __init__(self, tp: Any, records: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(tp, _CheckedBatches(records, self), *args, **kwargs)

    @property
    def check_crcs(self) -> bool:
        return bool(self._check_crcs)

    def skip(self, batch: Any, reason: str) -> None:
        skipped = report(self._tp.topic, self._tp.partition, batch, reason)
        self.next_fetch_offset: int = max(int(self.next_fetch_offset), int(batch.next_offset))
        if self.reports is not None:
            self.reports.put(skipped)


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
