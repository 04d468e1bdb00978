"""Small JSON files that say a local process is running (its pid) and how to reach it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_run_file(path: Path, info: dict[str, Any]) -> None:
    """Write ``info`` to ``path`` (mode 0600) whole or not at all: a reader polling for the file (``ehrstream up`` read by
    the CLI, a test, a restarted stack over a killed one's leftover file) never sees it empty or half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
    os.replace(staged, path)


def live_run_file(path: Path) -> dict[str, Any] | None:
    """The file's content if the process it names (``pid``) is alive, else None (missing or stale file)."""
    if not path.exists():
        return None
    info: dict[str, Any] = json.loads(path.read_text())
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, PermissionError):
        return None
    return info
