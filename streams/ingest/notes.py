"""ehrstream's own note files: JSONL (one ClinicalNote object per line) or CSV (a header naming the fields;
``meta`` as a JSON object)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.ingest.base import Record


def read_records(path: Path) -> Iterator[Record]:
    """(line number, parsed object) per record; a string instead of an object is a parse error."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                record: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "")}
                if "meta" in record:
                    try:
                        record["meta"] = json.loads(record["meta"])
                    except json.JSONDecodeError:
                        yield reader.line_num, "invalid_json: meta is not a JSON object"
                        continue
                yield reader.line_num, record
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"invalid_json: {exc.msg} at column {exc.colno}"
                continue
            yield number, obj if isinstance(obj, dict) else "invalid_json: not an object"
