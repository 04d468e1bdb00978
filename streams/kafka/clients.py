"""Kafka clients in one place: kafka-python producers/consumers/admin and Faust's broker settings.

All client configuration (bootstrap servers, timeouts, TLS and SASL) is derived here from
the settings, so every process talks to the broker the same way. The embedded Tansu
broker listens on loopback without TLS or SASL, so security settings apply only to a
broker named by ``KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.errors import BrokerError
from streams.kafka.undecodable import SkippedBatch, skip_undecodable_batches
from streams.settings import KafkaSecurity, Settings
from streams.waiting import backoff

#: every consumer ehrstream opens (Faust's aiokafka in the worker, kafka-python elsewhere) reads committed records only
ISOLATION_LEVEL = "read_committed"


def security(settings: Settings) -> KafkaSecurity:
    """The security settings that apply: the configured ones, or plain loopback for the embedded broker."""
    return KafkaSecurity() if settings.embedded_kafka else settings.kafka


def ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    """One TLS context for both client libraries: the CA bundle (or system trust), an optional client certificate."""
    if not sec.uses_tls:
        return None
    context = ssl.create_default_context(cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None)
    context.check_hostname = sec.ssl_check_hostname
    if sec.ssl_certfile is not None and sec.ssl_keyfile is not None:
        context.load_cert_chain(str(sec.ssl_certfile), str(sec.ssl_keyfile), sec.ssl_key_password.get_secret_value() or None)
    return context


def client_config(settings: Settings) -> dict[str, Any]:
    """kafka-python's security options for these settings (empty for plain connections)."""
    sec = security(settings)
    config: dict[str, Any] = {}
    if sec.security_protocol != "PLAINTEXT":
        config["security_protocol"] = sec.security_protocol
    context = ssl_context(sec)
    if context is not None:
        config["ssl_context"] = context
    if sec.uses_sasl:
        config["sasl_mechanism"] = sec.sasl_mechanism
        config["sasl_plain_username"] = sec.sasl_username
        config["sasl_plain_password"] = sec.sasl_password.get_secret_value()
    return config


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for these settings (None for plain connections)."""
    import faust

    sec = security(settings)
    context = ssl_context(sec)
    if sec.uses_sasl:
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value(),
            mechanism=sec.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_broker_settings(settings: Settings, bootstrap: str) -> dict[str, Any]:
    servers = [f"kafka://{s.strip()}" for s in bootstrap.split(",") if s.strip()]
    return {
        "broker": servers,
        "broker_credentials": faust_credentials(settings),
        "broker_rebalance_timeout": settings.rebalance_timeout_s,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": max(0.5, min(3.0, settings.session_timeout_s / 4)),
    }


def producer(settings: Settings, bootstrap: str, **extra: Any) -> KafkaProducer:
    batching = {"linger_ms": int(settings.producer_linger_seconds * 1000), "batch_size": settings.producer_batch_bytes}
    return KafkaProducer(**{"bootstrap_servers": bootstrap, "acks": "all", **batching, **client_config(settings), **extra})


def consumer(
    settings: Settings,
    bootstrap: str,
    *topics: str,
    group_id: str | None,
    on_undecodable: Callable[[SkippedBatch], None] | None = None,
    **extra: Any,
) -> KafkaConsumer:
    """A manually committing consumer that reads committed records only and skips the record batches it cannot read
    (logged, counted and handed to ``on_undecodable``; see ``streams.kafka.undecodable``). Tansu holds a group's first
    join for about half the session timeout."""
    session_ms = int(settings.session_timeout_s * 1000)
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(500, session_ms // 4),
        "isolation_level": ISOLATION_LEVEL,  # an aborted transaction's records are never read
        "fetch_max_wait_ms": int(settings.consumer_fetch_max_wait_seconds * 1000),
        **client_config(settings),
        **extra,
    }
    built = KafkaConsumer(*topics, **options)
    skip_undecodable_batches(built, on_undecodable)
    return built


def admin(settings: Settings, bootstrap: str, timeout_s: float = 10.0) -> KafkaAdminClient:
    ms = int(timeout_s * 1000)
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms, bootstrap_timeout_ms=ms, **client_config(settings))


def ensure_topics(settings: Settings, bootstrap: str, timeout_s: float = 30.0) -> list[str]:
    """Create the project's topics if missing; return the broker's topic list."""
    deadline = time.monotonic() + timeout_s
    try:
        for attempt in backoff(KafkaError, first_s=0.5, max_s=2.0, give_up_after_s=timeout_s):
            with attempt:
                client = admin(settings, bootstrap, timeout_s=max(1.0, min(10.0, deadline - time.monotonic())))
    except KafkaError as exc:
        raise BrokerError(bootstrap, f"unreachable: {type(exc).__name__}") from exc
    try:
        existing = set(client.list_topics())
        missing = [name for name in settings.topics.all() if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created them first
                client.create_topics([NewTopic(name, settings.topic_partitions, 1) for name in missing])
        return sorted(client.list_topics())
    finally:
        client.close()


def partition_count(settings: Settings, bootstrap: str, topic: str) -> int | None:
    """How many partitions ``topic`` has on the broker; None when the broker does not describe it."""
    client = admin(settings, bootstrap)
    try:
        described = client.describe_topics([topic])
    finally:
        client.close()
    found = [t for t in described if t.get("name") == topic and not t.get("error_code")]
    return (len(found[0]["partitions"]) or None) if found else None
