"""One ClickHouse interface over two engines.

* :class:`ChdbBackend`: ClickHouse in-process (chdb), the embedded default. Its data
  directory can be opened by one process only, so in embedded mode the sink owns it and
  other commands reach it through the sink's query endpoint (``streams.sink.query_server``).
* :class:`ServerBackend`: a ClickHouse server through clickhouse-connect.

Both run the same SQL. Values are always bound as ``{name:Type}`` parameters, never
formatted into SQL; rows are inserted as JSONEachRow or Avro data, never as SQL text.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from streams.errors import QueryRefusedError, SinkError
from streams.settings import Settings


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


def _plain(value: Any, ch_type: Any) -> Any:
    """A clickhouse-connect value in the shape chdb's JSON gives it: a named Tuple as a dict (arrays of them too), so
    callers read ``entity["start"]`` whichever engine answered. Rows are normalised here, once."""
    kind = type(ch_type).__name__
    if kind == "Tuple" and getattr(ch_type, "element_names", None) and isinstance(value, tuple | list):
        return {n: _plain(v, t) for n, v, t in zip(ch_type.element_names, value, ch_type.element_types, strict=True)}
    if kind == "Array" and isinstance(value, list | tuple):
        return [_plain(v, ch_type.element_type) for v in value]
    return value


def as_utc(value: Any) -> datetime:
    """A ClickHouse DateTime64 as either engine returns it (text from chdb, a datetime from clickhouse-connect) as an
    aware UTC datetime: the one place datetimes from ClickHouse are normalised."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


