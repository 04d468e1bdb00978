"""The embedded stack's workers: ``ehrstream worker`` subprocesses, planned for the host's cores and device.

Each worker reads every setting of its parent from a child config file (:meth:`Settings.child_config`), so a
setting changed in the parent reaches it; secrets travel by environment as in the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from streams.kafka.clients import partition_count
from streams.runtime.processes import die_with_parent
from streams.settings import Settings, write_child_config

log = logging.getLogger(__name__)


class WorkerProcess:
    """``ehrstream worker`` as a subprocess against a given broker (the embedded stack's worker)."""

    def __init__(self, settings: Settings, bootstrap: str, log_file: Path, metrics_port: int = 0) -> None:
        """``settings`` are the parent's: the worker gets every one of them (``Settings.child_config``), with
        ``bootstrap`` as its broker and its own ``metrics_port``; secrets reach it by environment as here."""
        self.settings = settings.model_copy(update={"metrics_port": metrics_port})
        self.bootstrap = bootstrap
        self.log_file = log_file
        self.metrics_port = metrics_port
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = write_child_config(self.settings, self.log_file.with_suffix(".toml"), bootstrap=self.bootstrap)
        cmd = [sys.executable, "-m", "streams.cli", "--config", str(config), "--log-level", self.settings.log_level, "worker"]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(  # noqa: S603
                cmd,
                env=self.settings.child_environment(os.environ),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it: no shutdown, no offset commit."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def worker_plan(settings: Settings, partitions: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads each) for the embedded stack.

    On CPU: one worker per core (at most 4), the cores shared out among them, never more torch threads in all than
    cores. Measured on 2 cores (``ehrstream bench``, 2026-11-25): with the tiny models, 2 workers x 2 threads gave
    101.8 notes/s end to end and 19.0 ms of CPU per note in all processes, 2 x 1 gave 184.4 notes/s and 10.1 ms
    (oversubscribed OpenMP threads spin on a contended CPU: the model's forward cost 12.5 ms of CPU per note instead of
    4); with the default models 2 x 1 gave 0.85 of the raw rate, as 2 x 2 did (0.86) before.

    On CUDA one worker per two cores, at most 8: several processes feed one GPU better than one, whose GPU waits while
    it tokenises and postprocesses. Measured on one H200 with 16 cores (random BERT-base NER and classifier,
    ``tools/gpu_bench.sh``, 2026-12-04, docs/performance/hot-path.md, "GPU"): end to end 689 notes/s with 2 workers,
    1,196 with 4, 1,573 with 8 and 1,576 with 12 (the GPU busy 33%, 68%, 88% and 85%; p99 at half the rate 869, 827,
    1,212 and 1,964 ms).
    """
    cores = os.cpu_count() or 1
    workers = settings.embedded_workers
    if workers == 0:
        from agents.runners.device import pick_device

        workers = max(1, min(8, cores // 2)) if pick_device(settings.device).type == "cuda" else max(1, min(4, cores))
    if partitions is not None and workers > partitions:
        # a consumer group gives each partition to one member: workers beyond the partitions would hold a model and idle
        log.warning("the notes topic has %d partition(s): starting %d worker(s) instead of %d", partitions, partitions, workers)
        workers = partitions
    threads = settings.torch_threads or max(1, cores // workers)
    return workers, threads


def with_partitions_for_workers(settings: Settings) -> Settings:
    """The embedded stack creates its topics with a partition per planned worker when that is more than
    ``topic_partitions``: on a 16-core GPU host the plan is 8 workers, and 4 partitions would leave half of them idle.
    Topics that already exist keep their partitions; :class:`WorkerPool` then starts no more workers than they have."""
    workers, _ = worker_plan(settings)
    return settings if workers <= settings.topic_partitions else settings.model_copy(update={"topic_partitions": workers})


def ensure_code_index(settings: Settings) -> None:
    """Build the ICD-10-CM index once, here, when a task codes and it is missing: the embedded stack (demo, up, bench)
    then works on a fresh checkout, and its workers never race to build it. A standalone ``ehrstream worker`` refuses
    to start without it instead (``ehrstream codes build``)."""
    if not any(t.coding == "icd10cm" for t in settings.tasks) or (settings.icd10cm_index / "index.json").exists():
        return
    from agents.clinical.coding import Icd10Coder

    log.warning("no ICD-10-CM index at %s: building it once (1-9 minutes on 2 CPU cores)", settings.icd10cm_index)
    Icd10Coder.build(settings.icd10cm_index, device=settings.device, onnx_cache=settings.onnx_cache())


class WorkerPool:
    """The embedded stack's worker processes (one consumer group, so they share the notes topic's partitions)."""

    def __init__(self, settings: Settings, bootstrap: str, log_dir: Path, metrics_ports: list[int] | None = None) -> None:
        """Call after the topics exist: the pool starts no more workers than the notes topic has partitions, and
        ``metrics_ports`` (one per planned worker) may be longer than the pool."""
        ensure_code_index(settings)
        partitions = partition_count(settings, bootstrap, settings.topics.notes)
        count, threads = worker_plan(settings, partitions)
        per_worker = settings.model_copy(update={"torch_threads": threads, "topic_partitions": partitions or settings.topic_partitions})
        ports = metrics_ports or [0] * count
        self.workers = [
            WorkerProcess(per_worker, bootstrap, log_dir / ("worker.log" if i == 0 else f"worker-{i}.log"), metrics_port=ports[i])
            for i in range(count)
        ]
        self.threads = threads

    def __len__(self) -> int:
        return len(self.workers)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def all_alive(self) -> bool:
        return all(worker.alive() for worker in self.workers)

    def restart_dead(self) -> int:
        dead = [worker for worker in self.workers if not worker.alive()]
        for worker in dead:
            worker.start()
        return len(dead)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
