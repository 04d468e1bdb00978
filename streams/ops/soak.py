"""``ehrstream soak``: a steady load for a bounded time, watching every process's memory.

The embedded stack (Tansu, worker subprocesses, the sink with chdb in this process) takes notes
at a fixed rate, below its capacity, for ``minutes`` (at most ``max_notes``), loopback only.
Every ``sample_seconds`` it records each process's resident memory (``/proc/PID/status``) and how
far ClickHouse is behind what was published. The verdict compares each process's memory over the
last quarter of the run with the second quarter: memory that levels off grows little between
them; a leak grows in proportion to the notes processed. A benchmark, not a test: it prints numbers.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import SecretStr

from streams.ops.bench import bench_texts
from streams.ops.bench_stack import BenchStack
from streams.runtime.broker import EMBEDDED_TIMEOUTS
from streams.runtime.workers import worker_plan
from streams.settings import Settings

#: growth between the second and the last quarter of the run, above which memory is called "still growing"
GROWTH_LIMIT_PCT = 10.0
#: the embedded broker on memory storage keeps every record in memory (no retention): it grows with the log by design,
#: so it is reported per note and left out of the verdict (on disk storage its object store is sampled and judged)
BROKER = "tansu"
#: the broker's object store, when it keeps its log on disk: an ehrstream process, judged like the others
OBJECT_STORE = "object store"


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class SoakSample:
    t_s: float
    published: int
    stored: int
    rss_mb: dict[str, float]


@dataclass
class SoakResult:
    rate_per_s: float
    seconds: float
    published: int
    stored: int
    workers: int
    samples: list[SoakSample] = field(default_factory=list)
    #: per process: mean RSS (MiB) over the second quarter and the last quarter, and the growth between them
    second_quarter_mb: dict[str, float] = field(default_factory=dict)
    last_quarter_mb: dict[str, float] = field(default_factory=dict)
    growth_pct: dict[str, float] = field(default_factory=dict)
    max_lag_notes: int = 0
    #: the embedded broker's growth per published note over the whole run (KiB)
    broker_kib_per_note: float = 0.0
    #: the broker kept its log on disk (in its object store) rather than in memory
    broker_on_disk: bool = False
    #: every ehrstream process (the broker aside) grew less than GROWTH_LIMIT_PCT between the quarters
    levels_off: bool = False


def _summarise(result: SoakResult) -> None:
    samples = result.samples
    n = len(samples)
    q2 = samples[n // 4 : n // 2] or samples[: max(1, n // 2)]
    q4 = samples[3 * n // 4 :] or samples[-1:]
    for name in samples[0].rss_mb:
        early = statistics.fmean(s.rss_mb[name] for s in q2)
        late = statistics.fmean(s.rss_mb[name] for s in q4)
        result.second_quarter_mb[name] = round(early, 1)
        result.last_quarter_mb[name] = round(late, 1)
        result.growth_pct[name] = round(100 * (late - early) / early, 1) if early else 0.0
    result.max_lag_notes = max(s.published - s.stored for s in samples)
    published = max(1, samples[-1].published - samples[0].published)
    result.broker_kib_per_note = round(1024 * (samples[-1].rss_mb[BROKER] - samples[0].rss_mb[BROKER]) / published, 2)
    result.levels_off = all(g < GROWTH_LIMIT_PCT for name, g in result.growth_pct.items() if name != BROKER)


def run_soak(
    settings: Settings,
    *,
    minutes: float,
    rate: float,
    datasets: Path,
    max_notes: int = 100_000,
    workers: int = 0,
    sample_seconds: float = 15.0,
    echo: Callable[[str], None] = lambda _: None,
) -> SoakResult:
    work = Path(tempfile.mkdtemp(prefix="ehrstream-soak-"))
    if workers:
        settings = settings.model_copy(update={"embedded_workers": workers})
    workers, _ = worker_plan(settings)
    settings = settings.model_copy(
        update={**EMBEDDED_TIMEOUTS, "data_dir": work, "clickhouse_url": SecretStr(""), "kafka_bootstrap_servers": ""}
    )
    duration = minutes * 60
    total = min(max_notes, int(duration * rate))
    texts = bench_texts(min(total, 500), datasets)
    stack = BenchStack(settings, workers, work)
    result = SoakResult(rate_per_s=rate, seconds=0.0, published=0, stored=0, workers=workers, broker_on_disk=stack.broker.durable)
    pids = {"sink+chdb (this process)": os.getpid(), BROKER: stack.broker.pid or 0}
    if stack.broker.store_pid is not None:
        pids[OBJECT_STORE] = stack.broker.store_pid
    pids.update({f"worker-{i}": w.pid or 0 for i, w in enumerate(stack.pool.workers)})
    try:
        warm = texts[: max(2 * workers, 8)]
        stack.publish("warmup", warm)
        stack.wait_for("warmup", len(warm), timeout_s=900)
        echo(f"soak: {total} notes at {rate}/s for up to {minutes:g} min, {workers} worker(s); sampling every {sample_seconds:g} s")
        start = time.monotonic()
        next_sample = start
        sent = 0
        while sent < total:
            now = time.monotonic()
            due = min(total, int((now - start) * rate) + 1)
            if due > sent:
                stack.publish("soak", [texts[i % len(texts)] for i in range(sent, due)], first_index=sent)
                sent = due
            if now >= next_sample:
                sample = SoakSample(round(now - start, 1), sent, stack.stored_rows(), {k: round(rss_mb(p), 1) for k, p in pids.items()})
                result.samples.append(sample)
                echo(f"t={sample.t_s:>6.0f}s published {sample.published:>6} stored {sample.stored:>6}  " + _rss_line(sample.rss_mb))
                next_sample += sample_seconds
            if not stack.pool.all_alive() or stack.sink.error is not None:
                raise RuntimeError(f"a process of the stack stopped; see {work}")
            time.sleep(min(0.05, 1 / rate))
        stack.wait_for("soak", total, timeout_s=600)
        result.seconds = round(time.monotonic() - start, 1)
        result.published = total
        result.stored = stack.stored("soak")
        final = SoakSample(result.seconds, total, result.stored, {k: round(rss_mb(p), 1) for k, p in pids.items()})
        result.samples.append(final)
        _summarise(result)
    finally:
        stack.close()
    return result


def _rss_line(rss: dict[str, float]) -> str:
    return "  ".join(f"{name.split(' ')[0]} {mb:.0f} MiB" for name, mb in rss.items())


def format_result(result: SoakResult) -> str:
    lines = [
        f"soak: {result.published} notes at {result.rate_per_s}/s in {result.seconds:.0f} s, {result.stored} stored, "
        f"{result.workers} worker(s), max lag {result.max_lag_notes} notes",
        f"{'process':<26} {'2nd quarter MiB':>16} {'last quarter MiB':>17} {'growth':>8}",
    ]
    for name in result.growth_pct:
        lines.append(
            f"{name:<26} {result.second_quarter_mb[name]:>16.1f} {result.last_quarter_mb[name]:>17.1f} {result.growth_pct[name]:>7.1f}%"
        )
    verdict = "levels off" if result.levels_off else f"still growing (>{GROWTH_LIMIT_PCT:g}% in some process)"
    lines.append(f"memory of the ehrstream processes: {verdict}")
    storage = "its log on disk, in the object store" if result.broker_on_disk else "memory storage keeps the whole log"
    lines.append(f"embedded broker ({storage}): {result.broker_kib_per_note:.2f} KiB per note published")
    return "\n".join(lines)


def as_json(result: SoakResult) -> str:
    return json.dumps(asdict(result))
