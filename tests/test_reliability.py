"""Crashes and outages done for real: kill -9 a worker and the sink, take ClickHouse away, and count.

Promise under test: at-least-once processing into an idempotent sink, so ``extractions_final``
holds every published note exactly once, whatever was killed or unavailable on the way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import Extraction
from streams.errors import SinkError
from streams.kafka.clients import admin, ensure_topics, producer
from streams.query.endpoint import remote_query, running_endpoint
from streams.runtime.broker import TansuBroker
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerProcess
from streams.settings import Settings, write_child_config
from streams.sink.backend import ChdbBackend
from streams.waiting import poll_until
from tests.conftest import REPO
from tests.test_sink import extraction

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry

pytestmark = [pytest.mark.slow]


def _publish_notes(settings: Settings, bootstrap: str, n: int, prefix: str) -> list[str]:
    codec = PLAIN.of(ClinicalNote)
    p = producer(settings, bootstrap)
    ids = []
    for i in range(n):
        note = ClinicalNote(
            note_id=f"{prefix}-{i}",
            patient_id=f"p-{i % 17}",
            note_type="progress_note",
            created_at=datetime(2026, 11, 1, tzinfo=UTC),
            # long enough that a micro-batch takes a while on the tiny models: the kill lands inside one
            text=f"Visit {i}. " + "Patient reports chest pain and shortness of breath after exertion. " * 40,
            source="reliability",
        )
        p.send(settings.topics.notes, key=note.note_id.encode(), value=codec.encode(note))
        ids.append(note.note_id)
    p.flush()
    p.close()
    return ids


def _committed(settings: Settings, bootstrap: str, group: str, topic: str) -> int:
    client = admin(settings, bootstrap)
    try:
        offsets = client.list_group_offsets(group).get(group, {})
    finally:
        client.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset >= 0)


def test_kill_9_worker_mid_batch_then_restart_stores_every_note_exactly_once(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend, tmp_path: Path
) -> None:
    settings = tiny_settings.model_copy(update={"batch_max_notes": 16})
    ensure_topics(settings, broker.bootstrap)
    ids = _publish_notes(settings, broker.bootstrap, 300, "crash")
    db = database.database
    sink = SinkThread(settings, broker.bootstrap, backend=database)
    sink.start()
    first = WorkerProcess(settings, broker.bootstrap, tmp_path / "worker-1.log")
    second = WorkerProcess(settings, broker.bootstrap, tmp_path / "worker-2.log")
    try:
        first.start()

        def some_stored() -> bool:
            assert first.alive(), (tmp_path / "worker-1.log").read_text()[-2000:]
            return int(database.query(f"SELECT count() FROM {db}.extractions").scalar()) >= 30

        poll_until(some_stored, 120, "the first worker's first batches", interval_s=0.25)
        first.kill()  # mid-run: batches in flight, offsets of processed records not yet committed
        stored_at_kill = int(database.query(f"SELECT uniqExact(note_id) FROM {db}.extractions").scalar())
        assert stored_at_kill < len(ids), "the worker finished before it was killed; the test needs more notes"

        second.start()
        poll_until(
            lambda: int(database.query(f"SELECT count() FROM {db}.extractions_final").scalar()) >= len(ids),
            180,
            "the restarted worker to catch up",
            interval_s=0.25,
        )
        time.sleep(1.5)  # anything still in flight would show up as an extra note now
        stored = [r[0] for r in database.query(f"SELECT note_id FROM {db}.extractions_final").rows]
        assert sorted(stored) == sorted(ids)  # every note, none twice, nothing else
        raw = int(database.query(f"SELECT count() FROM {db}.extractions").scalar())
        assert raw >= len(ids)  # replays (if the kill left any) are collapsed by the final view
        assert int(database.query(f"SELECT count() FROM {db}.dead_letters").scalar()) == 0
        # the restarted worker committed its progress: nothing left for a third one to redo
        poll_until(
            lambda: _committed(settings, broker.bootstrap, settings.worker_group, settings.topics.notes) == len(ids),
            30,
            "the worker group's commit",
            interval_s=0.25,
        )
    finally:
        first.kill()
        second.stop()
        sink.stop()


def _sink_process(
    settings: Settings, bootstrap: str, config: Path, log: Path, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "EHRSTREAM_DATA_DIR": str(settings.data_dir),
        "EHRSTREAM_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
        "EHRSTREAM_SINK_BATCH_ROWS": str(settings.sink_batch_rows),
        **(env_extra or {}),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "--config", str(config), "sink"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def sink_settings(tiny_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings for a sink subprocess with its own chdb directory (chdb: one data directory per process)."""
    yield tiny_settings.model_copy(update={"data_dir": tmp_path / "sink-data", "sink_batch_rows": 2000, "clickhouse_database": "ehrstream"})


def _count(settings: Settings, sql: str) -> int:
    """A count through the sink subprocess's query endpoint (it owns its chdb); -1 while it is (re)starting."""
    endpoint = running_endpoint(settings.data_dir)
    if endpoint is None:
        return -1
    try:
        return int(remote_query(endpoint, sql.replace("{db}", settings.clickhouse_database), None).scalar())
    except SinkError:
        return -1


