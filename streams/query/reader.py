"""``ehrstream query``: one way in for analysts, whatever runs underneath."""

from __future__ import annotations

from typing import Any, Protocol

from streams.errors import QueryRefusedError, SinkError
from streams.query.endpoint import check_read_only, remote_query, running_endpoint
from streams.settings import Settings
from streams.sink.backend import READONLY_CODE, ClickHouseBackend, QueryResult, open_backend


class Reader(Protocol):
    """What reads ClickHouse: a backend, or the embedded sink's query endpoint."""

    database: str

    def query(self, sql: str, parameters: dict[str, Any] | None = None, read_only: bool = False) -> QueryResult: ...

    def close(self) -> None: ...


class EndpointReader:
    """Reads through the running embedded sink's query endpoint (it owns chdb); read-only."""

    def __init__(self, endpoint: dict[str, Any], database: str) -> None:
        self.endpoint = endpoint
        self.database = database

    def query(self, sql: str, parameters: dict[str, Any] | None = None, read_only: bool = True) -> QueryResult:
        return remote_query(self.endpoint, sql, parameters, allow_writes=not read_only)

    def close(self) -> None:
        """Nothing to release: each query is one HTTP request."""


def open_reader(settings: Settings, direct_ok: bool = False) -> Reader | ClickHouseBackend:
    """Server mode: a clickhouse-connect backend. Embedded: the running sink's endpoint (``ehrstream up``); with
    ``direct_ok`` and no stack running, the chdb data directory itself (one-shot commands only: it locks it)."""
    if settings.embedded_clickhouse:
        endpoint = running_endpoint(settings.data_dir)
        if endpoint is not None:
            return EndpointReader(endpoint, settings.clickhouse_database)
        if not direct_ok:
            raise SinkError("connect", f"no embedded stack is running on {settings.data_dir} (start it with `ehrstream up`)")
        if not (settings.data_dir / "chdb").exists():
            raise SinkError("query", f"no embedded database under {settings.data_dir} (run `ehrstream demo` or `ehrstream up` first)")
    return open_backend(settings)


def run_query(settings: Settings, sql: str, parameters: dict[str, Any] | None, allow_writes: bool = False) -> QueryResult:
    """Server mode: clickhouse-connect. Embedded: the running sink's endpoint, else chdb opened here. Without
    ``allow_writes`` ClickHouse runs the statement read-only (its ``readonly`` setting), after a first-word check
    that gives the clearer message."""
    if not allow_writes:
        check_read_only(sql)
    reader = open_reader(settings, direct_ok=True)
    try:
        return reader.query(sql, parameters, read_only=not allow_writes)
    except SinkError as exc:
        if exc.code == READONLY_CODE:
            raise QueryRefusedError(f"ClickHouse refused it in read-only mode ({exc.reason}); pass --allow-writes to run it") from None
        raise
    finally:
        reader.close()


def format_table(result: QueryResult, max_width: int = 60) -> str:
    def cell(value: Any) -> str:
        text = "NULL" if value is None else str(value)
        text = text.replace("\n", " ")
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    rows = [[cell(v) for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(result.columns)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [" | ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True)), line]
    out += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
