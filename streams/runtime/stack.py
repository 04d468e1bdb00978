"""``ehrstream up``: the embedded stack as a long-running service on this machine.

Writes ``<data_dir>/stack.json`` (broker address, pid) so ``publish``, ``topics`` and
``query`` find it without configuration; removes it on exit.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from streams.kafka.clients import ensure_topics
from streams.kafka.lag import monitor_lag
from streams.metrics import serve
from streams.runtime.broker import EMBEDDED_TIMEOUTS, embedded_broker
from streams.runtime.runfiles import live_run_file, write_run_file
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerPool, with_partitions_for_workers, worker_plan
from streams.settings import ReviewerAccount, Settings
from streams.waiting import run_until_signalled

if TYPE_CHECKING:
    from streams.review.serving import ReviewServer

STACK_FILE = "stack.json"
LOGIN_FILE = "review-login.txt"
LOCAL_REVIEWER = "local"


def with_local_reviewer(settings: Settings) -> Settings:
    """Development only, when no reviewer is configured: a ``local`` account with a random password, written to
    ``<data_dir>/review-login.txt`` (mode 0600), never printed or logged."""
    from streams.review.accounts import hash_password

    password = secrets.token_urlsafe(12)
    login_file = settings.data_dir / LOGIN_FILE
    fd = os.open(login_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"reviewer: {LOCAL_REVIEWER}\npassword: {password}\n")
    account = ReviewerAccount(id=LOCAL_REVIEWER, password_hash=SecretStr(hash_password(password)))
    return settings.model_copy(update={"review": settings.review.model_copy(update={"reviewers": [account]})})


def running_stack(data_dir: Path) -> dict[str, Any] | None:
    """The running ``ehrstream up`` (broker address, pid), or None."""
    return live_run_file(data_dir / STACK_FILE)


def run_stack(settings: Settings, echo: Callable[[str], None]) -> None:
    settings = with_partitions_for_workers(settings.model_copy(update=EMBEDDED_TIMEOUTS) if settings.embedded_kafka else settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with embedded_broker(settings, settings.data_dir / "tansu.log") as broker:
        ensure_topics(settings, broker.bootstrap)
        serve(settings.metrics_port)  # this process: the sink and the review app; workers serve the next ports
        monitor_lag(settings, broker.bootstrap, settings.sink_group, settings.topics.results())
        sink = SinkThread(settings, broker.bootstrap)
        count, _ = worker_plan(settings)
        ports = [settings.metrics_port + 1 + i for i in range(count)] if settings.metrics_port else None
        workers = WorkerPool(settings, broker.bootstrap, settings.data_dir, metrics_ports=ports)
        sink.start()
        workers.start()
        review = _start_review(settings, sink, broker.bootstrap, echo)
        stack_file = settings.data_dir / STACK_FILE
        write_run_file(stack_file, {"bootstrap": broker.bootstrap, "pid": os.getpid()})
        echo(f"embedded stack up: Kafka {broker.bootstrap}, ClickHouse (chdb) {settings.data_dir / 'chdb'}")
        echo(f"publish with: ehrstream --data-dir {settings.data_dir} publish FILE   (Ctrl-C stops)")

        def supervise() -> bool:
            restarted = workers.restart_dead()
            if restarted:
                echo(f"{restarted} worker(s) exited; restarted")
            if sink.error is not None:
                echo(f"sink stopped: {sink.error}")
                return False
            return True

        try:
            run_until_signalled(supervise)
        finally:
            stack_file.unlink(missing_ok=True)
            if review is not None:
                review.stop()
            workers.stop()
            sink.stop()


def _start_review(settings: Settings, sink: SinkThread, bootstrap: str, echo: Callable[[str], None]) -> ReviewServer | None:
    """The review app beside the sink, reading the chdb the sink owns."""
    from streams.review.serving import start_review_server

    if not settings.review.reviewers:
        if settings.environment == "production":
            echo("review app off: no reviewer accounts configured ([[review.reviewers]])")
            return None
        settings = with_local_reviewer(settings)
        echo(f"review app: sign in as '{LOCAL_REVIEWER}' with the password in {settings.data_dir / LOGIN_FILE}")
    server = start_review_server(settings, sink.backend, bootstrap)
    echo(f"review app on {server.url}")
    return server
