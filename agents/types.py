"""The types that cross the agent layer's boundary: what a runner decides, what a batch takes and gives.

``streams`` (the Faust shell, metrics, bench) and the runners meet here; nothing in this module runs a model.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from schemas.extraction import TaskResult
from schemas.review_task import ReasonKind


@dataclass(frozen=True)
class Decision:
    """One thing the model decided about a note, with the confidence routing compares to a threshold."""

    task: str
    kind: ReasonKind
    label: str
    confidence: float
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class TaskOutput:
    result: TaskResult
    decisions: list[Decision]


@dataclass(frozen=True)
class InRecord:
    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes


@dataclass
class BatchResult:
    records: list[OutRecord] = field(default_factory=list)
    extracted: int = 0
    auto_accepted: int = 0
    routed_to_review: int = 0
    #: items flagged for review over the batch's notes (document labels, entities, possible missed entities)
    flagged_items: int = 0
    #: notes chosen for an audit (a review task marked audit, whatever their routing)
    audited: int = 0
    dead_lettered: int = 0
    #: wall seconds per stage (decode, tokenise, infer, postprocess, encode), for metrics and the benchmark
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: CPU seconds of the thread that ran each stage
    stage_cpu_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: review reasons by (task, kind, label)
    review_reasons: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: dead letters by kind
    dead_kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.stage_seconds[stage] += time.perf_counter() - wall
            self.stage_cpu_seconds[stage] += time.thread_time() - cpu
