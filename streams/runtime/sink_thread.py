"""The sink on a thread of this process (it owns chdb), with the query endpoint for other processes."""

from __future__ import annotations

import logging
import threading

from schemas.codec import Codecs
from streams.runtime.processes import settle_heap
from streams.settings import Settings
from streams.sink.backend import ClickHouseBackend

log = logging.getLogger(__name__)


class SinkThread:
    """The sink in this process (it owns chdb), with the query endpoint for other processes."""

    def __init__(self, settings: Settings, bootstrap: str, backend: ClickHouseBackend | None = None, codecs: Codecs | None = None) -> None:
        from streams.kafka.schema_registry import build_codecs
        from streams.query.endpoint import QueryServer
        from streams.sink.backend import open_backend
        from streams.sink.consumer import ClickHouseSink
        from streams.sink.migrations import migrate

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
        from streams.waiting import backoff

        def on_retry(error: BaseException, _waited: float, delay: float) -> None:
            log.error("ClickHouse not ready (%s); retrying in %.1f s", getattr(error, "reason", type(error).__name__), delay)

        try:
            for attempt in backoff(SinkError, first_s=0.5, stop=self._stop, on_retry=on_retry):
                with attempt:
                    migrate(self.backend)
        except SinkError:
            return False  # stopped while waiting
        self.migrated = True
        return True

    def _run(self) -> None:
        try:
            if self.migrated or self._migrate_with_retry():
                self.sink.run(self._stop)
        except BaseException as exc:  # reported by the owner
            self.error = exc
            log.exception("sink stopped with an error")

    def start(self) -> None:
        """Start consuming; the process's long-lived objects (chdb, clients, and models where the workers share the
        process) are in place by now, so they leave the garbage collector's generations (``settle_heap``)."""
        if self.query_server is not None:
            self.query_server.start()
        settle_heap()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.query_server is not None:
            self.query_server.stop()
        if self._owns_backend:
            self.backend.close()


def run_sink(settings: Settings, bootstrap: str) -> None:
    """``ehrstream sink``: the sink (and, on embedded chdb, the query endpoint) until SIGTERM/SIGINT; a sink that
    stopped with an error raises it, for the supervisor to restart the process."""
    from streams.kafka.lag import monitor_lag
    from streams.metrics import serve
    from streams.waiting import run_until_signalled

    serve(settings.metrics_port)
    runner = SinkThread(settings, bootstrap)
    monitor_lag(settings, bootstrap, settings.sink_group, settings.topics.results())
    runner.start()

    def healthy() -> bool:
        if runner.error is not None:
            raise runner.error
        return True

    try:
        run_until_signalled(healthy)
    finally:
        runner.stop()
