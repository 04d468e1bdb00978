"""Kafka clients in one place: kafka-python producers/consumers/admin and Faust's broker settings.

All client configuration (bootstrap servers, timeouts, and later TLS/SASL) is derived
here from the settings, so every process talks to the broker the same way.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.errors import BrokerError
from streams.settings import Settings


def faust_broker_settings(settings: Settings, bootstrap: str) -> dict[str, Any]:
    servers = [f"kafka://{s.strip()}" for s in bootstrap.split(",") if s.strip()]
    return {
        "broker": servers,
        "broker_rebalance_timeout": settings.rebalance_timeout_s,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": max(0.5, min(3.0, settings.session_timeout_s / 4)),
    }


def producer(bootstrap: str, **extra: Any) -> KafkaProducer:
    return KafkaProducer(**{"bootstrap_servers": bootstrap, "acks": "all", "linger_ms": 5, **extra})


def consumer(bootstrap: str, *topics: str, group_id: str | None, session_timeout_s: float = 45.0, **extra: Any) -> KafkaConsumer:
    """A manually committing consumer. Tansu holds a group's first join for about half the session timeout."""
    session_ms = int(session_timeout_s * 1000)
    return KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(500, session_ms // 4),
        **extra,
    )


def ensure_topics(settings: Settings, bootstrap: str, timeout_s: float = 30.0) -> list[str]:
    """Create the project's topics if missing; return the broker's topic list."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise BrokerError(bootstrap, f"unreachable: {type(exc).__name__}") from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in settings.topics.all() if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created them first
                admin.create_topics([NewTopic(name, settings.topic_partitions, 1) for name in missing])
        return sorted(admin.list_topics())
    finally:
        admin.close()
