"""Shared pieces of the review tests: accounts, a pending note in ClickHouse, the app on loopback, an HTTP client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from schemas.extraction import DocumentLabel, Entity, Extraction, ExtractionStatus, TaskKind, TaskResult
from schemas.review_task import ReasonKind, ReviewReason, ReviewTask
from streams.review.accounts import hash_password
from streams.settings import ReviewerAccount, ReviewSettings, Settings
from streams.sink.backend import ChdbBackend
from streams.sink.migrations import migrate
from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row, review_task_row

PASSWORDS = {"alice": "correct horse battery", "bob": "tr0ub4dor&3"}
NOTE_TEXT = "Pt with asthma and gout. No fever."


def review_settings(settings: Settings, lease_seconds: float = 600.0) -> Settings:
    accounts = [ReviewerAccount(id=rid, password_hash=SecretStr(hash_password(pw))) for rid, pw in PASSWORDS.items()]
    # random_share 0: the queue serves its own order every time, so a test knows which task comes next
    review = ReviewSettings(host="127.0.0.1", port=0, reviewers=accounts, lease_seconds=lease_seconds, random_share=0.0)
    return settings.model_copy(update={"review": review})


def pending_note(note_id: str = "n1", text: str = NOTE_TEXT) -> tuple[Extraction, ReviewTask]:
    results = [
        TaskResult(
            task="condition",
            kind=TaskKind.classification,
            model_name="tiny-cls",
            model_version="v1",
            labels=[DocumentLabel(label="neuro", probability=0.45), DocumentLabel(label="cardio", probability=0.35)],
        ),
        TaskResult(
            task="disease",
            kind=TaskKind.ner,
            model_name="tiny-ner",
            model_version="v1",
            entities=[Entity(label="Disease", start=8, end=14, text="asthma", confidence=0.42)],
        ),
    ]
    created = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    extraction = Extraction(
        note_id=note_id,
        revision=0,
        patient_id="MRN-1",
        note_type="progress_note",
        source="test",
        created_at=created,
        text=text,
        status=ExtractionStatus.pending_review,
        results=results,
        processed_at=created,
    )
    task = ReviewTask(
        note_id=note_id,
        revision=0,
        note_type="progress_note",
        created_at=created,
        reasons=[
            ReviewReason(task="condition", kind=ReasonKind.document_label, label="neuro", confidence=0.45, threshold=0.5),
            ReviewReason(task="disease", kind=ReasonKind.entity, label="Disease", start=8, end=14, confidence=0.42, threshold=0.5),
        ],
    )
    return extraction, task


def store_pending(database: ChdbBackend, *notes: tuple[Extraction, ReviewTask]) -> None:
    migrate(database)
    database.insert_json(
        "extractions", TABLE_COLUMNS["extractions"], json_each_row([extraction_row(e, 0, i) for i, (e, _) in enumerate(notes)])
    )
    database.insert_json("review_tasks", TABLE_COLUMNS["review_tasks"], json_each_row([review_task_row(t) for _, t in notes]))


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Client:
    """Plain urllib against the running app; bearer token or cookie."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.token: str | None = None
        self.cookie: str | None = None

    def login(self, reviewer: str, password: str | None = None) -> Reply:
        reply = self.call("POST", "/api/login", {"reviewer": reviewer, "password": password or PASSWORDS[reviewer]})
        if reply.status == 200:
            self.token = reply.body["token"]
        return reply

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if self.cookie:
            all_headers["Cookie"] = self.cookie
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                payload = resp.read()
                status, hdrs = resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            payload, status, hdrs = exc.read(), exc.code, dict(exc.headers)
        try:
            parsed: Any = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode("utf-8", "replace")
        return Reply(status, parsed, hdrs)
