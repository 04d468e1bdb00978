"""The review API on real components: the app on loopback, chdb, the Tansu broker (and the sink for the full loop)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from schemas.codec import Codecs
from schemas.extraction import TaskKind
from schemas.review_decision import ChangeAction, ReviewDecision
from streams.kafka.clients import ensure_topics
from streams.logs import CLIENT_LOGGERS, cap_client_loggers
from streams.review.accounts import hash_password, verify_password
from streams.review.publisher import DecisionPublisher
from streams.review.server import ReviewApp
from streams.review.serving import ReviewServer
from streams.runtime.broker import TansuBroker
from streams.runtime.sink_thread import SinkThread
from streams.settings import Settings
from streams.sink.backend import ChdbBackend
from streams.waiting import poll_until
from tests.review_helpers import NOTE_TEXT, PASSWORDS, Client, pending_note, review_settings, store_pending

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry


@dataclass
class Running:
    settings: Settings
    server: ReviewServer
    url: str


def _start(settings: Settings, database: ChdbBackend, broker: TansuBroker) -> ReviewServer:
    ensure_topics(settings, broker.bootstrap)
    app = ReviewApp(settings, database, DecisionPublisher(settings, broker.bootstrap, PLAIN))
    server = ReviewServer(app, "127.0.0.1", 0)
    server.start()
    return server


@pytest.fixture
def review_app(broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend) -> Iterator[Running]:
    settings = review_settings(tiny_settings)
    store_pending(database, pending_note("n1"), pending_note("n2"))
    server = _start(settings, database, broker)
    yield Running(settings, server, server.url)
    server.stop()


def _decisions_on_topic(broker: TansuBroker, topic: str) -> list[ReviewDecision]:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=1500)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = [PLAIN.of(ReviewDecision).decode(m.value) for m in consumer]
    consumer.close()
    return out


def _good_decision(lease_id: str) -> dict[str, object]:
    return {
        "lease_id": lease_id,
        "base_revision": 0,
        "results": [
            {"task": "condition", "label": "cardio"},
            {"task": "disease", "entities": [{"label": "Disease", "start": 8, "end": 14}, {"label": "Disease", "start": 19, "end": 23}]},
        ],
    }


def test_passwords_are_stored_as_scrypt_hashes() -> None:
    stored = hash_password("s3cret pass")
    assert stored.startswith("scrypt$") and "s3cret" not in stored
    assert verify_password("s3cret pass", stored) and not verify_password("s3cret pas", stored)
    assert not verify_password("anything", "plain-text-in-config")


def test_unauthenticated_and_cross_site_requests_are_refused(review_app: Running) -> None:
    anon = Client(review_app.url)
    for method, path in [("GET", "/api/tasks"), ("POST", "/api/tasks/next"), ("GET", "/api/notes/n1"), ("POST", "/api/notes/n1/decisions")]:
        assert anon.call(method, path, {}).status == 401, path
    page = anon.call("GET", "/")  # urllib follows the redirect to the sign-in page
    assert page.status == 200 and "Sign in" in page.body
    assert anon.call("GET", "/healthz").status == 200
    assert anon.login("alice", "wrong password").status == 401
    assert anon.login("mallory", "anything").status == 401

    token = Client(review_app.url)
    assert token.login("alice").status == 200
    # the same session as a browser cookie: writes need the CSRF header, and a foreign Origin is refused
    browser = Client(review_app.url)
    browser.cookie = f"ehrstream_session={token.token}"
    assert browser.call("GET", "/api/tasks").status == 200
    assert browser.call("POST", "/api/tasks/n1/claim").status == 403
    csrf = browser.call("GET", "/api/session").body["csrf_token"]
    foreign = browser.call("POST", "/api/tasks/n1/claim", headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
    assert foreign.status == 403
    assert browser.call("POST", "/api/tasks/n1/claim", headers={"X-CSRF-Token": csrf}).status == 200
    headers = browser.call("GET", "/api/tasks").headers
    assert headers["Cache-Control"] == "no-store" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "Queue health" in token.call("GET", "/queue-health").body
    assert token.call("POST", "/logout").status == 200
    assert token.call("GET", "/api/tasks").status == 401  # the session is gone


def test_repeated_failed_sign_ins_lock_the_reviewer_id_out(review_app: Running) -> None:
    client = Client(review_app.url)
    statuses = [client.login("bob", "guess").status for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    assert client.login("bob").status == 429  # even the right password, until the lockout passes
    assert client.login("alice").status == 200  # other reviewers are not affected


def test_a_claimed_task_cannot_be_claimed_by_another_reviewer(review_app: Running) -> None:
    alice, bob = Client(review_app.url), Client(review_app.url)
    alice.login("alice")
    bob.login("bob")
    first = alice.call("POST", "/api/tasks/next")
    assert first.status == 200 and first.body["note_id"] == "n1"  # oldest first (same time: by note id)
    refused = bob.call("POST", "/api/tasks/n1/claim")
    assert refused.status == 409 and "alice" in refused.body["error"]
    assert bob.call("POST", "/api/tasks/next").body["note_id"] == "n2"  # next skips claimed tasks
    renewed = alice.call("POST", "/api/tasks/n1/claim")
    assert renewed.status == 200 and renewed.body["lease"]["lease_id"] == first.body["lease"]["lease_id"]
    listed = {t["note_id"]: t["lease"] for t in alice.call("GET", "/api/tasks").body["tasks"]}
    assert listed["n1"]["reviewer_id"] == "alice" and listed["n2"]["reviewer_id"] == "bob"
    assert alice.call("DELETE", "/api/tasks/n1/claim").body == {"released": True}
    assert bob.call("POST", "/api/tasks/n1/claim").status == 200
    assert bob.call("DELETE", "/api/tasks/n2/claim").body == {"released": True}
    # skipping (n with a task open): the page sends what it skipped, so the same note is not handed straight back
    assert bob.call("POST", "/api/tasks/next", {"skip": ["n1"]}).body["note_id"] == "n2"
    assert alice.call("POST", "/api/tasks/next", {"skip": ["n2"]}).status == 404  # n1 is bob's, n2 skipped
    assert alice.call("POST", "/api/tasks/next", {"skip": "n2"}).status == 422


def test_an_expired_claim_returns_to_the_queue(broker: TansuBroker, tiny_settings: Settings, database: ChdbBackend) -> None:
    settings = review_settings(tiny_settings, lease_seconds=1.0)
    store_pending(database, pending_note("n1"))
    server = _start(settings, database, broker)
    try:
        alice, bob = Client(server.url), Client(server.url)
        alice.login("alice")
        bob.login("bob")
        lease = alice.call("POST", "/api/tasks/next").body["lease"]
        assert bob.call("POST", "/api/tasks/next").status == 404  # the only task is claimed
        time.sleep(1.3)
        assert bob.call("POST", "/api/tasks/next").body["note_id"] == "n1"
        late = alice.call("POST", "/api/notes/n1/decisions", _good_decision(lease["lease_id"]))
        assert late.status == 409 and "lease" in late.body["error"]
    finally:
        server.stop()
    assert _decisions_on_topic(broker, settings.topics.review_decisions) == []


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ("not json", 400, "not JSON"),
        ({"lease_id": "x", "base_revision": 0}, 422, "results: Field required"),
        ({"results": [], "base_revision": -1, "lease_id": "x", "extra": 1}, 422, "extra: Extra inputs are not permitted"),
    ],
)
def test_malformed_decisions_are_rejected_and_nothing_is_written(
    review_app: Running, broker: TansuBroker, body: object, status: int, expected: str
) -> None:
    alice = Client(review_app.url)
    alice.login("alice")
    alice.call("POST", "/api/tasks/n1/claim")
    reply = alice.call("POST", "/api/notes/n1/decisions", raw=body.encode() if isinstance(body, str) else None, body=body)
    assert reply.status == status
    assert expected in str(reply.body)
    assert _decisions_on_topic(broker, review_app.settings.topics.review_decisions) == []


def test_decisions_that_do_not_fit_the_note_are_rejected_with_every_problem(review_app: Running, broker: TansuBroker) -> None:
    alice = Client(review_app.url)
    alice.login("alice")
    lease = alice.call("POST", "/api/tasks/n1/claim").body["lease"]["lease_id"]
    bad = {
        "lease_id": lease,
        "base_revision": 0,
        "results": [
            {"task": "condition", "label": "no-such-label"},
            {"task": "disease", "entities": [{"label": "Disease", "start": 30, "end": 99}, {"label": "Drug", "start": 19, "end": 23}]},
        ],
    }
    reply = alice.call("POST", "/api/notes/n1/decisions", bad)
    assert reply.status == 422
    problems = " | ".join(reply.body["problems"])
    assert "label 'no-such-label' is not one of ['cardio', 'neuro', 'onco']" in problems
    assert f"span 30-99 is outside the note (length {len(NOTE_TEXT)})" in problems
    assert "label 'Drug'" in problems
    stale = alice.call("POST", "/api/notes/n1/decisions", {**_good_decision(lease), "base_revision": 3})
    assert stale.status == 422 and "newest revision" in stale.body["problems"][0]
    missing = alice.call(
        "POST", "/api/notes/n1/decisions", {**_good_decision(lease), "results": [{"task": "condition", "label": "cardio"}]}
    )
    assert missing.status == 422 and "exactly once" in missing.body["problems"][0]
    assert _decisions_on_topic(broker, review_app.settings.topics.review_decisions) == []


def test_a_decision_closes_the_loop_into_clickhouse(
    review_app: Running, broker: TansuBroker, database: ChdbBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cap_client_loggers("DEBUG")  # as configure_logging does in every ehrstream process
    alice = Client(review_app.url)
    alice.login("alice")
    lease = alice.call("POST", "/api/tasks/next").body["lease"]["lease_id"]
    note = alice.call("GET", "/api/notes/n1").body
    assert note["text"] == NOTE_TEXT and note["labels"] == {"condition": ["cardio", "neuro", "onco"], "disease": ["Disease"]}
    assert "patient_id" not in note  # reviewers see the note, not the patient's identifiers
    reply = alice.call("POST", "/api/notes/n1/decisions", {**_good_decision(lease), "comment": "gout missed"})
    assert reply.status == 201, reply.body
    actions = [(c["task"], c["action"]) for c in reply.body["changes"]]
    assert actions == [("condition", "set_document_label"), ("disease", "accept"), ("disease", "add_span")]
    assert alice.call("POST", "/api/tasks/n1/claim").status == 409  # decided: not claimable again
    assert [t["note_id"] for t in alice.call("GET", "/api/tasks").body["tasks"]] == ["n2"]

    (decision,) = _decisions_on_topic(broker, review_app.settings.topics.review_decisions)
    assert decision.reviewer_id == "alice" and decision.base_revision == 0 and decision.comment == "gout missed"
    assert [c.action for c in decision.changes] == [ChangeAction.set_document_label, ChangeAction.accept, ChangeAction.add_span]

    sink = SinkThread(review_app.settings, broker.bootstrap, backend=database)
    sink.start()
    db = database.database
    try:
        poll_until(lambda: bool(database.query(f"SELECT count() FROM {db}.review_decisions").scalar()), 60, "the decision row", 0.3)
    finally:
        sink.stop()
    row = database.query(
        f"SELECT revision, status, doc_labels, arrayMap(e -> e.text, entities) FROM {db}.extractions_final WHERE note_id = 'n1'"
    ).rows
    assert row == [[1, "reviewed", [{"task": "condition", "label": "cardio", "probability": 1}], ["asthma", "gout"]]]
    history = alice.call("GET", "/api/notes/n1/history").body
    assert [r["status"] for r in history["revisions"]] == ["pending_review", "reviewed"]
    assert history["decisions"][0]["reviewer_id"] == "alice"
    health = alice.call("GET", "/api/queue-health").body
    assert health["backlog"] == [{"task": "condition", "pending": 1, **_ignore(health["backlog"][0])}, *health["backlog"][1:]]
    agreement = {(a["task"], a["label"]): a["agreement"] for a in health["agreement"]}
    assert agreement == {("condition", "neuro"): 0, ("disease", "Disease"): 0.5}
    # logged at DEBUG: route patterns and reviewer ids, never note text, patient ids or secrets
    logged = caplog.text
    assert "POST /api/notes/{note_id}/decisions 201" in logged and "/api/notes/n1" not in logged
    assert "asthma" not in logged and "gout" not in logged and "MRN-1" not in logged
    assert PASSWORDS["alice"] not in logged and str(alice.token) not in logged
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _ignore(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k not in ("task", "pending")}


def test_reviewed_notes_export_for_train_prodigy_and_label_studio(database: ChdbBackend, tmp_path: Path) -> None:
    from agents.learning.datasets import read_examples
    from schemas.extraction import DocumentLabel, Entity, ExtractionStatus, TaskResult
    from streams.review.export import export_reviewed
    from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row

    base, task = pending_note("n1")
    reviewed = base.model_copy(
        update={
            "revision": 1,
            "status": ExtractionStatus.reviewed,
            "results": [
                base.results[0].model_copy(update={"labels": [DocumentLabel(label="cardio", probability=1.0)]}),
                TaskResult(
                    task="disease",
                    kind=TaskKind.ner,
                    model_name="tiny-ner",
                    model_version="v1",
                    entities=[Entity(label="Disease", start=19, end=23, text="gout", confidence=1.0)],
                ),
            ],
        }
    )
    store_pending(database, (base, task), pending_note("n2"))  # n2 is not reviewed: not exported
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row([extraction_row(reviewed, 0, 9)]))

    ner_file = tmp_path / "disease.jsonl"
    assert export_reviewed(database, "disease", TaskKind.ner, "jsonl", ner_file, ["Disease"]) == 1
    (example,) = read_examples(ner_file, "ner")  # what `ehrstream train --data FILE` reads
    assert example.spans == [(19, 23, "Disease")] and example.text == NOTE_TEXT
    cls_file = tmp_path / "condition.jsonl"
    export_reviewed(database, "condition", TaskKind.classification, "jsonl", cls_file, ["cardio", "neuro", "onco"])
    assert [e.label for e in read_examples(cls_file, "classification")] == ["cardio"]

    export_reviewed(database, "disease", TaskKind.ner, "prodigy", tmp_path / "p.jsonl", ["Disease"])
    prodigy = json.loads((tmp_path / "p.jsonl").read_text())
    assert prodigy["spans"] == [{"start": 19, "end": 23, "label": "Disease", "text": "gout"}] and prodigy["answer"] == "accept"
    assert prodigy["meta"] == {"note_id": "n1", "revision": 1, "task": "disease"}
    export_reviewed(database, "condition", TaskKind.classification, "prodigy", tmp_path / "pc.jsonl", ["cardio", "neuro", "onco"])
    assert json.loads((tmp_path / "pc.jsonl").read_text())["accept"] == ["cardio"]

    export_reviewed(database, "disease", TaskKind.ner, "labelstudio", tmp_path / "ls.json", ["Disease"])
    (ls_task,) = json.loads((tmp_path / "ls.json").read_text())
    assert ls_task["data"]["note_id"] == "n1"
    (result,) = ls_task["annotations"][0]["result"]
    assert result["type"] == "labels" and result["value"] == {"start": 19, "end": 23, "text": "gout", "labels": ["Disease"]}


def test_reviewer_hash_command_prints_a_config_entry_never_the_password() -> None:
    from click.testing import CliRunner

    from streams.cli import main

    result = CliRunner().invoke(main, ["reviewer", "hash", "carol", "--password-stdin"], input="a long enough password\n")
    assert result.exit_code == 0, result.output
    assert "a long enough password" not in result.output
    stored = result.output.split('password_hash = "')[1].split('"')[0]
    assert result.output.startswith('[[review.reviewers]]\nid = "carol"') and verify_password("a long enough password", stored)
    short = CliRunner().invoke(main, ["reviewer", "hash", "carol", "--password-stdin"], input="short\n")
    assert short.exit_code == 2 and "at least 12 characters" in short.output
