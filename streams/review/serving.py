"""Serving the review app: aiohttp on its own thread and event loop, an access log that names routes, never ids."""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from schemas.codec import Codecs
from streams.kafka.schema_registry import build_codecs
from streams.query.reader import Reader
from streams.review.backlog import BacklogMonitor
from streams.review.budget import BudgetKeeper, BudgetThread
from streams.review.publisher import DecisionPublisher
from streams.review.server import ReviewApp
from streams.review.tighten import Tightener
from streams.settings import Settings

log = logging.getLogger(__name__)


class RouteAccessLogger(AbstractAccessLogger):
    """One line per request with the route pattern (``/api/notes/{note_id}``), not the path it matched."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = getattr(request, "match_info", None)
        resource = match_info.route.resource if match_info is not None else None
        route = resource.canonical if resource is not None else "-"
        self.logger.info("%s %s %d %.1fms", request.method, route, response.status, time * 1000)


class ReviewServer:
    """Runs the review app on its own thread and event loop (so it can sit beside the sink)."""

    def __init__(self, app: ReviewApp, host: str, port: int) -> None:
        self.backlog: BacklogMonitor | None = None
        self.budget: BudgetThread | None = None
        self.app = app
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="review-ui", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    async def _serve(self) -> None:
        runner = web.AppRunner(
            self.app.web_app(), access_log_class=RouteAccessLogger, access_log=logging.getLogger("streams.review.access")
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        if runner.addresses:
            self.port = int(runner.addresses[0][1])  # the real port when 0 was asked for

    def start(self, timeout_s: float = 15.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("review app did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self.backlog is not None:
            self.backlog.stop()
        if self.budget is not None:
            self.budget.stop()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.app.publisher.close()


def start_review_server(
    settings: Settings, reader: Reader, bootstrap: str, host: str | None = None, port: int | None = None, codecs: Codecs | None = None
) -> ReviewServer:
    """The review app, started on its own thread; ``host``/``port`` default to the settings, ``codecs`` to theirs."""
    app = ReviewApp(settings, reader, DecisionPublisher(settings, bootstrap, codecs or build_codecs(settings)))
    server = ReviewServer(app, host or settings.review.host, settings.review.port if port is None else port)
    server.start()
    if settings.review.budget_per_hour:
        keeper = BudgetKeeper(app.store, app.publisher, settings.review)
        server.budget = BudgetThread(keeper, settings.metrics_lag_seconds, lambda: app.leases.live().keys()).start()
    if settings.metrics_port or settings.review.tighten_thresholds:
        tightener = Tightener(settings, reader) if settings.review.tighten_thresholds else None
        server.backlog = BacklogMonitor(
            app.store, settings.metrics_lag_seconds, settings.review.target_precision, settings.review.min_audit_items, tightener
        ).start()
    return server
