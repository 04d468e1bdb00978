"""Private files (run files, child configs) are replaced whole, and a failed write leaves the old file and no debris."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from streams.runtime.runfiles import live_run_file, write_private_file, write_run_file
from streams.settings import Settings, write_child_config


def test_a_failed_write_keeps_the_old_file_and_leaves_no_staged_copy(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    write_run_file(path, {"pid": os.getpid(), "bootstrap": "127.0.0.1:9092"})
    with pytest.raises(UnicodeEncodeError):
        write_private_file(path, '{"pid": 1, "bootstrap": "\ud800"}')  # a lone surrogate cannot be written as UTF-8
    assert json.loads(path.read_text())["bootstrap"] == "127.0.0.1:9092"
    assert live_run_file(path) == {"pid": os.getpid(), "bootstrap": "127.0.0.1:9092"}
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]


def test_a_child_config_is_private_and_replaces_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "run" / "worker.toml"
    path.parent.mkdir()
    path.write_text("left over = true\n")
    os.chmod(path, 0o644)
    write_child_config(Settings(), path, bootstrap="127.0.0.1:19092")
    assert path.stat().st_mode & 0o777 == 0o600
    assert "left over" not in path.read_text()
    assert Settings.load(path).kafka_bootstrap_servers == "127.0.0.1:19092"
    assert [p.name for p in path.parent.iterdir()] == ["worker.toml"]


def test_a_run_file_is_never_read_half_written(tmp_path: Path) -> None:
    """A restarted stack rewrites the killed one's leftover run file while the CLI (or the durable-stack test) polls it."""
    path = tmp_path / "stack.json"
    write_run_file(path, {"pid": os.getpid(), "bootstrap": "left over"})
    stop = threading.Event()

    def rewrite() -> None:
        i = 0
        while not stop.is_set():
            write_run_file(path, {"pid": os.getpid(), "bootstrap": "x" * (i % 5000)})
            i += 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        seen = [live_run_file(path) for _ in range(3000)]
    finally:
        stop.set()
        writer.join()
    assert all(info is not None and info["pid"] == os.getpid() for info in seen)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]  # no staged copy left behind
