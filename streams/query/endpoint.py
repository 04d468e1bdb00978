"""The embedded sink's query endpoint: how other processes reach the chdb it owns.

chdb's data directory opens in one process only. While the embedded sink runs, it
serves ``POST /query`` on loopback; ``ehrstream query`` (and later the review UI) find
it through ``<data_dir>/sink.json`` (port, pid and a random bearer token, mode 0600).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib import request

from streams.errors import QueryRefusedError, SinkError
from streams.runtime.runfiles import live_run_file, write_run_file
from streams.sink.backend import READONLY_CODE, ClickHouseBackend, QueryResult

log = logging.getLogger(__name__)

ENDPOINT_FILE = "sink.json"
READ_ONLY_VERBS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")


def check_read_only(sql: str) -> None:
    """Refuse anything but a single read statement."""
    stripped = sql.strip().rstrip(";").strip()
    if ";" in stripped:
        raise QueryRefusedError("one statement at a time")
    verb = stripped.split(None, 1)[0].upper() if stripped else ""
    if verb not in READ_ONLY_VERBS:
        raise QueryRefusedError(f"{verb or 'empty statement'} is not a read; pass --allow-writes to run it")


class QueryServer:
    def __init__(self, backend: ClickHouseBackend, data_dir: Path) -> None:
        self.backend = backend
        self.token = secrets.token_urlsafe(24)
        self.endpoint_file = data_dir / ENDPOINT_FILE
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # no request lines (queries may hold ids)
                return

            def do_POST(self) -> None:
                supplied = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if not hmac.compare_digest(supplied, server.token):
                    self._reply(401, {"error": "unauthorised"})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                    sql, params = str(body["sql"]), body.get("parameters") or None
                    read_only = not body.get("allow_writes")
                    if read_only:
                        check_read_only(sql)
                    result = server.backend.query(sql, params, read_only=read_only)
                    self._reply(200, {"columns": result.columns, "rows": result.rows})
                except QueryRefusedError as exc:
                    self._reply(403, {"error": exc.reason})
                except SinkError as exc:
                    status = 403 if exc.code == READONLY_CODE else 400
                    self._reply(status, {"error": exc.reason, "code": exc.code})
                except (ValueError, KeyError) as exc:
                    self._reply(400, {"error": f"bad request: {type(exc).__name__}"})

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload, default=str).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="query-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()
        write_run_file(self.endpoint_file, {"port": self.port, "pid": os.getpid(), "token": self.token})

    def stop(self) -> None:
        self.endpoint_file.unlink(missing_ok=True)
        self._httpd.shutdown()
        self._httpd.server_close()


def running_endpoint(data_dir: Path) -> dict[str, Any] | None:
    """The live sink's endpoint, or None when no sink process holds the data directory."""
    return live_run_file(data_dir / ENDPOINT_FILE)


def remote_query(endpoint: dict[str, Any], sql: str, parameters: dict[str, Any] | None, allow_writes: bool = False) -> QueryResult:
    body = json.dumps({"sql": sql, "parameters": parameters, "allow_writes": allow_writes}).encode()
    req = request.Request(
        f"http://127.0.0.1:{endpoint['port']}/query",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {endpoint['token']}", "Content-Type": "application/json"},
    )
    try:
        with request.urlopen(req, timeout=60) as resp:  # noqa: S310 (loopback URL built here)
            doc = json.loads(resp.read())
    except Exception as exc:
        payload = getattr(exc, "read", lambda: b"")()
        reason = json.loads(payload).get("error") if payload else str(exc)
        if getattr(exc, "code", None) == 403:
            raise QueryRefusedError(reason) from None
        raise SinkError("query", reason) from None
    return QueryResult(doc["columns"], doc["rows"])
