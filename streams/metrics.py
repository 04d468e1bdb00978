"""Prometheus metrics, one registry per process, served on ``metrics_port`` (0 = off).

Labels are bounded (stages, tables, task/kind/label from the configured models, dead-letter
kinds); no note id or text is ever a label value.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from agents.types import BatchResult

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RECORDS_IN = Counter("ehrstream_worker_records_in", "Records taken from the notes topic")
NOTES_OUT = Counter("ehrstream_worker_notes_out", "Extractions produced, by routing status", ["status"])
DEAD_LETTERS = Counter("ehrstream_dead_letters", "Records dead-lettered, by stage and kind", ["stage", "kind"])
REVIEW_REASONS = Counter("ehrstream_review_reasons", "Decisions below threshold, by task, kind and label", ["task", "kind", "label"])
BATCH_NOTES = Histogram("ehrstream_worker_batch_notes", "Records per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
STAGE_SECONDS = Histogram("ehrstream_stage_seconds", "Wall seconds per batch and stage", ["stage"], buckets=_LATENCY_BUCKETS)
STAGE_CPU_SECONDS = Counter("ehrstream_stage_cpu_seconds", "CPU seconds of the thread running each stage", ["stage"])
UNDECODABLE_BATCHES = Counter(
    "ehrstream_undecodable_batches", "Record batches the worker could not read (CRC, unknown codec) and skipped", ["topic"]
)
SINK_ROWS = Counter("ehrstream_sink_rows", "Rows written to ClickHouse, by table", ["table"])
SINK_RETRIES = Counter("ehrstream_sink_retries", "ClickHouse writes retried")
CONSUMER_LAG = Gauge(
    "ehrstream_consumer_lag", "Records on the topic not yet committed by this process's consumer group", ["group", "topic", "partition"]
)
REVIEW_BACKLOG = Gauge("ehrstream_review_backlog", "Review tasks waiting, by task (the review_backlog view)", ["task"])
REVIEW_OLDEST_AGE = Gauge("ehrstream_review_oldest_age_seconds", "Age of the oldest waiting review task, by task", ["task"])
AUTO_PRECISION = Gauge(
    "ehrstream_auto_precision", "Audited precision of auto-accepted items, by task, label and model version", ["task", "label", "model"]
)
AUTO_PRECISION_LOWER = Gauge(
    "ehrstream_auto_precision_lower", "Lower end of the 95% interval of the audited precision", ["task", "label", "model"]
)
AUTO_PRECISION_LOW = Gauge(
    "ehrstream_auto_precision_low", "1 when a task's audited precision may be below the target (lower end below it)", ["task", "model"]
)
REVIEW_ITEMS = Counter("ehrstream_review_flagged_items", "Items flagged for review (labels, spans, possible missed spans)")
NOTES_AUDITED = Counter("ehrstream_notes_audited", "Notes sent to review as a random audit")
REVIEW_DECISIONS = Counter("ehrstream_review_decisions", "Review decisions published by the review app, by outcome", ["outcome"])
GPU_MEMORY = Gauge("ehrstream_gpu_memory_bytes", "GPU memory held by this process's tensors", ["device", "kind"])
GPU_UTILISATION = Gauge("ehrstream_gpu_utilisation_percent", "GPU utilisation as the driver reports it (needs pynvml)", ["device"])


def serve(port: int) -> None:
    """Serve ``/metrics`` on all interfaces (containers are scraped from outside) when ``port`` > 0."""
    if port > 0:
        start_http_server(port)
        log.info("metrics on :%d/metrics", port)


def record_batch(result: BatchResult, records: int, produce_seconds: float) -> None:
    RECORDS_IN.inc(records)
    BATCH_NOTES.observe(records)
    NOTES_OUT.labels("auto_accepted").inc(result.auto_accepted)
    NOTES_OUT.labels("pending_review").inc(result.routed_to_review)
    REVIEW_ITEMS.inc(result.flagged_items)
    NOTES_AUDITED.inc(result.audited)
    for kind, count in result.dead_kinds.items():
        DEAD_LETTERS.labels("worker", kind).inc(count)
    for (task, kind, label), count in result.review_reasons.items():
        REVIEW_REASONS.labels(task, kind, label).inc(count)
    for stage, seconds in result.stage_seconds.items():
        STAGE_SECONDS.labels(stage).observe(seconds)
    for stage, seconds in result.stage_cpu_seconds.items():
        STAGE_CPU_SECONDS.labels(stage).inc(seconds)
    STAGE_SECONDS.labels("produce").observe(produce_seconds)


def register_gpu_metrics(device: str) -> bool:
    """GPU memory (allocated, reserved; torch's allocator) and utilisation, read at scrape time. False on CPU."""
    import torch

    from agents.runners.device import pick_device

    chosen = pick_device(device)
    if chosen.type != "cuda":
        return False
    index = chosen.index if chosen.index is not None else torch.cuda.current_device()
    name = f"cuda:{index}"
    GPU_MEMORY.labels(name, "allocated").set_function(lambda: float(torch.cuda.memory_allocated(index)))
    GPU_MEMORY.labels(name, "reserved").set_function(lambda: float(torch.cuda.memory_reserved(index)))

    def utilisation() -> float:
        try:
            return float(torch.cuda.utilization(index))
        except Exception:  # no pynvml / NVML: report -1 rather than fail the scrape
            return -1.0

    GPU_UTILISATION.labels(name).set_function(utilisation)
    return True
