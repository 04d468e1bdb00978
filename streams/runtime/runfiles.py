"""Small JSON files that say a local process is running (its pid) and how to reach it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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
