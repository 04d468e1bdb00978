"""Consumer lag as a Prometheus gauge: end offset minus committed offset, per partition of a group's topics.

The committed offset is what a restart resumes from, so this is the work that a crash would
redo or that is still waiting; it is what Kafka operators watch (as Burrow or
kafka-consumer-groups do). A daemon thread refreshes it every ``interval_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from kafka import KafkaConsumer, TopicPartition

from streams.kafka.clients import ISOLATION_LEVEL, admin, client_config
from streams.metrics import CONSUMER_LAG
from streams.settings import Settings

log = logging.getLogger(__name__)


def group_lag(settings: Settings, bootstrap: str, group: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """Per partition: end offset minus the group's committed offset (the whole partition when nothing is committed)."""
    client = admin(settings, bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=ISOLATION_LEVEL, **client_config(settings))
    try:
        committed = client.list_group_offsets(group).get(group, {})
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        ends = consumer.end_offsets(parts) if parts else {}
        starts = consumer.beginning_offsets(parts) if parts else {}
        lag = {}
        for tp in parts:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else starts.get(tp, 0)
            lag[tp] = max(0, int(ends.get(tp, 0)) - int(position))
        return lag
    finally:
        consumer.close()
        client.close()


class LagMonitor:
    def __init__(self, settings: Settings, bootstrap: str, group: str, topics: Sequence[str], interval_s: float = 10.0) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.group = group
        self.topics = list(topics)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lag-{group}", daemon=True)

    def refresh(self) -> None:
        for tp, lag in group_lag(self.settings, self.bootstrap, self.group, self.topics).items():
            CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(lag)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # the broker is briefly away: keep the last values, try again
                log.warning("consumer lag of %s not refreshed: %s", self.group, type(exc).__name__)
            self._stop.wait(self.interval_s)

    def start(self) -> LagMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def monitor_lag(settings: Settings, bootstrap: str, group: str, topics: Sequence[str]) -> LagMonitor | None:
    """Start the lag gauge's refresher when this process serves metrics."""
    if not settings.metrics_port:
        return None
    return LagMonitor(settings, bootstrap, group, topics, settings.metrics_lag_seconds).start()
