"""The embedded stack on durable storage: a crash of every process loses nothing a publisher was told was stored.

`ehrstream up` runs as a user runs it; 1,000 notes are published and acknowledged; mid-run, the broker, its object
store, the workers and the stack process itself (the sink, chdb) are all killed with SIGKILL; `ehrstream up` is
started again on the same data directory, and every note is in ``extractions_final`` exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents.config import TaskSettings
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import TaskKind
from streams.kafka.clients import producer
from streams.query.endpoint import remote_query, running_endpoint
from streams.runtime.stack import running_stack
from streams.settings import ReviewSettings, Settings, write_child_config
from streams.waiting import poll_until
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 1000


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children start their own sessions, so a process group would miss them)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        out += children
        frontier = children
    return out


def _start_up(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "--config", str(config), "up"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _final(data: Path) -> tuple[int, int]:
    endpoint = running_endpoint(data)
    if endpoint is None:
        return -1, -1
    row = remote_query(endpoint, "SELECT count(), uniqExact(note_id) FROM ehrstream.extractions_final", None).rows[0]
    return int(row[0]), int(row[1])


def _wait_for_stack(proc: subprocess.Popen[bytes], data: Path, log: Path) -> dict[str, Any]:
    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        return running_stack(data) is not None and running_endpoint(data) is not None

    poll_until(ready, 120, "ehrstream up", 0.2)
    stack = running_stack(data)
    assert stack is not None
    return stack


def test_sigkill_of_the_whole_durable_stack_loses_no_acknowledged_note(tmp_path: Path, tiny_ner_dir: Path, tiny_cls_dir: Path) -> None:
    data = tmp_path / "stack"
    settings = Settings(
        data_dir=data,
        embedded_storage="disk",
        review=ReviewSettings(port=0),
        topic_partitions=2,
        embedded_workers=1,
        torch_threads=1,
        batch_max_notes=8,
        batch_max_seconds=0.2,
        sink_flush_seconds=0.3,
        tasks=[
            TaskSettings(name="condition", kind=TaskKind.classification, model_dir=tiny_cls_dir, threshold=0.5),
            TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tiny_ner_dir, threshold=0.5),
        ],
    )
    config = write_child_config(settings, tmp_path / "ehrstream.toml")
    env = settings.child_environment(os.environ)
    log = tmp_path / "up.log"
    first = _start_up(config, env, log)
    try:
        stack = _wait_for_stack(first, data, log)
        p = producer(settings, stack["bootstrap"], acks="all")
        codec = Codecs().of(ClinicalNote)
        text = "Seen today for asthma, hypertension and type 2 diabetes; no chest pain. " * 6
        futures = []
        for i in range(N):
            note = ClinicalNote(
                note_id=f"d-{i:04d}", patient_id="p", note_type="progress_note", created_at="2026-11-01T08:00:00Z", text=text, source="t"
            )
            futures.append(p.send(settings.topics.notes, key=note.note_id.encode(), value=codec.encode(note)))
        p.flush()
        assert all(f.get(30) is not None for f in futures)  # every note acknowledged by the broker
        p.close()
        poll_until(lambda: _final(data)[0] >= 50, 120, "the first notes in ClickHouse", 0.1)
        stored_before = _final(data)[0]
        victims = _descendants(first.pid)
        for pid in [*victims, first.pid]:
            os.kill(pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert stored_before < N, "the stack finished before the crash: the test needs a slower run"
    assert len(victims) >= 3  # the broker, its object store and the worker died too

    second = _start_up(config, env, log)
    try:
        _wait_for_stack(second, data, log)
        poll_until(lambda: _final(data)[0] >= N, 300, f"{N} notes after the restart", 0.5)
        assert _final(data) == (N, N)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=60)
        except subprocess.TimeoutExpired:
            second.kill()
