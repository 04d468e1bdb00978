"""The embedded stack as the bench and the soak run it: broker, sink in this process, worker subprocesses,
and the workers' own stage metrics scraped over HTTP."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from schemas.clinical_note import ClinicalNote
from streams.kafka.clients import ensure_topics, producer
from streams.kafka.schema_registry import build_codecs
from streams.runtime.broker import embedded_broker
from streams.runtime.processes import free_port
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerPool
from streams.settings import Settings
from streams.waiting import poll_until

log = logging.getLogger(__name__)


def scrape_stage_metrics(ports: Iterable[int]) -> dict[str, float]:
    """The workers' stage totals (``cpu:STAGE``, ``wall:STAGE`` seconds) and records, summed over their /metrics."""
    out: dict[str, float] = defaultdict(float)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "ehrstream_stage_cpu_seconds_total":
                    out["cpu:" + sample.labels["stage"]] += sample.value
                elif sample.name == "ehrstream_stage_seconds_sum":
                    out["wall:" + sample.labels["stage"]] += sample.value
                elif sample.name == "ehrstream_worker_records_in_total":
                    out["records"] += sample.value
    return out


def insert_seconds() -> float:
    value = REGISTRY.get_sample_value("ehrstream_stage_seconds_sum", {"stage": "insert"})
    return float(value or 0.0)


class BenchStack:
    """The embedded stack for the bench: broker, sink (this process) and worker subprocesses."""

    def __init__(self, settings: Settings, workers: int, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.broker = embedded_broker(settings, data_dir / "tansu.log").start()
        ensure_topics(settings, self.broker.bootstrap)
        self.sink = SinkThread(settings, self.broker.bootstrap)
        self.sink.start()
        self.metrics_ports = [free_port() for _ in range(workers)]
        self.pool = WorkerPool(settings, self.broker.bootstrap, data_dir, metrics_ports=self.metrics_ports)
        self.pool.start()
        self._written = 0
        self.producer = producer(settings, self.broker.bootstrap, linger_ms=20, batch_size=1 << 20, max_request_size=4 << 20)
        self.codec = build_codecs(settings).of(ClinicalNote)

    def publish(self, phase: str, texts: list[str], pace: Callable[[int], None] | None = None, first_index: int = 0) -> dict[str, float]:
        """Send the notes (``pace(i)`` waits for note ``i``'s turn), each timed when handed to the producer; the
        producer's linger (20 ms) groups what arrives together, as a publishing EHR feed's would, so pacing does
        not wait for each acknowledgement (a flush per note held the offered rate to about one produce round trip
        per note). Returns when every note is acknowledged."""
        sent: dict[str, float] = {}
        now = datetime.now(UTC)
        for i, text in enumerate(texts):
            if pace is not None:
                pace(i)
            note_id = f"{phase}-{first_index + i:07d}"
            note = ClinicalNote(note_id=note_id, patient_id="bench", note_type="abstract", created_at=now, text=text, source="bench")
            sent[note_id] = time.time()
            self.producer.send(self.settings.topics.notes, key=note_id.encode(), value=self.codec.encode(note))
        self.producer.flush()
        return sent

    def stored_rows(self) -> int:
        """Extraction rows the sink wrote since the last completed ``wait_for`` (its counter; no query)."""
        return self.sink.sink.stats.rows["extractions"] - self._written

    def stored(self, phase: str) -> int:
        db = self.settings.clickhouse_database
        result = self.sink.backend.query(
            f"SELECT uniqExact(note_id) FROM {db}.extractions WHERE startsWith(note_id, {{p:String}})",  # noqa: S608
            {"p": phase + "-"},
        )
        return int(result.scalar() or 0)

    def wait_for(self, phase: str, n: int, timeout_s: float) -> float:
        """Wall time at which the phase's ``n`` notes were all in ClickHouse. The sink's own row counter, read every
        20 ms, says when ``n`` more extraction rows were written, so the bench does not load ClickHouse while
        measuring. A replay writes some notes twice (a rebalance redelivers what was not committed: at least once),
        so the counter can get there first: the distinct notes are then counted in ClickHouse every 0.2 s until all
        ``n`` are in, and that time is the phase's end."""
        started = time.monotonic()
        target = self._written + n
        done = 0.0

        def alive() -> None:
            if not self.pool.all_alive():
                raise RuntimeError(f"a worker exited; see {self.data_dir}/worker*.log")
            if self.sink.error is not None:
                raise RuntimeError(f"the sink stopped: {self.sink.error}")

        def written() -> bool:
            nonlocal done
            alive()
            done = time.time()
            return self.sink.sink.stats.rows["extractions"] >= target

        def all_stored() -> bool:
            nonlocal done
            alive()
            done = time.time()
            return self.stored(phase) >= n

        try:
            poll_until(written, timeout_s, f"{phase}: {n} notes in ClickHouse", interval_s=0.02)
            if not all_stored():
                log.warning("%s: replayed rows reached the count first; waiting for every note", phase)
                poll_until(all_stored, max(0.0, timeout_s - (time.monotonic() - started)), f"{phase}: {n} notes", interval_s=0.2)
        except TimeoutError:
            raise TimeoutError(f"{phase}: only {self.stored(phase)} of {n} notes reached ClickHouse in {timeout_s:.0f} s") from None
        # the next phase counts from every row written so far, replays of this one included
        self._written = self.sink.sink.stats.rows["extractions"]
        return done

    def arrival_times(self, phase: str) -> dict[str, tuple[float, float]]:
        """Per note: when the worker built its extraction (``processed_at``) and when ClickHouse stored it."""
        db = self.settings.clickhouse_database
        rows = self.sink.backend.query(
            f"SELECT note_id, toUnixTimestamp64Milli(min(processed_at)), toUnixTimestamp64Milli(min(inserted_at)) "  # noqa: S608
            f"FROM {db}.extractions WHERE startsWith(note_id, {{p:String}}) GROUP BY note_id",
            {"p": phase + "-"},
        ).rows
        return {str(r[0]): (int(r[1]) / 1000, int(r[2]) / 1000) for r in rows}

    def close(self) -> None:
        self.producer.close(timeout=5)
        self.pool.stop()
        self.sink.stop()
        self.broker.stop()
