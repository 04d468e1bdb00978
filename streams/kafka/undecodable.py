"""Record batches no consumer can read, and how every ehrstream consumer gets past them.

A batch whose CRC does not match its bytes, or whose compression codec is not one Kafka defines (none, gzip, snappy,
lz4, zstd), makes the Kafka clients raise on every fetch of its partition, so a consumer would crash and restart on
the same batch forever and the partition would stop. The policy, the same for the worker (aiokafka, see
``streams.kafka.worker_consumer``) and for the kafka-python consumers (the sink, the demo; see
:func:`skip_undecodable_batches`): the batch's whole offset range is skipped; it is logged (topic, partition, offset
range, reason; never content), counted (``ehrstream_undecodable_batches_total``) and handed to a callback that turns
it into a dead letter, kind ``undecodable`` (the raw bytes stay on the topic at the offsets the letter names: the
clients do not hand out a batch they cannot read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.fetcher import Fetcher

from schemas.dead_letter import DeadLetter, ErrorKind
from streams.metrics import UNDECODABLE_BATCHES

log = logging.getLogger(__name__)

#: the compression codecs Kafka defines (attribute bits 0-2 of a record batch)
KNOWN_CODECS = frozenset({0, 1, 2, 3, 4})


@dataclass(frozen=True)
class SkippedBatch:
    """A record batch a consumer could not read and skipped."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    reason: str

    def dead_letter(self, stage: str) -> DeadLetter:
        message = (
            f"record batch at offsets {self.first_offset}-{self.last_offset} could not be read ({self.reason}) and was "
            "skipped; its bytes are still on the topic at those offsets"
        )
        return DeadLetter.of_record(b"", None, self.topic, self.partition, self.first_offset, ErrorKind.undecodable, message, stage, 0)


def unreadable(batch: Any, check_crcs: bool) -> str | None:
    """Why a fetched record batch (aiokafka's or kafka-python's) cannot be read, or None."""
    if check_crcs and not batch.validate_crc():
        return "CRC mismatch"
    codec = getattr(batch, "compression_type", 0)
    if codec not in KNOWN_CODECS:
        return f"unknown compression codec {codec:#04x}"
    return None


def report(topic: str, partition: int, batch: Any, reason: str) -> SkippedBatch:
    """Log and count one skipped batch."""
    skipped = SkippedBatch(topic, partition, int(batch.base_offset), int(batch.next_offset) - 1, reason)
    log.error(
        "undecodable record batch %s[%d]@%d-%d (%s): skipped, reported as a dead letter",
        skipped.topic,
        skipped.partition,
        skipped.first_offset,
        skipped.last_offset,
        reason,
    )
    UNDECODABLE_BATCHES.labels(skipped.topic).inc()
    return skipped


class _CheckedMemoryRecords:
    """kafka-python's fetched batches of one partition, minus the ones that cannot be read."""

    def __init__(self, records: Any, owner: _CheckingPartitionRecords) -> None:
        self._records = records
        self._owner = owner

    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        while (batch := self._records.next_batch(*args, **kwargs)) is not None:
            reason = unreadable(batch, self._owner.checks_crcs)
            if reason is None:
                return batch
            self._owner.skip(batch, reason)
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


class _CheckingPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's per-partition record iterator that skips unreadable batches. The position it reports never
    falls back behind a skipped batch (kafka-python sets it from the last readable batch when a fetch ends)."""

    on_skip: Callable[[SkippedBatch], None] = staticmethod(lambda _skipped: None)

    def __init__(self, fetch_offset: int, tp: Any, records: Any, *args: Any, check_crcs: bool = True, **kwargs: Any) -> None:
        self._floor = -1
        self.checks_crcs = check_crcs  # checked here, once per batch; the parent would raise on a mismatch
        super().__init__(fetch_offset, tp, _CheckedMemoryRecords(records, self), *args, check_crcs=False, **kwargs)

    @property
    def next_fetch_offset(self) -> int:
        return max(self._next_fetch_offset, self._floor)

    @next_fetch_offset.setter
    def next_fetch_offset(self, value: int) -> None:
        self._next_fetch_offset = value

    def skip(self, batch: Any, reason: str) -> None:
        self._floor = max(self._floor, int(batch.next_offset))
        self.on_skip(report(self.topic_partition.topic, self.topic_partition.partition, batch, reason))


def skip_undecodable_batches(consumer: KafkaConsumer, on_skip: Callable[[SkippedBatch], None] | None = None) -> None:
    """Make one kafka-python consumer skip (log, count, and hand to ``on_skip``) the batches it cannot read.
    kafka-python's fetcher builds its record iterators from its own ``PartitionRecords`` attribute, so this sets a
    checking subclass on that one consumer's fetcher; no library class is changed."""
    callback = on_skip or (lambda _skipped: None)
    checking = type("CheckingPartitionRecords", (_CheckingPartitionRecords,), {"on_skip": staticmethod(callback)})
    consumer._fetcher.PartitionRecords = checking
