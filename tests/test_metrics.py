"""Prometheus endpoints of a worker and a sink process, scraped over HTTP while they work."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from streams.kafka.clients import ensure_topics, producer
from streams.runtime.broker import TansuBroker
from streams.runtime.processes import free_port
from streams.runtime.workers import WorkerProcess
from streams.settings import Settings, write_child_config
from tests.test_reliability import _sink_process

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items()))


def test_worker_and_sink_metrics_are_scraped_with_lag_falling_to_zero(
    broker: TansuBroker, tiny_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EHRSTREAM_METRICS_LAG_SECONDS", "0.5")
    settings = tiny_settings.model_copy(update={"data_dir": tmp_path / "sink-data", "clickhouse_database": "ehrstream"})
    ensure_topics(settings, broker.bootstrap)
    config = write_child_config(settings, tmp_path / "ehrstream.toml")
    worker_port, sink_port = free_port(), free_port()
    sink = _sink_process(settings, broker.bootstrap, config, tmp_path / "sink.log", {"EHRSTREAM_METRICS_PORT": str(sink_port)})
    worker = WorkerProcess(settings, broker.bootstrap, tmp_path / "worker.log", metrics_port=worker_port)
    worker.start()
    try:
        p = producer(settings, broker.bootstrap)
        codec = PLAIN.of(ClinicalNote)
        for i in range(20):
            note = ClinicalNote(
                note_id=f"m{i}", patient_id="p", note_type="t", created_at="2026-11-01T00:00:00Z", text=f"Has asthma {i}.", source="m"
            )
            p.send(settings.topics.notes, key=note.note_id.encode(), value=codec.encode(note))
        p.send(settings.topics.notes, key=b"bad-1", value=b"\xff not a note")
        p.send(settings.topics.notes, key=b"bad-2", value=b'{"note_id": "x"}')
        p.flush()
        p.close()

        deadline = time.monotonic() + 120
        worker_m: Samples = {}
        sink_m: Samples = {}
        while time.monotonic() < deadline:
            assert worker.alive(), (tmp_path / "worker.log").read_text()[-2000:]
            assert sink.poll() is None, (tmp_path / "sink.log").read_text()[-2000:]
            try:
                worker_m, sink_m = scrape(worker_port), scrape(sink_port)
            except OSError:
                time.sleep(0.5)
                continue
            stored = total(sink_m, "ehrstream_sink_rows_total", table="extractions")
            worker_lag = total(worker_m, "ehrstream_consumer_lag", group=settings.worker_group)
            sink_lag = total(sink_m, "ehrstream_consumer_lag", group=settings.sink_group)
            lag_seen = "ehrstream_consumer_lag" in worker_m and "ehrstream_consumer_lag" in sink_m
            if stored == 20 and lag_seen and worker_lag == 0 and sink_lag == 0:
                break
            time.sleep(0.5)
        # the worker: notes in and out, dead letters by reason, stage latency histograms, batch sizes, review reasons
        assert total(worker_m, "ehrstream_worker_records_in_total") == 22
        assert total(worker_m, "ehrstream_worker_notes_out_total") == 20
        assert total(worker_m, "ehrstream_dead_letters_total", stage="worker") == 2
        assert {lab["kind"] for lab, v in worker_m["ehrstream_dead_letters_total"] if v} == {"undecodable", "validation_error"}
        for stage in ("decode", "tokenise", "infer", "postprocess", "encode", "produce"):
            assert total(worker_m, "ehrstream_stage_seconds_count", stage=stage) >= 1, stage
        assert total(worker_m, "ehrstream_worker_batch_notes_sum") == 22
        assert total(worker_m, "ehrstream_review_reasons_total", task="condition") > 0  # tiny random models: unsure
        assert worker_m["ehrstream_consumer_lag"] and total(worker_m, "ehrstream_consumer_lag", group=settings.worker_group) == 0
        assert "ehrstream_gpu_memory_bytes" not in worker_m  # CPU: no GPU series
        # the sink: rows by table, insert latency, its own lag
        assert total(sink_m, "ehrstream_sink_rows_total", table="extractions") == 20
        assert total(sink_m, "ehrstream_sink_rows_total", table="dead_letters") == 2
        assert total(sink_m, "ehrstream_stage_seconds_count", stage="insert") >= 1
        lags = [(lab["topic"], v) for lab, v in sink_m["ehrstream_consumer_lag"]]
        assert {t for t, _ in lags} == set(settings.topics.results()) and all(v == 0 for _, v in lags)
        # the Grafana dashboard's queries name series these processes really export (GPU: only on CUDA; review: the
        # review app's, checked in test_dashboard.py)
        from tests.test_dashboard import dashboard_metrics

        wanted = {
            m for m in dashboard_metrics() if not m.startswith(("ehrstream_gpu_", "ehrstream_review_backlog", "ehrstream_review_oldest"))
        }
        wanted -= {"ehrstream_review_decisions_total", "ehrstream_sink_retries_total"}  # no decision made, no retry needed here
        assert wanted - (set(worker_m) | set(sink_m)) == set()
    finally:
        worker.stop()
        sink.terminate()
        sink.wait(timeout=30)
