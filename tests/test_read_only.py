"""Reads are read-only by ClickHouse's own ``readonly`` setting, not by parsing: the table functions that reach
outside (file, url, s3, remote), statements that slip past a first-word check, and multi-statement attempts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.errors import QueryRefusedError, SinkError
from streams.query.endpoint import QueryServer, remote_query
from streams.query.reader import run_query
from streams.settings import Settings
from streams.sink.backend import READONLY_CODE, ChdbBackend
from streams.sink.migrations import migrate
from tests.conftest import REPO

SECRET_FILE_LINE = "ehrstream-read-only-probe"

#: each passes the first-word check (a read) and would reach outside ClickHouse or change something
OUTSIDE = {
    "file": "SELECT count() FROM file('{path}', 'LineAsString')",
    "file_in_cte": "WITH x AS (SELECT * FROM file('{path}', 'LineAsString')) SELECT count() FROM x",
    "file_comment_trick": "SELECT count() FROM file('{path}', 'LineAsString') --",
    "url": "SELECT count() FROM url('http://127.0.0.1:9/x.csv', 'LineAsString')",
    "s3": "SELECT count() FROM s3('http://127.0.0.1:9/bucket-name/x.csv', 'LineAsString')",
    "remote": "SELECT count() FROM remote('127.0.0.1:9', system.one)",
    "settings_override": "SELECT count() FROM file('{path}', 'LineAsString') SETTINGS readonly = 0",
    "subquery_settings": "SELECT count() FROM (SELECT * FROM file('{path}', 'LineAsString') SETTINGS readonly = 0)",
}


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    path = tmp_path / "outside.txt"
    path.write_text(SECRET_FILE_LINE + "\n")
    return path


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_chdb_refuses_what_reaches_outside_in_read_only_mode(database: ChdbBackend, planted: Path, name: str) -> None:
    sql = OUTSIDE[name].format(path=planted)
    with pytest.raises(SinkError) as refused:
        database.query(sql, read_only=True)
    assert refused.value.code in (READONLY_CODE, 62)  # refused as a write, or (a second SETTINGS clause) unparsable
    if name == "file":  # the same statement is not refused for what it is: only read-only mode stops it
        assert database.query(sql).rows == [[1]]


def test_multi_statement_and_plain_reads(database: ChdbBackend, planted: Path) -> None:
    migrate(database)
    for sql in (
        f"SELECT 1; SELECT count() FROM file('{planted}', 'LineAsString')",
        f"DROP DATABASE {database.database}; SELECT 1",  # chdb would run the first statement without the setting
        f"SELECT 1 /* ; */; DROP DATABASE {database.database}",
    ):
        with pytest.raises(QueryRefusedError, match="one statement"):
            database.query(sql, read_only=True)
    assert database.query("SELECT 'a;b', `x;y` FROM (SELECT 1 AS `x;y`);", read_only=True).rows == [["a;b", 1]]
    assert database.query(f"SELECT count() FROM {database.database}.extractions_final", read_only=True).rows == [[0]]
    assert database.query("SELECT {v:String} -- a comment", {"v": "ok"}, read_only=True).rows == [["ok"]]


def test_the_query_command_and_the_endpoint_refuse_a_file_read(database: ChdbBackend, planted: Path, tmp_path: Path) -> None:
    """`ehrstream query` goes through the embedded sink's endpoint: the file never reaches the analyst."""
    migrate(database)
    server = QueryServer(database, tmp_path)
    server.start()
    try:
        endpoint = json.loads((tmp_path / "sink.json").read_text())
        sql = f"SELECT * FROM file('{planted}', 'LineAsString')"
        with pytest.raises(QueryRefusedError, match="readonly"):
            remote_query(endpoint, sql, None)
        with pytest.raises(QueryRefusedError):
            run_query(Settings(data_dir=tmp_path), sql, None)
        # with --allow-writes the operator may (the same statement reads the file)
        assert remote_query(endpoint, sql, None, allow_writes=True).rows == [[SECRET_FILE_LINE]]
    finally:
        server.stop()


PROBE = r"""
import json, sys
from streams.errors import SinkError
from streams.settings import Settings
from streams.sink.backend import open_backend
backend = open_backend(Settings(clickhouse_url=f"chdb://{sys.argv[1]}"))
out = {}
for name, sql in json.loads(sys.argv[2]).items():
    try:
        out[name] = ["ran", backend.query(sql, read_only=True).rows]
    except SinkError as exc:
        out[name] = ["refused", exc.code]
out["plain"] = backend.query("SELECT 41 + 1", read_only=True).rows
print(json.dumps(out))
"""


def test_server_backend_sends_readonly_to_clickhouse(tmp_path: Path, planted: Path) -> None:
    """The clickhouse-connect path (``readonly=1`` as a query setting), on the real engine in a subprocess."""
    statements = {name: sql.format(path=planted) for name, sql in OUTSIDE.items()}
    cmd = [sys.executable, "-c", PROBE, str(tmp_path / "chdb"), json.dumps(statements)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("plain") == [[42]]
    assert {name: verdict[0] for name, verdict in out.items()} == dict.fromkeys(OUTSIDE, "refused")
