"""Micro-batches from a Faust stream that close when the notes stop coming, not on a clock.

Faust's ``Stream.take_events(max_, within)`` yields when ``max_`` events are buffered or
``within`` has passed since it started waiting. After each batch it waits the whole ``within``
again even when a fetch's worth of notes is already queued, and an idle agent wakes every
``within``. :func:`take_batches` keeps Faust's buffer, its back-pressure and its acks (the
events of a batch are acknowledged after the consumer of the batch is done with it, so a
crash replays them) and changes only when a batch closes: when ``max_events`` are in, when
no event arrived for ``linger`` (the queued notes have drained into the buffer), or when
the first event has waited ``within``. An idle agent waits for the first event without
waking up.

The buffering follows ``faust.streams.Stream.take_events`` of faust-streaming 0.15.3 (the
pinned version), whose private parts it uses: ``_enable_passive``, ``_processors`` and
``_active_agens``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

from faust.streams import Stream
from faust.types import ChannelT, EventT
from mode.utils.locks import Event


def take_batches(stream: Stream[Any], max_events: int, within: float, linger: float) -> AsyncGenerator[list[EventT[Any]], None]:
    """Batches of at most ``max_events`` events; see the module's docstring for when each closes."""
    batches = _take_batches(stream, max_events, within, linger)
    stream._active_agens.add(batches)  # the stream closes it on stop, as it does its own take generators
    return batches


async def _take_batches(stream: Stream[Any], max_events: int, within: float, linger: float) -> AsyncGenerator[list[EventT[Any]], None]:
    loop = asyncio.get_running_loop()
    events: list[EventT[Any]] = []
    first_at = 0.0
    arrived = Event()  # an event went into the buffer
    consumed = Event()
    consuming: asyncio.Future[None] | None = None  # set while the consumer holds a batch: the buffer does not grow

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, first_at
        if consuming is not None:
            try:
                await consuming
            finally:
                consuming = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("batch buffer found no current event")
        if not events:
            first_at = loop.time()
        events.append(event)
        arrived.set()
        if len(events) >= max_events:
            consumed.clear()
            await stream.wait(consumed)  # strict: never more than max_events in a batch
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged below, once the batch is consumed
    stream.add_processor(add_to_buffer)
    stream._enable_passive(cast(ChannelT[Any], aiter(cast(Any, stream.channel))))  # as take_events does
    try:
        while not stream.should_stop:
            if not events:
                arrived.clear()
                await stream.wait_for_stopped(arrived)
            while 0 < len(events) < max_events:
                left = first_at + within - loop.time()
                if left <= 0:
                    break
                arrived.clear()
                await stream.wait_for_stopped(arrived, timeout=min(linger, left))
                if not arrived.is_set():
                    break  # quiet for ``linger``: what was queued is in
            if not events:
                continue
            consuming = loop.create_future()
            try:
                yield list(events)
            finally:
                batch = list(events)
                events.clear()
                for event in batch:
                    await stream.ack(event)
                if not consuming.done():
                    consuming.set_result(None)
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
