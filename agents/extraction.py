"""The extraction agent: notes topic in micro-batches, Extractions/ReviewTasks/DeadLetters out.

Batches are bounded by ``batch_max_notes`` and ``batch_max_seconds`` and close early when the
notes stop coming for ``batch_linger_seconds`` (:mod:`agents.batching`). The whole CPU/GPU
part of a batch (decode, tokenise, infer, encode) runs in a worker thread so Faust's
heartbeats and commits never stall. Every output is delivered (acknowledged by the
broker) before the batch's offsets are acknowledged, so a crash replays the batch
instead of losing it: at-least-once, made harmless by the sink's idempotent tables.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.streams import Stream

from agents.batching import take_batches
from agents.config import TopicSettings
from agents.pipeline import ExtractionPipeline
from agents.types import BatchResult, InRecord

log = logging.getLogger(__name__)

#: exit status of a worker that stopped rather than acknowledge an undelivered batch
EXIT_UNDELIVERED = 75

#: called after each delivered batch with (result, records taken, produce seconds): the metrics hook
BatchObserver = Callable[[BatchResult, int, float], None]


@dataclass(frozen=True)
class AgentConfig:
    """What the agent needs of the settings: its topics and the micro-batch bounds."""

    topics: TopicSettings
    topic_partitions: int
    batch_max_notes: int
    batch_max_seconds: float
    batch_linger_seconds: float


def register_extraction_agent(
    app: faust.App, config: AgentConfig, pipeline: ExtractionPipeline, on_batch: BatchObserver | None = None
) -> Any:
    notes = app.topic(config.topics.notes, value_serializer="raw", key_serializer="raw")
    outputs = {
        name: app.topic(name, value_serializer="raw", key_serializer="raw", partitions=config.topic_partitions)
        for name in (config.topics.extractions, config.topics.review, config.topics.deadletter)
    }
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @app.agent(notes, name="extract")
    async def extract(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()
        batches = take_batches(cast(Stream[bytes], stream), config.batch_max_notes, config.batch_max_seconds, config.batch_linger_seconds)
        async for events in batches:
            records = [
                InRecord(ev.message.value or b"", ev.message.key, ev.message.topic, ev.message.partition, ev.message.offset)
                for ev in events
            ]
            try:
                result = await loop.run_in_executor(executor, pipeline.process, records)
                started = time.perf_counter()
                pending = [await outputs[r.topic].send(key=r.key, value=r.value) for r in result.records]
                await asyncio.gather(*pending)
                produce_seconds = time.perf_counter() - started
            except Exception:
                first = records[0]
                log.critical(
                    "batch from %s[%d]@%d could not be delivered; exiting without acknowledging it so it is replayed",
                    first.topic,
                    first.partition,
                    first.offset,
                    exc_info=True,
                )
                logging.shutdown()
                os._exit(EXIT_UNDELIVERED)
            if on_batch is not None:
                on_batch(result, len(records), produce_seconds)
            log.info(
                "batch of %d: %d extracted (%d auto-accepted, %d to review), %d dead-lettered",
                len(records),
                result.extracted,
                result.auto_accepted,
                result.routed_to_review,
                result.dead_lettered,
            )

    return extract
