"""The server backend's code path (clickhouse-connect) on the real ClickHouse engine.

No ClickHouse server can run here, but clickhouse-connect can drive chdb through its own client API
(``chdb://`` DSN). That exercises ``ServerBackend`` as production uses it: clickhouse-connect's
parameter binding, ``raw_insert`` of JSONEachRow, result parsing (tuples as tuples), on the same
migrations and SQL as the sink. It runs in a subprocess because chdb allows one data directory per
process and the test process already holds one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PROBE = r"""
import json, sys
from pathlib import Path
from streams.settings import Settings
from streams.sink.backend import ServerBackend, open_backend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row
from tests.test_sink import extraction

backend = open_backend(Settings(clickhouse_url=f"chdb://{sys.argv[1]}"))
assert isinstance(backend, ServerBackend)
out = {"migrations": migrate(backend), "again": migrate(backend)}
rows = [extraction_row(extraction(f"n{i}"), 0, i) for i in range(3)]
rows += [extraction_row(extraction("n0"), 0, 0)]  # a replay
out["written"] = backend.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row(rows))
q = backend.query("SELECT note_id, entities FROM ehrstream.extractions_final WHERE note_id IN {ids:Array(String)} ORDER BY note_id",
                  {"ids": ["n0", "n2", "x'); DROP TABLE ehrstream.extractions; --"]})
out["final"] = [[r[0], [e["text"] for e in r[1]]] for r in q.rows]
out["count"] = backend.query("SELECT count() FROM ehrstream.extractions_final").scalar()
out["bound"] = backend.query("SELECT {v:String}", {"v": "it's; DROP"}).scalar()
out["views"] = backend.query("SELECT task, label, mentions FROM ehrstream.entity_counts_daily").rows
print(json.dumps(out, default=str))
"""


def test_server_backend_runs_the_same_sql_through_clickhouse_connect(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "chdb")], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    migrations = ["001_tables.sql", "002_review.sql", "003_analytics.sql", "004_clinical.sql", "005_items.sql", "006_merges.sql"]
    assert out["migrations"] == migrations and out["again"] == []
    assert out["final"] == [["n0", ["asthma"]], ["n2", ["asthma"]]]  # the injection attempt is just a value
    assert out["count"] == 3  # the replay collapsed
    assert out["bound"] == "it's; DROP"
    assert out["views"] == [["disease", "Disease", 3]]
