"""No PHI or secret in any log, at DEBUG: the whole stack as a user runs it, with planted values, then a scan.

``ehrstream up`` (broker, sink, worker subprocess, review app), ``publish``, ``query`` and a reviewer's
sign-in all run at ``--log-level DEBUG`` with a planted note text, patient id, encounter id, reviewer
password, ClickHouse password and Kafka SASL password. Every byte any of them wrote to stdout, stderr or
a log file is then searched for each planted value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.clinical_note import ClinicalNote
from streams.kafka.clients import producer
from streams.review.accounts import hash_password
from streams.runtime.processes import free_port
from streams.runtime.stack import running_stack
from streams.settings import Settings
from tests.conftest import REPO
from tests.review_helpers import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PLANTED = {
    "note text": "Ottoline Featherstonehaugh reports paroxysmal quillwort dyscrasia",
    "patient id": "MRN-31415926",
    "encounter id": "ENC-27182818",
    "reviewer password": "planted reviewer passphrase 42",
    "ClickHouse password": "planted-clickhouse-Secret-9",
    "Kafka password": "planted-sasl-Secret-7",
}


def _config(path: Path, tiny_cls_dir: Path, tiny_ner_dir: Path) -> Path:
    path.write_text(
        "\n".join(
            [
                "[[tasks]]",
                'name = "condition"',
                'kind = "classification"',
                f"model_dir = {json.dumps(str(tiny_cls_dir))}",
                "[[tasks]]",
                'name = "disease"',
                'kind = "ner"',
                f"model_dir = {json.dumps(str(tiny_ner_dir))}",
                "[[review.reviewers]]",
                'id = "alice"',
                f'password_hash = "{hash_password(PLANTED["reviewer password"])}"',
            ]
        )
        + "\n"
    )
    return path


def _notes(path: Path) -> Path:
    lines = [
        ClinicalNote(
            note_id=f"priv-{i}",
            patient_id=PLANTED["patient id"],
            encounter_id=PLANTED["encounter id"],
            note_type="progress_note",
            created_at="2026-11-01T08:00:00Z",
            text=f"{PLANTED['note text']}. Visit {i}.",
            source="privacy",
        ).model_dump_json()
        for i in range(8)
    ]
    # rejected at publish: the reason names the field, not the value
    lines.append(json.dumps({"note_id": "bad", "patient_id": PLANTED["patient id"], "created_at": PLANTED["note text"], "text": 5}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_no_note_text_patient_id_or_secret_in_any_log_at_debug(tiny_cls_dir: Path, tiny_ner_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = _config(tmp_path / "ehrstream.toml", tiny_cls_dir, tiny_ner_dir)
    review_port = free_port()
    env = {
        **os.environ,
        "EHRSTREAM_LOG_LEVEL": "DEBUG",
        "EHRSTREAM_EMBEDDED_WORKERS": "1",
        "EHRSTREAM_REVIEW__PORT": str(review_port),
        "CLICKHOUSE_PASSWORD": PLANTED["ClickHouse password"],
        "EHRSTREAM_KAFKA__SASL_USERNAME": "ingest",
        "EHRSTREAM_KAFKA__SASL_PASSWORD": PLANTED["Kafka password"],
    }
    cli = [sys.executable, "-m", "streams.cli", "--config", str(config), "--data-dir", str(data)]
    outputs: list[Path] = []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*cli, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        out = tmp_path / f"out-{len(outputs)}.txt"
        out.write_text(proc.stdout + proc.stderr)
        outputs.append(out)
        return proc

    up_log = tmp_path / "up.txt"
    outputs.append(up_log)
    with up_log.open("wb") as out:
        up = subprocess.Popen([*cli, "up"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while running_stack(data) is None:
            assert up.poll() is None and time.monotonic() < deadline, up_log.read_text()[-3000:]
            time.sleep(0.2)
        bootstrap = str(running_stack(data)["bootstrap"])  # type: ignore[index]

        published = run("publish", str(_notes(tmp_path / "notes.jsonl")), "--json")
        assert published.returncode == 0, published.stderr[-2000:]
        # a record that fails in the worker (not at publish): the dead letter's reason must not quote it
        p = producer(Settings(), bootstrap)
        p.send("ehr.notes", key=b"bad-2", value=json.dumps({"note_id": "bad-2", "patient_id": PLANTED["patient id"], "text": [1]}).encode())
        p.flush()
        p.close()

        deadline = time.monotonic() + 120
        counts: list[int] = []
        while time.monotonic() < deadline:
            result = run(
                "query", "SELECT (SELECT count() FROM ehrstream.extractions_final), (SELECT count() FROM ehrstream.dead_letters)", "--json"
            )
            if result.returncode == 0:
                counts = json.loads(result.stdout)["rows"][0]
                if counts == [8, 1]:
                    break
            time.sleep(1)
        assert counts == [8, 1], up_log.read_text()[-3000:]

        alice = Client(f"http://127.0.0.1:{review_port}")
        assert alice.login("alice", PLANTED["reviewer password"]).status == 200
        task = alice.call("POST", "/api/tasks/next", {"skip": []})
        assert task.status in (200, 204)
        assert run("review-health").returncode == 0
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)

    logs = outputs + sorted(data.glob("*.log"))
    assert any(path.name.startswith("worker") for path in logs)
    scanned = {path.name: path.read_text(errors="replace") for path in logs}
    assert any("DEBUG" in text for text in scanned.values())  # the scan is of DEBUG output, not of silence
    leaks = [(name, what) for name, text in scanned.items() for what, value in PLANTED.items() if value in text]
    assert not leaks, leaks
    assert alice.token and all(str(alice.token) not in text for text in scanned.values())
