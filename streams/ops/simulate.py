"""``ehrstream simulate``: replay a labelled corpus as the stream through the real stack, with the gold labels standing
in for the reviewer, and measure the loop: review rate, model F1, the audited precision estimate against the truth.

The stack is the embedded one (Tansu, the worker pool, the sink on chdb, the registry and hot reload), started on a
directory of its own under ``--out``. The stream is cut into rounds; each round:

1. its sentences are published as notes and waited for in ClickHouse;
2. the round is measured: the share of its notes with a flagged item (the review rate), and the true precision of the
   items the model auto-accepted (against the gold spans), beside the audited estimate (``auto_precision``, pooled
   over model versions, with its Wilson interval);
3. the oracle reviewer takes the round's share of the budget from the queue in the strategy's order (``uncertainty``:
   the queue's own order, audits first then priority; ``fifo``: oldest first, audits first; ``random``) and answers
   each task with the gold annotation, through the review app's own decision builder and the decisions topic;
4. once ``retrain_every`` new reviews have arrived, ``ehrstream learn --once`` runs as its own process (train,
   calibrate, gate, promote), and the workers switch to a promoted version before the next round.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from agents.config import TaskSettings
from agents.learning.datasets import NerExample, read_examples
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from streams.learning.loop import score
from streams.learning.registry import ModelRegistry
from streams.review.decisions import DecisionRequest, SpanIn, TaskReview, build_decision
from streams.review.estimate import calibrated_precision
from streams.review.publisher import DecisionPublisher
from streams.review.store import QueueFilter, ReviewStore
from streams.runtime.sink_thread import SinkThread
from streams.settings import Settings, write_child_config
from streams.sink.backend import ClickHouseBackend
from streams.waiting import poll_until

Strategy = Literal["uncertainty", "fifo", "random"]


@dataclass(frozen=True)
class SimulationConfig:
    task: str
    model: Path
    stream: Path
    dev: Path
    budget: int
    retrain_every: int
    strategy: Strategy
    target_precision: float
    out: Path
    rounds: int = 10
    audit_share: float = 0.05
    #: 8 epochs at 1e-3: the best of four settings on the BC5CDR replay's reviewed sentences (README)
    epochs: int = 8
    learning_rate: float = 1e-3
    seed: int = 13


@dataclass
class RoundRow:
    round: int
    notes_seen: int
    reviewed: int
    review_rate: float
    dev_f1: float
    live_version: str
    #: the live estimate (``streams.review.estimate``: every reviewed accepted item, calibrated over the confidences of
    #: all auto-accepted ones) with its 95% interval
    precision_estimate: float | None
    estimate_lower: float | None
    estimate_upper: float | None
    #: the audit-only estimate (``auto_precision``, pooled over versions) and the items behind it
    audit_estimate: float | None
    audited_items: int
    #: the truth so far: every auto-accepted span of the run against the gold
    auto_precision_true: float | None
    #: the round's auto-accepted spans and how many match the gold (for the pooled true precision)
    auto_accepted_spans: int = 0
    auto_accepted_correct: int = 0
    #: a learning cycle after this round: the candidate's version and dev F1, and whether the gate promoted it
    candidate: str = ""
    candidate_dev_f1: float | None = None
    promoted: str = ""


@dataclass
class Simulation:
    config: SimulationConfig
    rows: list[RoundRow] = field(default_factory=list)


def _stack_settings(settings: Settings, config: SimulationConfig) -> Settings:
    """The one task, its model as the starting version, on a directory of its own; no coding (no ICD index needed) and
    no clinical layer (BC5CDR is abstracts, not notes), the in-memory broker; audits at ``audit_share``."""
    base = next(t for t in settings.tasks if t.name == config.task)
    task = base.model_copy(update={"model_dir": config.model.resolve(), "coding": "none", "clinical": False})
    review = settings.review.model_copy(update={"audit_share": config.audit_share})
    return settings.model_copy(
        update={
            "tasks": [task],
            "data_dir": (config.out / "stack").resolve(),
            "embedded_storage": "memory",
            "review": review,
            "log_level": "INFO",  # the workers' logs (files under --out/stack) say when they load a promoted version
        }
    )


def _query(backend: ClickHouseBackend, sql: str, parameters: dict[str, Any] | None = None) -> list[list[Any]]:
    return [list(r) for r in backend.query(sql.replace("{db}", backend.database), parameters).rows]


def _round_truth(backend: ClickHouseBackend, task: str, ids: list[str], gold: dict[str, set[tuple[int, int]]]) -> tuple[float, int, int]:
    """(review rate, auto-accepted spans, how many are gold spans) of a round's notes, from the model's revision 0."""
    rows = _query(
        backend,
        "SELECT note_id, status, arrayFilter((e, s) -> e.task = {task:String} AND s = 'accepted', entities, "
        "arrayResize(entity_state, length(entities), '')) FROM {db}.extractions FINAL "
        "WHERE revision = 0 AND note_id IN {ids:Array(String)}",
        {"task": task, "ids": ids},
    )
    flagged = sum(1 for _, status, _ in rows if status == "pending_review")
    accepted = [(str(n), int(e["start"]), int(e["end"])) for n, _, spans in rows for e in spans]
    correct = sum(1 for n, a, b in accepted if (a, b) in gold[n])
    return flagged / max(1, len(rows)), len(accepted), correct


def _audit_estimate(backend: ClickHouseBackend, task: str) -> tuple[float | None, int]:
    """The audited precision of auto-accepted spans, pooled over model versions, and the items behind it."""
    sql = "SELECT sum(items), sum(correct) FROM {db}.auto_precision WHERE task = {task:String} AND label = ''"
    rows = _query(backend, sql, {"task": task})
    items, correct = (int(v or 0) for v in rows[0]) if rows else (0, 0)
    return (round(correct / items, 4) if items else None), items


def _review(
    store: ReviewStore,
    publisher: DecisionPublisher,
    task: TaskSettings,
    gold: dict[str, list[tuple[int, int]]],
    n: int,
    strategy: Strategy,
    rng: random.Random,
) -> int:
    """The oracle reviewer: up to ``n`` tasks from the queue in the strategy's order, each answered with the gold
    annotation through the review app's own decision builder. Returns how many were decided."""
    queue = store.queue(QueueFilter(), 100_000)
    if strategy == "fifo":
        queue.sort(key=lambda t: (not t.audit, t.queued_at, t.note_id))
    elif strategy == "random":
        rng.shuffle(queue)
        queue.sort(key=lambda t: not t.audit)  # audits are part of every strategy: the estimate needs them
    done = 0
    for queued in queue[:n]:
        note = store.note(queued.note_id)
        if note is None:
            continue
        spans = [SpanIn(label="Disease", start=a, end=b) for a, b in gold[note.note_id]]
        request = DecisionRequest(lease_id="simulate", base_revision=note.revision, results=[TaskReview(task=task.name, entities=spans)])
        publisher.send(build_decision(request, note, "oracle", {task.name: ["Disease"]}))
        done += 1
    return done