def test_kill_9_sink_mid_insert_then_restart_stores_every_record_exactly_once(
    broker: TansuBroker, sink_settings: Settings, tmp_path: Path
) -> None:
    settings = sink_settings
    ensure_topics(settings, broker.bootstrap)
    config = write_child_config(settings, tmp_path / "sink.toml")
    codec = PLAIN.of(Extraction)
    n = 12_000
    p = producer(settings, broker.bootstrap)
    text = "Has asthma. " + "Stable on inhaled steroids, no exacerbation since the last visit. " * 25
    for i in range(n):
        # big rows make each insert take a while, so the kill lands in one
        p.send(settings.topics.extractions, key=f"s{i}".encode(), value=codec.encode(extraction(f"s{i}", text=text)))
    p.flush()
    p.close()

    first = _sink_process(settings, broker.bootstrap, config, tmp_path / "sink-1.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        poll_until(lambda: _count(settings, "SELECT count() FROM {db}.extractions") > 0, 120, "the sink's first insert", interval_s=0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert _committed(settings, broker.bootstrap, settings.sink_group, settings.topics.extractions) < n

        second = _sink_process(settings, broker.bootstrap, config, tmp_path / "sink-2.log")
        poll_until(
            lambda: _count(settings, "SELECT count() FROM {db}.extractions_final") >= n,
            180,
            "the restarted sink to catch up",
            interval_s=0.25,
        )
        assert _count(settings, "SELECT count() FROM {db}.extractions_final") == n
        assert _count(settings, "SELECT uniqExact(note_id) FROM {db}.extractions_final") == n
        assert _count(settings, "SELECT count() FROM {db}.dead_letters") == 0
        poll_until(
            lambda: _committed(settings, broker.bootstrap, settings.sink_group, settings.topics.extractions) == n,
            30,
            "the restarted sink's commit",
            interval_s=0.25,
        )
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


def test_clickhouse_outage_pauses_without_committing_and_catches_up(
    broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend
) -> None:
    """Embedded: the sink cannot write (the table is detached). It retries with backoff, commits nothing past
    what it wrote, and once the table is back it writes everything it held."""
    settings = tiny_settings
    ensure_topics(settings, broker.bootstrap)
    db = database.database
    codec = PLAIN.of(Extraction)
    p = producer(settings, broker.bootstrap)

    def send(prefix: str, n: int) -> None:
        for i in range(n):
            p.send(settings.topics.extractions, key=f"{prefix}{i}".encode(), value=codec.encode(extraction(f"{prefix}{i}")))
        p.flush()

    sink = SinkThread(settings, broker.bootstrap, backend=database)
    sink.start()
    try:
        send("before-", 30)
        poll_until(
            lambda: int(database.query(f"SELECT count() FROM {db}.extractions_final").scalar()) == 30,
            60,
            "the first 30 rows",
            interval_s=0.25,
        )
        poll_until(
            lambda: _committed(settings, broker.bootstrap, settings.sink_group, settings.topics.extractions) == 30,
            30,
            "commit",
            interval_s=0.25,
        )

        database.command(f"DETACH TABLE {db}.extractions")
        send("during-", 30)
        poll_until(lambda: sink.sink.stats.retries >= 3, 60, "the sink to retry", interval_s=0.25)
        assert sink.error is None  # still running, not crashed
        assert _committed(settings, broker.bootstrap, settings.sink_group, settings.topics.extractions) == 30

        database.command(f"ATTACH TABLE {db}.extractions")
        poll_until(
            lambda: int(database.query(f"SELECT count() FROM {db}.extractions_final").scalar()) == 60, 60, "the catch-up", interval_s=0.25
        )
        poll_until(
            lambda: _committed(settings, broker.bootstrap, settings.sink_group, settings.topics.extractions) == 60,
            30,
            "commit",
            interval_s=0.25,
        )
        ids = {r[0] for r in database.query(f"SELECT note_id FROM {db}.extractions_final").rows}
        assert ids == {f"before-{i}" for i in range(30)} | {f"during-{i}" for i in range(30)}
    finally:
        p.close()
        sink.stop()


def test_unreachable_clickhouse_server_is_retried_and_nothing_is_committed(
    broker: TansuBroker, sink_settings: Settings, tmp_path: Path
) -> None:
    """Server mode, ClickHouse down from the start: the sink stays up, retries with growing delays, consumes and
    commits nothing, logs no credentials, and stops cleanly on SIGTERM."""
    from streams.runtime.processes import free_port

    settings = sink_settings
    ensure_topics(settings, broker.bootstrap)
    p = producer(settings, broker.bootstrap)
    for i in range(5):
        p.send(settings.topics.extractions, key=b"k", value=PLAIN.of(Extraction).encode(extraction(f"u{i}")))
    p.flush()
    p.close()
    config = write_child_config(settings, tmp_path / "sink.toml")
    secret = "Pw-7f3a9c-planted"
    url = f"http://ingest:{secret}@127.0.0.1:{free_port()}"
    log = tmp_path / "sink.log"
    proc = _sink_process(settings, broker.bootstrap, config, log, {"CLICKHOUSE_URL": url, "EHRSTREAM_LOG_LEVEL": "DEBUG"})
    try:
        poll_until(lambda: log.read_text().count("retrying in") >= 3, 60, "three retries", interval_s=0.25)
        assert proc.poll() is None, log.read_text()[-2000:]
        assert _committed(settings, broker.bootstrap, settings.sink_group, settings.topics.extractions) == 0
        delays = [float(line.rsplit("retrying in ", 1)[1].split()[0]) for line in log.read_text().splitlines() if "retrying in" in line]
        assert delays[:3] == [0.5, 1.0, 2.0]  # backoff
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert secret not in log.read_text()
