"""``ehrstream bench``: the models alone against the whole stream, in one run, on one device.

1. **raw**: every task's model over pre-tokenised windows of the bench notes, batched and
   length-sorted exactly as the worker does, nothing else (notes/s over all tasks).
2. **e2e**: the embedded stack (Tansu, ``workers`` worker subprocesses, the sink on chdb):
   after a warm-up, ``notes`` notes are published as fast as possible and the clock stops
   when the last one's extraction row is in ClickHouse (notes/s).
3. **latency**: notes published at half the measured e2e rate; each note's latency is its
   ClickHouse ``inserted_at`` minus the moment it was sent (p50/p99).

   The warm-up, the e2e notes and the latency notes are consecutive slices of the bench notes
   (:func:`bench_notes`), so no phase repeats a note another has just sent (the workers' ICD-10-CM
   coder keeps a cache of the mentions it has coded) until the bench's source runs out.
4. **stages**: CPU seconds per note of each stage, from the workers' and the sink's
   Prometheus counters over the e2e phase (produce and insert are wall time: their work
   happens in client and ClickHouse threads).
5. **overhead**: the CPU seconds of every process of the stack over the e2e phase (this process with
   the publisher and the sink, the broker and its object store, the workers; read from ``/proc``),
   minus the CPU seconds inside the models' forward calls (the workers' ``forward`` stage), per note:
   what a GPU host pays on its CPUs for every note (``overhead_cpu_ms_per_note``).
6. **reference**: ``raw_reference_notes_per_s``, the plain float32 HF forward of the same models over
   the same windows in the same run, measured as raw is but in batches bounded by windows only: the fixed baseline
   the hot-path work is measured against (int8 and token-bounded batches both count as gains over it).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from streams.ops.bench_models import random_bert_tasks
from streams.ops.bench_stack import BenchStack, insert_seconds, scrape_stage_metrics
from streams.ops.process_cpu import cpu_by_role, tree_cpu
from streams.runtime.broker import EMBEDDED_TIMEOUTS
from streams.runtime.workers import worker_plan
from streams.settings import Settings

log = logging.getLogger(__name__)

#: "forward" is the model's own share of "infer" (the rest of infer: padding, the move back, softmax)
#: the worker's stages (CPU and wall), then the two measured wall only
WORKER_STAGES = ("decode", "tokenise", "infer", "postprocess", "sections", "assertion", "coding", "encode", "forward")
STAGES = (*WORKER_STAGES, "produce", "insert")
#: the stages that run the models, and the clinical layer measured against them
MODEL_STAGES = ("tokenise", "infer", "postprocess")
CLINICAL_STAGES = ("sections", "assertion", "coding")


@dataclass
class BenchResult:
    device: str
    models: str
    notes: int
    workers: int
    torch_threads_per_worker: int
    partitions: int
    median_note_chars: int
    #: the mean of the raw rate measured before and after the end-to-end phases (``raw_before_after``)
    raw_notes_per_s: float
    raw_before_after: tuple[float, float]
    e2e_notes_per_s: float
    ratio: float
    #: the rate the latency phase's notes were actually sent at (half the e2e rate is the aim)
    offered_notes_per_s: float
    latency_notes: int
    p50_ms: float
    p99_ms: float
    #: where the median latency goes: publish -> the worker built the extraction -> ClickHouse stored it
    latency_split_p50_ms: dict[str, float] = field(default_factory=dict)
    #: per stage: CPU ms per note of the thread that ran it (torch's own intra-op threads not included) and wall ms
    #: per note; produce and insert are wall only (their work is in client and ClickHouse threads)
    stage_ms_per_note: dict[str, dict[str, float]] = field(default_factory=dict)
    #: notes/s of each task's model alone, or of tasks sharing layers together (``"condition+disease"``)
    raw_by_task: dict[str, float] = field(default_factory=dict)
    #: what each task's model ran in (``ModelRunner.runs_in``: "bf16", "int8" or "float32"; "auto" resolved)
    precision_by_task: dict[str, str] = field(default_factory=dict)
    #: the plain float32 HF forward of the same models (no quantisation, batches bounded by windows only), measured like
    #: raw, in the same run
    raw_reference_notes_per_s: float = 0.0
    #: CPU ms per note of every process of the stack during the e2e phase, minus the models' forward calls
    overhead_cpu_ms_per_note: float | None = None
    #: CPU ms per note of every process of the stack during the e2e phase, all included
    total_cpu_ms_per_note: float | None = None
    #: the same, per part of the stack: the bench process (publisher and sink), the broker, its object store, the workers
    cpu_ms_per_note_by_process: dict[str, float] = field(default_factory=dict)
    #: ``overhead_cpu_ms_per_note`` during the latency phase: notes sent at half the rate, a few per produce request as
    #: a live feed sends them (the e2e phase sends them all at once, in large requests), until the last is stored
    latency_overhead_cpu_ms_per_note: float | None = None
    #: ``cpu_ms_per_note_by_process`` during the latency phase
    latency_cpu_ms_per_note_by_process: dict[str, float] = field(default_factory=dict)
    #: wall time of sections + assertion + coding over that of tokenise + infer + postprocess, same run
    clinical_share_of_model_stages: float | None = None
    date: str = ""


def bench_texts(n: int, datasets: Path) -> list[str]:
    """Realistic notes: medical abstracts (the train split; no scores are computed), repeated to ``n``."""
    from agents.learning.datasets import read_medical_abstracts

    source = datasets / "medical_abstracts" / "train.csv"
    if source.exists():
        texts = [e.text for e in read_medical_abstracts(source)]
    else:
        samples = Path(__file__).resolve().parents[1] / "samples" / "clinical_notes.jsonl"
        texts = [json.loads(line)["text"] for line in samples.read_text().splitlines() if line.strip()]
    return [texts[i % len(texts)] for i in range(n)]


def bench_notes(datasets: Path, *counts: int) -> list[list[str]]:
    """Consecutive slices of :func:`bench_texts`, one per count: the warm-up's, the e2e phase's, the latency phase's."""
    texts = bench_texts(sum(counts), datasets)
    ends = list(itertools.accumulate(counts))
    return [texts[end - count : end] for count, end in zip(counts, ends, strict=True)]


