"""`ehrstream init`: the one-shot set-up of a deployment (topics, ClickHouse migrations, schemas in the registry)."""

from __future__ import annotations

from collections.abc import Callable

from streams.settings import Settings


def initialise(settings: Settings, bootstrap: str, wait_seconds: float, echo: Callable[[str], None]) -> bool:
    """Create the topics, apply the migrations and (with a registry) register the schemas, waiting with backoff up
    to ``wait_seconds`` for the broker and ClickHouse. Safe to run again. False when a schema is incompatible;
    :class:`SinkError` when ClickHouse is still not ready."""
    from streams.errors import SinkError
    from streams.kafka.clients import ensure_topics
    from streams.kafka.schema_registry import check_schemas
    from streams.sink.backend import open_backend
    from streams.sink.migrations import migrate
    from streams.waiting import backoff

    topics = ensure_topics(settings, bootstrap, timeout_s=wait_seconds)
    echo(f"topics: {', '.join(t for t in topics if t in settings.topics.all())}")
    backend = open_backend(settings)
    try:
        waiting = backoff(
            SinkError, first_s=1.0, give_up_after_s=wait_seconds, on_retry=lambda e, *_: echo(f"waiting for ClickHouse ({e})")
        )
        for attempt in waiting:
            with attempt:
                applied = migrate(backend)
    finally:
        backend.close()
    echo(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
    if not settings.schema_registry_url:
        return True
    statuses = check_schemas(settings, register=True)
    for status in statuses:
        echo(f"schema {status.subject}: {'id ' + str(status.registry_id) if status.ok else 'INCOMPATIBLE'}")
    return all(s.ok for s in statuses)
