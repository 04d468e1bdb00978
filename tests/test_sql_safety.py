"""Every SQL value is bound as a parameter, never formatted into SQL: checked on the source itself.

The only things ever interpolated into SQL text are identifiers: the database name (validated by the
settings' pattern) and table/column names from the code's own constants. A new f-string SQL with any
other interpolation fails this test; values go through ``{name:Type}`` parameters (see test_sink).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings
from streams.sink.rows import TABLE_COLUMNS
from tests.conftest import REPO

SQL = re.compile(r"\b(SELECT|INSERT|CREATE|DROP|ALTER|DELETE|UPDATE|ATTACH|DETACH|TRUNCATE|FROM|WHERE)\b")
#: identifier-valued expressions allowed inside SQL f-strings, and why each is safe
IDENTIFIERS = {
    "db": "the database name (Settings.clickhouse_database, pattern-checked)",
    "self.db": "the same",
    "self.database": "the same",
    "settings.clickhouse_database": "the same",
    "table": "a key of TABLE_COLUMNS (the sink's own tables)",
    "cols": "backquoted column names from TABLE_COLUMNS",
    "_FILTER": "a constant WHERE fragment with {name:Type} parameters",
    "_BASE_COLUMNS": "a constant column list",
    "_QUEUE_ORDER[shuffled]": "one of two constant ORDER BY lists, chosen by a bool",
    "select": "the constant row expressions of a sink table (streams.sink.avro_intake.SELECTS)",
    "check": "the constant record checks of a sink table (streams.sink.avro_intake.CHECKS)",
}


def _sql_fstrings() -> list[tuple[str, int, list[str], str]]:
    found = []
    for package in ("streams", "agents", "schemas"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.JoinedStr):
                    literal = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
                    if SQL.search(literal):
                        exprs = [ast.unparse(v.value) for v in node.values if isinstance(v, ast.FormattedValue)]
                        found.append((str(path.relative_to(REPO)), node.lineno, exprs, literal))
    return found


def test_sql_text_interpolates_identifiers_only() -> None:
    found = _sql_fstrings()
    assert len(found) > 10  # the scan sees the code's SQL
    bad = [(path, line, expr) for path, line, exprs, _ in found for expr in exprs if expr not in IDENTIFIERS]
    assert not bad, f"values formatted into SQL (bind them as {{name:Type}} parameters): {bad}"


def test_no_sql_built_with_percent_or_format() -> None:
    offenders = []
    for package in ("streams", "agents", "schemas"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                is_format = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
                target = (
                    node.func.value if is_format else node.left if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) else None
                )  # type: ignore[union-attr]
                if isinstance(target, ast.Constant) and isinstance(target.value, str) and SQL.search(target.value):
                    offenders.append((str(path.relative_to(REPO)), node.lineno))
    assert not offenders


@pytest.mark.parametrize("name", ["x; DROP TABLE t", "a.b", "x`y", "1abc", "a" * 65, ""])
def test_database_name_is_an_identifier(name: str) -> None:
    with pytest.raises(ValidationError):
        Settings(clickhouse_database=name)


def test_table_and_column_names_are_plain_identifiers() -> None:
    for table, columns in TABLE_COLUMNS.items():
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", table)
        assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", c) for c in columns)


def test_migrations_interpolate_only_the_database() -> None:
    for path in sorted((REPO / "streams" / "sink" / "migrations").glob("*.sql")):
        assert set(re.findall(r"\{(\w+)\}", path.read_text())) <= {"db"}, path
    assert Path(REPO / "streams" / "sink" / "migrations.py").read_text().count(".format(") == 0
