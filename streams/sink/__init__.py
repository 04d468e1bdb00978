"""The ClickHouse sink: one interface, two backends (chdb embedded, clickhouse-connect server), one SQL."""

from streams.sink.backend import ClickHouseBackend, QueryResult, open_backend

__all__ = ["ClickHouseBackend", "QueryResult", "open_backend"]