def raw_throughput(settings: Settings, texts: list[str], reference: bool = False) -> tuple[float, dict[str, float], dict[str, str]]:
    """Notes/s of the models alone over pre-tokenised windows (all tasks), per task, and what each task's model ran in
    (see ``BenchResult.precision_by_task``). ``reference``: the plain float32 HF models, whatever the tasks'
    quantisation."""
    import gc

    import torch

    from agents.runners.shared_trunk import forward_passes, shared_trunks
    from streams.worker import build_runners

    # the device at its best: torch's default threads, whatever the workers are limited to
    runners = build_runners(settings.model_copy(update={"torch_threads": 0}), reference=reference)
    total = 0.0
    by_task: dict[str, float] = {}
    precision = {r.task: r.runs_in for r in runners}
    # the passes the workers make: tasks sharing layers run those once per batch (never the reference's, whole models)
    passes = forward_passes(runners, [] if reference else shared_trunks(runners))
    for forward in passes:
        runner = forward.runners[0]
        windows = runner.preprocess(texts)
        # one whole untimed pass first: costs paid once per batch shape (allocations, kernels, a CUDA attention plan per
        # new batch and length) stay outside the clock, which then times the model at its steady rate
        forward.window_logits(windows)
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        forward.window_logits(windows)
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        by_task["+".join(forward.tasks)] = round(len(texts) / seconds, 2)
        total += seconds
    del runners
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return len(texts) / total, by_task, precision


