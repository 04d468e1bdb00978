"""Small JSON files that say a local process is running (its pid) and how to reach it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) whole or not at all: it is staged beside the file and renamed over it, so a
    reader polling for the file (``ehrstream up`` read by the CLI, a test, a restarted stack over a killed one's leftover
    file, a child process reading its config) never sees it empty or half written, and a failed write leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def write_run_file(path: Path, info: dict[str, Any]) -> None:
    """``info`` as JSON through :func:`write_private_file`."""
    write_private_file(path, json.dumps(info))


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
