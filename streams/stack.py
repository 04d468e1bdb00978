"""``ehrstream up``: the embedded stack as a long-running service on this machine.

Writes ``<data_dir>/stack.json`` (broker address, pid) so ``publish``, ``topics`` and
``query`` find it without configuration; removes it on exit.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.embedded import EMBEDDED_TIMEOUTS, SinkThread, TansuBroker, WorkerProcess
from streams.kafka_io import ensure_topics
from streams.runfiles import live_run_file
from streams.settings import Settings

STACK_FILE = "stack.json"


def running_stack(data_dir: Path) -> dict[str, Any] | None:
    """The running ``ehrstream up`` (broker address, pid), or None."""
    return live_run_file(data_dir / STACK_FILE)


def run_stack(settings: Settings, config: Path | None, echo: Callable[[str], None]) -> None:
    settings = settings.model_copy(update=EMBEDDED_TIMEOUTS) if settings.embedded_kafka else settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with TansuBroker(log_file=settings.data_dir / "tansu.log") as broker:
        ensure_topics(settings, broker.bootstrap)
        sink = SinkThread(settings, broker.bootstrap)
        worker = WorkerProcess(settings, broker.bootstrap, config, settings.data_dir / "worker.log")
        sink.start()
        worker.start()
        stack_file = settings.data_dir / STACK_FILE
        stack_file.write_text(json.dumps({"bootstrap": broker.bootstrap, "pid": os.getpid()}))
        echo(f"embedded stack up: Kafka {broker.bootstrap}, ClickHouse (chdb) {settings.data_dir / 'chdb'}")
        echo(f"publish with: ehrstream --data-dir {settings.data_dir} publish FILE   (Ctrl-C stops)")
        try:
            while not stop.wait(1.0):
                if not worker.alive():
                    echo("worker exited; restarting it")
                    worker.start()
                if sink.error is not None:
                    echo(f"sink stopped: {sink.error}")
                    break
        finally:
            stack_file.unlink(missing_ok=True)
            worker.stop()
            sink.stop()