def run_bench(
    settings: Settings,
    *,
    notes: int,
    datasets: Path,
    workers: int = 0,
    partitions: int | None = None,
    models: str = "default",
    latency_seconds: float = 30.0,
    echo: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """The bench in a fresh data directory (models, broker storage, ClickHouse: about 120 MB for 3,000 tiny-model notes),
    removed when the bench succeeds and kept, with the processes' logs, when it fails."""
    work = Path(tempfile.mkdtemp(prefix="ehrstream-bench-"))
    try:
        result = _bench_in(work, settings, notes, datasets, workers, partitions, models, latency_seconds, echo)
    except BaseException:
        echo(f"bench failed; its data directory and the processes' logs are kept in {work}")
        raise
    shutil.rmtree(work, ignore_errors=True)
    return result


def _bench_in(
    work: Path,
    settings: Settings,
    notes: int,
    datasets: Path,
    workers: int,
    partitions: int | None,
    models: str,
    latency_seconds: float,
    echo: Callable[[str], None],
) -> BenchResult:
    if models != "default":
        settings = settings.model_copy(update={"tasks": random_bert_tasks(work, models)})
    if workers:
        settings = settings.model_copy(update={"embedded_workers": workers})
    workers, threads = worker_plan(settings)
    partitions = partitions or max(4, workers)
    settings = settings.model_copy(
        update={
            **EMBEDDED_TIMEOUTS,
            "data_dir": work,
            "topic_partitions": partitions,
            "clickhouse_url": SecretStr(""),
            "kafka_bootstrap_servers": "",
        }
    )
    warm_count = max(2 * settings.batch_max_notes * workers, 16)
    warm, texts = bench_notes(datasets, warm_count, notes)
    device = _device_name(settings.device)
    echo(f"bench: {notes} notes (median {int(statistics.median(len(t) for t in texts))} chars), models {models}, device {device}")
    echo(f"{workers} worker process(es), {threads} torch thread(s) each, {partitions} partitions")

    raw_before, raw_by_task, precision = raw_throughput(settings, texts)
    echo(f"raw model throughput: {raw_before:.1f} notes/s {raw_by_task}, models in {precision}")
    reference, _, _ = raw_throughput(settings, texts, reference=True)
    echo(f"raw reference (plain float32 HF forward): {reference:.1f} notes/s")

    stack = BenchStack(settings, workers, work)
    try:
        stack.publish("warmup", warm)
        stack.wait_for("warmup", len(warm), timeout_s=600 + 20 * len(warm) / max(raw_before, 0.1))
        before, insert_before = scrape_stage_metrics(stack.metrics_ports), insert_seconds()
        echo("warm-up done; measuring peak")

        cpu_before = tree_cpu()
        sent = stack.publish("peak", texts)
        started = min(sent.values())
        finished = stack.wait_for("peak", len(texts), timeout_s=600 + 20 * len(texts) / max(raw_before, 0.1))
        cpu_after = tree_cpu()
        e2e = len(texts) / (finished - started)
        after, insert_after = scrape_stage_metrics(stack.metrics_ports), insert_seconds()
        echo(f"end to end: {e2e:.1f} notes/s ({e2e / raw_before:.2f} x raw before)")

        records = max(1.0, after["records"] - before["records"])

        def per_note(key: str) -> float:
            return round(1000 * (after[key] - before[key]) / records, 3)

        stage_ms = {stage: {"cpu": per_note("cpu:" + stage), "wall": per_note("wall:" + stage)} for stage in WORKER_STAGES}
        model_wall = sum(stage_ms[s]["wall"] for s in MODEL_STAGES)
        clinical_share = round(sum(stage_ms[s]["wall"] for s in CLINICAL_STAGES) / model_wall, 4) if model_wall else None
        stage_ms["produce"] = {"wall": per_note("wall:produce")}
        stage_ms["insert"] = {"wall": round(1000 * (insert_after - insert_before) / records, 3)}
        total_ms, overhead_ms, by_role = _phase_cpu(cpu_before, cpu_after, before, after, len(texts))
        if total_ms is not None:
            echo(f"CPU per note, every process: {total_ms:.2f} ms {by_role}; around the model: {overhead_ms:.2f} ms")

        rate = e2e / 2
        count = max(20, int(rate * latency_seconds))
        lat_texts = bench_notes(datasets, warm_count, notes, count)[2]
        echo(f"latency: {count} notes at {rate:.1f} notes/s")
        paced_before, paced_cpu_before = scrape_stage_metrics(stack.metrics_ports), tree_cpu()
        t0 = time.monotonic()

        def pace(i: int) -> None:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

        sent_at = stack.publish("latency", lat_texts, pace)
        times = sorted(sent_at.values())
        offered = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else rate
        stack.wait_for("latency", count, timeout_s=120 + 4 * count / rate)
        _, paced_overhead_ms, paced_by_role = _phase_cpu(
            paced_cpu_before, tree_cpu(), paced_before, scrape_stage_metrics(stack.metrics_ports), count
        )
        arrivals = stack.arrival_times("latency")
        latencies = sorted(1000 * (arrivals[k][1] - sent_at[k]) for k in sent_at)
        to_worker = sorted(1000 * (arrivals[k][0] - sent_at[k]) for k in sent_at)
        to_sink = sorted(1000 * (arrivals[k][1] - arrivals[k][0]) for k in sent_at)
    finally:
        stack.close()
    # the raw rate again, after the stack is gone: on a shared machine the mean of before and after is the fairer baseline
    raw_after, _, _ = raw_throughput(settings, texts)
    raw = (raw_before + raw_after) / 2
    echo(f"raw model throughput again: {raw_after:.1f} notes/s; baseline {raw:.1f}")
    return BenchResult(
        device=device,
        models=models,
        notes=notes,
        workers=workers,
        torch_threads_per_worker=threads,
        partitions=partitions,
        median_note_chars=int(statistics.median(len(t) for t in texts)),
        raw_notes_per_s=round(raw, 2),
        raw_before_after=(round(raw_before, 2), round(raw_after, 2)),
        e2e_notes_per_s=round(e2e, 2),
        ratio=round(e2e / raw, 3),
        offered_notes_per_s=round(offered, 2),
        latency_notes=len(latencies),
        p50_ms=round(_percentile(latencies, 50), 1),
        p99_ms=round(_percentile(latencies, 99), 1),
        latency_split_p50_ms={
            "sent_to_extracted": round(_percentile(to_worker, 50), 1),
            "extracted_to_stored": round(_percentile(to_sink, 50), 1),
        },
        stage_ms_per_note=stage_ms,
        raw_by_task=raw_by_task,
        precision_by_task=precision,
        raw_reference_notes_per_s=round(reference, 2),
        overhead_cpu_ms_per_note=overhead_ms,
        total_cpu_ms_per_note=total_ms,
        cpu_ms_per_note_by_process=by_role,
        latency_overhead_cpu_ms_per_note=paced_overhead_ms,
        latency_cpu_ms_per_note_by_process=paced_by_role,
        clinical_share_of_model_stages=clinical_share,
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
    )


def _phase_cpu(
    cpu_before: dict[int, tuple[str, float]] | None,
    cpu_after: dict[int, tuple[str, float]] | None,
    before: dict[str, float],
    after: dict[str, float],
    notes: int,
) -> tuple[float | None, float | None, dict[str, float]]:
    """CPU ms per note of every process of the stack over one phase (``tree_cpu`` and the workers' stage metrics at
    its start and end): in all, around the model (less the models' forward calls), and per part of the stack. None
    without /proc."""
    if cpu_before is None or cpu_after is None:
        return None, None, {}
    by_role = {k: round(1000 * v / notes, 3) for k, v in sorted(cpu_by_role(cpu_before, cpu_after).items())}
    total = round(sum(by_role.values()), 3)
    return total, round(total - 1000 * (after["cpu:forward"] - before["cpu:forward"]) / notes, 3), by_role


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _device_name(device: str) -> str:
    import torch

    from agents.runners.device import pick_device

    picked = pick_device(device)
    if picked.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(picked)})"
    return f"cpu ({os.cpu_count()} cores, torch {torch.get_num_threads()} threads)"