def _learn(settings: Settings, config: SimulationConfig) -> dict[str, Any]:
    """``ehrstream learn --once`` as its own process, reading ClickHouse through the sink's endpoint."""
    child = write_child_config(settings, config.out / "learn.toml")
    cmd = [sys.executable, "-m", "streams.cli", "--config", str(child), "--log-level", "WARNING", "learn", "--task", config.task,
           "--dev", str(config.dev.resolve()), "--once", "--epochs", str(config.epochs), "--learning-rate", str(config.learning_rate),
           "--target-precision", str(config.target_precision), "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=settings.child_environment(os.environ))  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"ehrstream learn failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_simulation(settings: Settings, config: SimulationConfig, echo: Any) -> Simulation:
    from streams.kafka.clients import ensure_topics
    from streams.kafka.clients import producer as make_producer
    from streams.runtime.broker import TansuBroker
    from streams.runtime.workers import WorkerPool, with_partitions_for_workers

    stack = with_partitions_for_workers(_stack_settings(settings, config))
    stack.data_dir.mkdir(parents=True, exist_ok=True)
    task = stack.tasks[0]
    examples = [ex for ex in read_examples(config.stream, "ner") if isinstance(ex, NerExample)]
    dev = read_examples(config.dev, "ner")
    gold = {f"sim-{i:05d}": [(a, b) for a, b, _ in ex.spans] for i, ex in enumerate(examples)}
    gold_sets = {k: set(v) for k, v in gold.items()}
    registry = ModelRegistry(stack.registry_file())
    start = registry.register(task.name, task.model_dir, note="the starting model")
    registry.promote(task.name, start.version, note="start")
    sim, codecs, rng = Simulation(config), Codecs(), random.Random(config.seed)  # noqa: S311 (the queue's random strategy, not a secret)
    dev_f1 = score(stack, task, task.model_dir, dev, "cpu")
    per_round, size = config.budget // config.rounds, math.ceil(len(examples) / config.rounds)
    with TansuBroker(log_file=stack.data_dir / "tansu.log", storage_dir=None) as broker:
        ensure_topics(stack, broker.bootstrap)
        sink = SinkThread(stack, broker.bootstrap, codecs=codecs)
        workers = WorkerPool(stack, broker.bootstrap, stack.data_dir)
        sink.start()
        workers.start()
        store = ReviewStore(sink.backend, {task.name: task.kind})
        publisher = DecisionPublisher(stack, broker.bootstrap, codecs)
        producer = make_producer(stack, broker.bootstrap)
        reviewed = since_retrain = 0
        try:
            for r in range(config.rounds):
                ids = [f"sim-{i:05d}" for i in range(r * size, min(len(examples), (r + 1) * size))]
                for note_id in ids:
                    note = ClinicalNote(
                        note_id=note_id,
                        patient_id="sim",
                        note_type="abstract_sentence",
                        created_at="2026-12-01T00:00:00Z",
                        text=examples[int(note_id[4:])].text,
                        source="simulate",
                    )
                    producer.send(stack.topics.notes, key=note_id.encode(), value=codecs.of(ClinicalNote).encode(note))
                producer.flush()
                total = r * size + len(ids)
                _wait(sink.backend, "SELECT count() FROM {db}.extractions_final", total, workers.all_alive, f"round {r + 1} in ClickHouse")
                rate, accepted, correct = _round_truth(sink.backend, task.name, ids, gold_sets)
                decided = _review(store, publisher, task, gold, min(per_round, config.budget - reviewed), config.strategy, rng)
                reviewed += decided
                since_retrain += decided
                applied = "SELECT countIf(status = 'reviewed') FROM {db}.extractions_final"
                _wait(sink.backend, applied, reviewed, workers.all_alive, "the decisions applied")
                live_estimate = calibrated_precision(sink.backend, task.name)
                audit, items = _audit_estimate(sink.backend, task.name)
                live = registry.live(task.name)
                run_accepted = accepted + sum(x.auto_accepted_spans for x in sim.rows)
                run_correct = correct + sum(x.auto_accepted_correct for x in sim.rows)
                row = RoundRow(
                    r + 1, total, reviewed, round(rate, 4), dev_f1, live.version if live else "", live_estimate["precision"],
                    live_estimate["lower"], live_estimate["upper"], audit, items,
                    round(run_correct / run_accepted, 4) if run_accepted else None, accepted, correct,
                )  # fmt: skip
                if since_retrain >= config.retrain_every:
                    cycle = _learn(stack, config)
                    since_retrain = 0
                    row.candidate, row.candidate_dev_f1 = cycle["version"], cycle["dev_f1"]
                    if cycle["promoted"]:
                        dev_f1 = float(cycle["dev_f1"])
                        row.promoted, row.dev_f1, row.live_version = cycle["version"], dev_f1, cycle["version"]
                        _wait_for_switch(stack.data_dir, cycle["version"], len(workers))
                sim.rows.append(row)
                echo(
                    f"round {row.round}: {row.notes_seen} notes, review rate {row.review_rate}, reviewed {row.reviewed}, "
                    f"dev F1 {row.dev_f1}, estimate {row.precision_estimate} vs true {row.auto_precision_true}"
                    + (f", candidate {row.candidate} (dev F1 {row.candidate_dev_f1})" if row.candidate else "")
                    + (" promoted" if row.promoted else (" rejected" if row.candidate else ""))
                )
        finally:
            producer.close()
            publisher.close()
            workers.stop()
            sink.stop()
    return sim


def _wait(backend: ClickHouseBackend, sql: str, at_least: int, alive: Any, what: str) -> None:
    def reached() -> bool:
        if not alive():
            raise RuntimeError("a worker exited during the simulation; see its log under --out/stack")
        return int(_query(backend, sql)[0][0]) >= at_least

    poll_until(reached, 900, what, 0.5)


def _wait_for_switch(data_dir: Path, version: str, n_workers: int) -> None:
    """Until every worker has loaded the promoted version (its watcher logs the load; the pipeline takes it over at
    its next batch, before any note of the next round)."""

    def switched() -> bool:
        logs = sorted(data_dir.glob("worker*.log"))[:n_workers]
        return len(logs) == n_workers and all(f"version {version} (" in p.read_text(errors="replace") for p in logs)

    poll_until(switched, 300, f"workers on version {version}", 0.5)


def summary(sim: Simulation) -> dict[str, Any]:
    rows, config = sim.rows, sim.config
    promoted = [r.promoted for r in rows if r.promoted]
    accepted = sum(r.auto_accepted_spans for r in rows)
    return {
        "strategy": config.strategy,
        "final_model": _final_model_dir(config, promoted[-1]) if promoted else str(config.model.resolve()),
        "reviewed": rows[-1].reviewed if rows else 0,
        "promotions": len(promoted),
        "review_rate_first": rows[0].review_rate if rows else None,
        "review_rate_last": rows[-1].review_rate if rows else None,
        "dev_f1_first": rows[0].dev_f1 if rows else None,
        "dev_f1_last": rows[-1].dev_f1 if rows else None,
        "precision_estimate_last": rows[-1].precision_estimate if rows else None,
        "estimate_interval_last": [rows[-1].estimate_lower, rows[-1].estimate_upper] if rows else None,
        "audit_estimate_last": rows[-1].audit_estimate if rows else None,
        "audited_items": rows[-1].audited_items if rows else 0,
        # over the whole run, as the estimates are (every auto-accepted span against the gold)
        "auto_precision_true_last": round(sum(r.auto_accepted_correct for r in rows) / accepted, 4) if accepted else None,
        "rounds": [asdict(r) for r in rows],
    }


def _final_model_dir(config: SimulationConfig, version: str) -> str:
    registry = ModelRegistry((config.out / "stack").resolve() / "models" / "registry.json")
    return next(v.model_dir for v in registry.versions(config.task) if v.version == version)
