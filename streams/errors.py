"""Errors raised while moving records: broker, sink and configuration problems."""

from __future__ import annotations

from schemas.errors import EhrstreamError


class ConfigError(EhrstreamError):
    """Settings that cannot work (a placeholder secret in production, a missing model directory...)."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


class BrokerError(EhrstreamError):
    """The Kafka broker could not be started or reached."""

    def __init__(self, bootstrap: str, reason: str) -> None:
        super().__init__(f"broker {bootstrap}: {reason}")
        self.bootstrap = bootstrap
        self.reason = reason


class SinkError(EhrstreamError):
    """ClickHouse refused or failed a statement. ``code`` is ClickHouse's error code when known."""

    def __init__(self, operation: str, reason: str, code: int | None = None, table: str | None = None) -> None:
        super().__init__(f"{operation}{' ' + table if table else ''} failed: {reason}")
        self.operation = operation
        self.reason = reason
        self.code = code
        self.table = table


class SinkBackpressureError(SinkError):
    """ClickHouse could not take a batch in time; consumption pauses and the batch is retried, never dropped."""


class QueryRefusedError(EhrstreamError):
    """A statement the query command will not run (a write, without --allow-writes)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RegistryError(EhrstreamError):
    """A model registry change that cannot be made (an unknown version, nothing to roll back to, a duplicate)."""