_LITERALS_AND_COMMENTS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`|--[^\n]*|/\*.*?(?:\*/|$)", re.S)


def _statement_count(sql: str) -> int:
    """Statements in ``sql``: the parts between semicolons outside string literals, quoted names and comments."""
    code = _LITERALS_AND_COMMENTS.sub(" ", sql)
    return sum(1 for part in code.split(";") if part.strip())


#: ClickHouse's error code for a statement refused in readonly mode
READONLY_CODE = 164


class ClickHouseBackend(Protocol):
    database: str
    #: whether :meth:`insert_avro` may be used (the sink's columnar path); otherwise the sink reads every record itself
    reads_avro: bool

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None: ...

    def query(self, sql: str, parameters: dict[str, Any] | None = None, read_only: bool = False) -> QueryResult:
        """``read_only``: ClickHouse itself refuses anything but reads (its ``readonly = 1`` setting for this query:
        no writes, no DDL, no settings changes, no table functions that reach files, URLs or other servers)."""
        ...

    def insert_json(self, table: str, columns: list[str], payload: bytes) -> int: ...

    def insert_avro(self, statement: str, structure: str, payload: bytes) -> None:
        """Run ``statement`` (an ``INSERT ... SELECT ... FROM {source}``) over ``payload``, an Avro object container whose
        columns ClickHouse reads as ``structure`` (``streams.sink.avro_intake``); raises :class:`SinkError` if ClickHouse
        refuses any of it, and then nothing is written."""
        ...

    def close(self) -> None: ...


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    marker = "Code: "
    if marker in text:
        digits = text.split(marker, 1)[1].split(".", 1)[0].strip()
        return int(digits) if digits.isdigit() else None
    return None


def _quoted(text: str) -> str:
    """``text`` inside a single-quoted SQL string literal."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _reason(exc: BaseException) -> str:
    """A ClickHouse error as it may be logged: its first line, with quoted values (ClickHouse quotes the data it
    could not parse) and URL credentials blanked. Identifiers stay (they are in backticks)."""
    text = str(exc)
    line = text.splitlines()[0][:500] if text.strip() else type(exc).__name__
    line = re.sub(r"://[^/@\s]*@", "://***@", line)
    return re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "'…'", line)


def _literal(value: Any) -> str:
    """A value inside a composite parameter, in ClickHouse's text format (strings quoted and escaped)."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if value is None:
        return "NULL"
    return str(value)


def chdb_parameters(parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """chdb passes parameter values as text; arrays need ClickHouse's literal text. The server still parses
    each value as its declared ``{name:Type}``, so this is binding, not SQL formatting."""
    if not parameters:
        return None
    return {k: _literal(v) if isinstance(v, list | tuple) else v for k, v in parameters.items()}


#: the folder of a chdb data directory through which :meth:`ChdbBackend.insert_avro` hands ClickHouse a batch
SPOOL_FOLDER = "ehrstream-intake"


class ChdbBackend:
    """Embedded ClickHouse. Thread-safe: calls are serialised on one session."""

    reads_avro = True

    def __init__(self, path: Path, database: str) -> None:
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.database = database
        self._lock = threading.Lock()
        try:
            self._session = session.Session(str(path))  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise SinkError("open", f"chdb data directory {path} is unavailable (is another process using it?): {exc}") from exc
        #: where :meth:`insert_avro` puts a batch for chdb to read: a folder of the data directory (only this process
        #: has it open), so a process that is killed leaves nothing elsewhere and the next one reuses it
        self._spool = path / SPOOL_FOLDER

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        self._run(sql, parameters, "CSV")

    def query(self, sql: str, parameters: dict[str, Any] | None = None, read_only: bool = False) -> QueryResult:
        if read_only:
            # chdb runs every statement of a multi-statement text, and the setting below binds only the last one
            if _statement_count(sql) != 1:
                raise QueryRefusedError("one statement at a time in read-only mode")
            # on its own line, so a trailing `--` comment in the statement cannot swallow it; a statement that has its
            # own SETTINGS clause is refused by the parser
            sql = sql.rstrip().rstrip(";") + "\nSETTINGS readonly = 1"
        out = self._run(sql, parameters, "JSONCompact")
        if not out.strip():
            return QueryResult([], [])
        doc = json.loads(out)
        return QueryResult([c["name"] for c in doc["meta"]], doc["data"])

    def insert_json(self, table: str, columns: list[str], payload: bytes) -> int:
        """One insert on one thread: the sink's batches are tens of rows, and chdb's parallel insert pipeline cost more
        CPU in thread handoffs than it saved (16-note batches of tiny-model rows: 0.82-0.96 ms of CPU per note, 0.70-0.74
        on one thread), CPU the workers on the same host need."""
        cols = ", ".join(f"`{c}`" for c in columns)
        with self._lock:
            try:
                with self._session.send_insert(
                    f"INSERT INTO {self.database}.{table} ({cols}) SETTINGS max_threads = 1", "JSONEachRow"
                ) as ins:
                    ins.append(payload)
                    res = ins.finish()
            except Exception as exc:
                raise SinkError("insert", _reason(exc), _error_code(exc), table) from None
        return int(getattr(res, "rows_written", 0) or 0)

    def insert_avro(self, statement: str, structure: str, payload: bytes) -> None:
        """Through a file the statement reads with ``file()``: chdb's streaming insert takes no ``INSERT ... SELECT``,
        and it did not raise what a materialised view refused (chdb 4.4: the rows were dropped, the insert reported
        written), so the statement runs as a query, whose errors are raised."""
        with self._lock:
            self._spool.mkdir(exist_ok=True)
            spool = self._spool / "batch.avro"
            source = f"file('{_quoted(str(spool))}', 'Avro', '{_quoted(structure)}')"
            spool.write_bytes(payload)
            try:
                self._session.query(statement.format(source=source) + " SETTINGS max_threads = 1", "CSV")  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise SinkError("insert", _reason(exc), _error_code(exc)) from None
            finally:
                spool.unlink(missing_ok=True)

    def _run(self, sql: str, parameters: dict[str, Any] | None, fmt: str) -> str:
        with self._lock:
            try:
                res = self._session.query(sql, fmt, params=chdb_parameters(parameters))  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise SinkError("query", _reason(exc), _error_code(exc)) from None
        return res.bytes().decode("utf-8") if hasattr(res, "bytes") else str(res)

    def close(self) -> None:
        with self._lock:
            self._session.close()  # type: ignore[no-untyped-call]
            shutil.rmtree(self._spool, ignore_errors=True)


class ServerBackend:
    """A ClickHouse server through clickhouse-connect (HTTP).

    Connects on first use and again after a failed connect, so a server that is down when the sink
    starts is retried like one that goes down later. Credentials given here win over any in the URL;
    error messages name the failure, never the URL or the credentials.
    """

    reads_avro = False

    def __init__(self, url: str, database: str, username: str = "", password: str = "", connect_timeout_s: float = 10.0) -> None:
        self.database = database
        self._url = url
        self._username = username
        self._password = password
        self._connect_timeout_s = connect_timeout_s
        self._client: Any = None

    def _connected(self) -> Any:
        if self._client is None:
            import clickhouse_connect

            options: dict[str, Any] = {"dsn": self._url, "autogenerate_session_id": False, "connect_timeout": self._connect_timeout_s}
            if self._username:
                options["username"] = self._username
            if self._password:
                options["password"] = self._password
            try:
                self._client = clickhouse_connect.get_client(**options)
            except Exception as exc:
                raise SinkError("connect", f"ClickHouse server unreachable: {_reason(exc)}", _error_code(exc)) from None
        return self._client

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        client = self._connected()
        try:
            client.command(sql, parameters=parameters)
        except Exception as exc:
            raise SinkError("command", _reason(exc), _error_code(exc)) from None

    def query(self, sql: str, parameters: dict[str, Any] | None = None, read_only: bool = False) -> QueryResult:
        client = self._connected()
        try:
            res = client.query(sql, parameters=parameters, settings={"readonly": 1} if read_only else None)
        except Exception as exc:
            raise SinkError("query", _reason(exc), _error_code(exc)) from None
        types = list(res.column_types)
        return QueryResult(list(res.column_names), [[_plain(v, t) for v, t in zip(r, types, strict=True)] for r in res.result_rows])

    def insert_json(self, table: str, columns: list[str], payload: bytes) -> int:
        client = self._connected()
        try:
            summary = client.raw_insert(f"{self.database}.{table}", columns, insert_block=payload, fmt="JSONEachRow")
        except Exception as exc:
            raise SinkError("insert", _reason(exc), _error_code(exc), table) from None
        return int(getattr(summary, "written_rows", 0) or 0)

    def insert_avro(self, statement: str, structure: str, payload: bytes) -> None:
        """Not offered (``reads_avro`` is false): clickhouse-connect would send the container as the body of an
        ``INSERT ... SELECT ... FROM input() FORMAT Avro``, but no ClickHouse server runs here to test that against, and
        its chdb emulation (what ``test_server_backend.py`` drives) decodes a command's body as text. The server path
        keeps reading every record in Python until it can be tested."""
        raise NotImplementedError("the server backend does not read Avro batches")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def chdb_path(settings: Settings) -> Path:
    return settings.data_dir / "chdb"


def open_backend(settings: Settings) -> ClickHouseBackend:
    """The backend the settings name: chdb under ``data_dir`` unless ``CLICKHOUSE_URL`` is set."""
    if settings.embedded_clickhouse:
        return ChdbBackend(chdb_path(settings), settings.clickhouse_database)
    return ServerBackend(
        settings.clickhouse_url.get_secret_value(),
        settings.clickhouse_database,
        settings.clickhouse_user,
        settings.clickhouse_password.get_secret_value(),
    )