def format_result(result: BenchResult) -> str:
    rows = [
        ("device", result.device),
        ("models", result.models),
        ("workers x torch threads", f"{result.workers} x {result.torch_threads_per_worker}"),
        ("partitions", str(result.partitions)),
        ("notes (median chars)", f"{result.notes} ({result.median_note_chars})"),
        ("raw model, notes/s", f"{result.raw_notes_per_s:.1f} (before {result.raw_before_after[0]}, after {result.raw_before_after[1]})"),
        ("  per task alone", str(result.raw_by_task)),
        ("  models in", str(result.precision_by_task)),
        ("raw reference (float32 HF), notes/s", f"{result.raw_reference_notes_per_s:.1f}"),
        ("end to end, notes/s", f"{result.e2e_notes_per_s:.1f}"),
        ("ratio e2e / raw", f"{result.ratio:.3f}"),
        ("latency at notes/s", f"{result.offered_notes_per_s:.1f} ({result.latency_notes} notes)"),
        ("p50 / p99 ms", f"{result.p50_ms:.0f} / {result.p99_ms:.0f}"),
        ("  p50 split ms", str(result.latency_split_p50_ms)),
        ("CPU ms per note, all processes", _ms(result.total_cpu_ms_per_note)),
        ("  around the model (overhead)", _ms(result.overhead_cpu_ms_per_note)),
        ("  by process", str(result.cpu_ms_per_note_by_process)),
        ("  around the model, latency phase", _ms(result.latency_overhead_cpu_ms_per_note)),
        ("  by process, latency phase", str(result.latency_cpu_ms_per_note_by_process)),
    ]
    share = result.clinical_share_of_model_stages
    rows.append(("clinical layer / model stages (wall)", "n/a" if share is None else f"{share:.3f}"))
    rows.append(("stage, ms per note", "cpu (calling thread) / wall"))
    rows += [
        (f"  {stage}", f"{ms['cpu']:.3f} / {ms['wall']:.3f}" if "cpu" in ms else f"     - / {ms['wall']:.3f}")
        for stage, ms in result.stage_ms_per_note.items()
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _ms(value: float | None) -> str:
    return "n/a (no /proc)" if value is None else f"{value:.2f}"


def as_json(result: BenchResult) -> str:
    return json.dumps(asdict(result))
