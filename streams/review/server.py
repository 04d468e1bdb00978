"""The review app: a web page for reviewers and the JSON API it (and any script) uses.

Served by ``ehrstream review-ui`` (and by ``ehrstream up`` for the embedded stack) with
aiohttp. Reads come from ClickHouse (:mod:`streams.review.store`); a decision is
produced to the review-decisions topic and acknowledged by the broker before the API
answers, and the sink turns it into the note's reviewed revision. Every request but
sign-in is authenticated; cookie-authenticated writes need the session's CSRF token.
The access log names the route pattern, never a note id, and no handler logs note text.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from html import escape
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import ValidationError

from agents.model_dir import output_labels
from schemas.codec import validation_summary
from schemas.review_decision import ChangeAction
from streams.errors import SinkError
from streams.metrics import REVIEW_DECISIONS
from streams.query.reader import Reader
from streams.review.accounts import Accounts, LockedOut, Session
from streams.review.decisions import DecisionInvalid, DecisionRequest, build_decision
from streams.review.leases import LeaseBook, LeaseConflict
from streams.review.publisher import DecisionPublisher
from streams.review.responses import error_response, lease_json, static_page
from streams.review.store import QueueFilter, ReviewStore, StoredNote
from streams.settings import Settings

log = logging.getLogger(__name__)

SESSION_COOKIE = "ehrstream_session"
LOGIN_COOKIE = "ehrstream_login"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC_ROUTES = {"login_page", "login_form", "api_login", "healthz", "static", "favicon"}
#: pages that send a signed-out browser to the sign-in page (everything else answers 401)
PAGE_ROUTES = {"index", "health_page"}
#: a submitted decision hides its note from the queue until the sink has written it (or this long)
SUBMITTED_TTL_S = 900.0
T = TypeVar("T")
SESSION = web.RequestKey("session", Session)


class ReviewApp:
    """The app's state (accounts, leases, store, publisher) and its aiohttp handlers."""

    def __init__(self, settings: Settings, reader: Reader, publisher: DecisionPublisher) -> None:
        self.settings = settings
        self.review = settings.review
        self.accounts = Accounts(settings.review)
        self.leases = LeaseBook(settings.review.lease_seconds)
        self.store = ReviewStore(reader, {t.name: t.kind for t in settings.tasks})
        self.publisher = publisher
        self.labels = {t.name: output_labels(t.model_dir, t.kind) for t in settings.tasks}
        self._submitted: dict[str, float] = {}
        self._draw = random.Random()  # noqa: S311 (sampling the queue, not a secret)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="review-io")

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def web_app(self) -> web.Application:
        app = web.Application(middlewares=[self._store_errors, self._auth], client_max_size=4 * 1024 * 1024)
        app.on_response_prepare.append(self._security_headers)
        static = resources.files("streams.review").joinpath("static")
        app.add_routes(
            [
                web.get("/healthz", self.healthz, name="healthz"),
                web.get("/favicon.ico", self.favicon, name="favicon"),
                web.get("/login", self.login_page, name="login_page"),
                web.post("/login", self.login_form, name="login_form"),
                web.post("/logout", self.logout, name="logout"),
                web.post("/api/login", self.api_login, name="api_login"),
                web.get("/", self.index, name="index"),
                web.get("/queue-health", self.health_page, name="health_page"),
                web.static("/static", str(static), name="static"),
                web.get("/api/session", self.api_session, name="api_session"),
                web.get("/api/tasks", self.api_tasks, name="api_tasks"),
                web.post("/api/tasks/next", self.api_next, name="api_next"),
                web.post("/api/tasks/{note_id}/claim", self.api_claim, name="api_claim"),
                web.delete("/api/tasks/{note_id}/claim", self.api_release, name="api_release"),
                web.get("/api/notes/{note_id}", self.api_note, name="api_note"),
                web.get("/api/notes/{note_id}/history", self.api_history, name="api_history"),
                web.post("/api/notes/{note_id}/decisions", self.api_decide, name="api_decide"),
                web.get("/api/queue-health", self.api_health, name="api_health"),
            ]
        )
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        self._pool.shutdown(wait=False)

    # --- middleware -------------------------------------------------------------------------

    @web.middleware
    async def _store_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except SinkError as exc:
            log.error("ClickHouse read failed: %s", exc.reason)
            return error_response(503, "the review store (ClickHouse) is unavailable; try again")

    @staticmethod
    async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        route_name = request.match_info.route.name
        if route_name in PUBLIC_ROUTES:
            return await handler(request)
        bearer = request.headers.get("Authorization", "")
        via_cookie = not bearer.startswith("Bearer ")
        token = request.cookies.get(SESSION_COOKIE) if via_cookie else bearer.removeprefix("Bearer ").strip()
        session = self.accounts.session(token)
        if session is None:
            if route_name in PAGE_ROUTES and request.method in SAFE_METHODS:
                raise web.HTTPFound("/login")
            return error_response(401, "sign in first (POST /api/login, or the page at /login)")
        if via_cookie and request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.host:
                return error_response(403, "cross-origin request refused")
            if not self.accounts.csrf_ok(session, request.headers.get("X-CSRF-Token")):
                return error_response(403, "missing or wrong X-CSRF-Token header (GET /api/session gives it)")
        request[SESSION] = session
        return await handler(request)

    # --- sign-in ----------------------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def favicon(self, _request: web.Request) -> web.Response:
        return web.Response(status=204)

    def _login_html(self, token: str, error: str = "") -> str:
        message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
        return static_page("login.html").replace("{{csrf}}", escape(token)).replace("{{error}}", message)

    async def login_page(self, request: web.Request) -> web.Response:
        # keep an existing form token: a second tab (or a stray request) must not invalidate the first form
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = web.Response(text=self._login_html(token), content_type="text/html")
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=self.review.cookie_secure, max_age=3600)
        return response

    async def _sign_in(self, reviewer_id: str, password: str) -> Session | web.Response:
        try:
            session = await self._io(self.accounts.sign_in, reviewer_id, password)
        except LockedOut as exc:
            return error_response(429, str(exc))
        if session is None:
            log.warning("failed sign-in")
            return error_response(401, "unknown reviewer or wrong password")
        log.info("reviewer %s signed in", session.reviewer_id)
        return session

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        supplied, expected = str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(supplied, expected):
            return web.Response(
                status=403, text=self._login_html(expected or "", "The sign-in form expired; try again."), content_type="text/html"
            )
        result = await self._sign_in(str(form.get("reviewer", "")), str(form.get("password", "")))
        if isinstance(result, web.Response):
            text = json.loads(result.text or "{}").get("error", "sign-in failed")
            return web.Response(status=result.status, text=self._login_html(expected, text), content_type="text/html")
        response = web.HTTPFound("/")
        response.set_cookie(
            SESSION_COOKIE,
            result.token,
            httponly=True,
            samesite="Strict",
            secure=self.review.cookie_secure,
            max_age=int(self.review.session_hours * 3600),
        )
        response.del_cookie(LOGIN_COOKIE)
        raise response

    async def api_login(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        reviewer, password = body.get("reviewer"), body.get("password")
        if not isinstance(reviewer, str) or not isinstance(password, str):
            return error_response(422, 'expected {"reviewer": str, "password": str}')
        result = await self._sign_in(reviewer, password)
        if isinstance(result, web.Response):
            return result
        return web.json_response({"token": result.token, "reviewer_id": result.reviewer_id, "expires_at": result.expires_at})

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = request[SESSION]
        self.accounts.sign_out(session.token)
        response = web.json_response({"signed_out": True})  # the page then goes to /login itself
        response.del_cookie(SESSION_COOKIE)
        return response

    # --- pages ------------------------------------------------------------------------------

    async def index(self, _request: web.Request) -> web.Response:
        return web.Response(text=static_page("index.html"), content_type="text/html")

    async def health_page(self, _request: web.Request) -> web.Response:
        return web.Response(text=static_page("health.html"), content_type="text/html")

    # --- API --------------------------------------------------------------------------------

    async def api_session(self, request: web.Request) -> web.Response:
        session = request[SESSION]
        return web.json_response(
            {"reviewer_id": session.reviewer_id, "csrf_token": session.csrf_token, "lease_seconds": self.leases.lease_seconds}
        )

    def _recently_submitted(self, note_id: str) -> bool:
        at = self._submitted.get(note_id)
        if at is None:
            return False
        if time.time() - at > SUBMITTED_TTL_S:
            del self._submitted[note_id]
            return False
        return True

    @staticmethod
    def _filters(values: Any) -> QueueFilter:
        return QueueFilter(**{k: str(values.get(k) or "")[:200] for k in ("task", "label", "note_type")})

    async def api_tasks(self, request: web.Request) -> web.Response:
        filters = self._filters(request.query)
        try:
            limit = max(1, min(500, int(request.query.get("limit", "100"))))
        except ValueError:
            return error_response(400, "limit must be an integer")
        tasks = await self._io(self.store.queue, filters, limit + len(self._submitted))
        total = await self._io(self.store.queue_size, filters)
        facets = await self._io(self.store.facets)
        leases = self.leases.live()
        out = [{**t.__dict__, "lease": lease_json(leases.get(t.note_id))} for t in tasks if not self._recently_submitted(t.note_id)][:limit]
        hidden = sum(1 for t in tasks if self._recently_submitted(t.note_id))
        return web.json_response({"tasks": out, "total": max(0, total - hidden), "facets": facets})

    async def api_next(self, request: web.Request) -> web.Response:
        session = request[SESSION]
        body = await self._json_body(request, allow_empty=True)
        if isinstance(body, web.Response):
            return body
        filters = self._filters(body)
        skipped = body.get("skip") or []
        if not isinstance(skipped, list) or len(skipped) > 1000 or not all(isinstance(x, str) for x in skipped):
            return error_response(422, "skip must be a list of at most 1000 note ids")
        leases = self.leases.live()
        shuffled = self._draw.random() < self.review.random_share  # a fair sample of the queue now and then, not only its top
        candidates = await self._io(self.store.queue, filters, 50 + len(leases) + len(self._submitted) + len(skipped), shuffled)
        for task in candidates:
            if self._recently_submitted(task.note_id) or task.note_id in skipped:
                continue
            try:
                lease = self.leases.claim(task.note_id, session.reviewer_id)
            except LeaseConflict:
                continue
            return web.json_response({"note_id": task.note_id, "lease": lease_json(lease)})
        return error_response(404, "the queue is empty (for these filters)")

    async def _pending_note(self, note_id: str) -> StoredNote | web.Response:
        note = await self._io(self.store.note, note_id)
        if note is None:
            return error_response(404, "no such note")
        if self._recently_submitted(note_id):
            return error_response(409, "a decision on this note was just submitted")
        if note.status != "pending_review" and not note.audit:
            return error_response(409, f"the note is not waiting for review (status {note.status})")
        return note

    async def api_claim(self, request: web.Request) -> web.Response:
        session = request[SESSION]
        note = await self._pending_note(request.match_info["note_id"])
        if isinstance(note, web.Response):
            return note
        try:
            lease = self.leases.claim(note.note_id, session.reviewer_id)
        except LeaseConflict as exc:
            return error_response(409, f"claimed by {exc.holder.reviewer_id}", [f"expires_at {exc.holder.expires_at:.0f}"])
        return web.json_response({"note_id": note.note_id, "lease": lease_json(lease)})

    async def api_release(self, request: web.Request) -> web.Response:
        session = request[SESSION]
        released = self.leases.release(request.match_info["note_id"], session.reviewer_id)
        return web.json_response({"released": released})

    async def api_note(self, request: web.Request) -> web.Response:
        note = await self._io(self.store.note, request.match_info["note_id"])
        if note is None:
            return error_response(404, "no such note")
        return web.json_response(
            {
                "note_id": note.note_id,
                "revision": note.revision,
                "status": note.status,
                "note_type": note.note_type,
                "created_at": note.created_at,
                "text": note.text,
                "results": [r.model_dump(mode="json") for r in note.results],
                "reasons": note.reasons,
                "audit": note.audit,
                "labels": {r.task: self.labels.get(r.task, []) for r in note.results},
                "lease": lease_json(self.leases.holder(note.note_id)),
            }
        )

    async def api_history(self, request: web.Request) -> web.Response:
        history = await self._io(self.store.history, request.match_info["note_id"])
        if not history["revisions"]:
            return error_response(404, "no such note")
        return web.json_response(history)

    async def api_decide(self, request: web.Request) -> web.Response:
        session = request[SESSION]
        note_id = request.match_info["note_id"]
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            decision_request = DecisionRequest.model_validate(body)
        except ValidationError as exc:
            return error_response(422, "malformed decision", validation_summary(exc).split("; "))
        if not self.leases.held_by(note_id, session.reviewer_id, decision_request.lease_id):
            return error_response(409, "you do not hold a live lease on this task (it expired or was never claimed); claim it again")
        note = await self._pending_note(note_id)
        if isinstance(note, web.Response):
            return note
        try:
            decision = build_decision(decision_request, note, session.reviewer_id, self.labels)
        except DecisionInvalid as exc:
            return error_response(422, "decision does not fit the note", exc.problems)
        try:
            await self._io(self.publisher.send, decision)
        except Exception as exc:  # the broker did not acknowledge: nothing was written, the reviewer can retry
            log.error("could not publish a decision: %s", type(exc).__name__)
            return error_response(503, "the decision could not be published (broker unavailable); nothing was saved, try again")
        corrected = any(c.action is not ChangeAction.accept for c in decision.changes)
        REVIEW_DECISIONS.labels("corrected" if corrected else "accepted").inc()
        now = time.time()
        self._submitted = {k: at for k, at in self._submitted.items() if now - at <= SUBMITTED_TTL_S}
        self._submitted[note_id] = now
        self.leases.release(note_id, session.reviewer_id)
        log.info("decision %s by %s: %d changes", decision.decision_id, session.reviewer_id, len(decision.changes))
        return web.json_response(
            {
                "decision_id": decision.decision_id,
                "note_id": note_id,
                "revision": decision.base_revision + 1,
                "changes": [c.model_dump(mode="json") for c in decision.changes],
            },
            status=201,
        )

    async def api_health(self, _request: web.Request) -> web.Response:
        return web.json_response(await self._io(self.store.health))

    @staticmethod
    async def _json_body(request: web.Request, allow_empty: bool = False) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw.strip() and allow_empty:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            return error_response(400, "the body is not JSON")
        if not isinstance(body, dict):
            return error_response(400, "the body must be a JSON object")
        return body
