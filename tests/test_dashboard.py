"""The Grafana dashboard (compose profile "monitoring") asks only for metrics ehrstream exports, covers what operators
watch, and is provisioned with the Prometheus datasource it names. Live scrapes are checked in test_metrics.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import streams.metrics  # noqa: F401 (registers every family)
from streams.review.backlog import BacklogMonitor
from streams.review.store import ReviewStore
from streams.sink.backend import ChdbBackend
from streams.sink.migrations import migrate
from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ehrstream.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def dashboard_metrics() -> set[str]:
    return {name for panel in dashboard()["panels"] for t in panel["targets"] for name in re.findall(r"\behrstream_\w+", t["expr"])}


def exported_families() -> dict[str, str]:
    """ehrstream's metric families as this process's registry holds them: name -> type."""
    return {m.name: m.type for m in REGISTRY.collect() if m.name.startswith("ehrstream_")}


def family_of(sample: str, families: dict[str, str]) -> str | None:
    for family, kind in families.items():
        if any(sample == family + suffix for suffix in SUFFIXES.get(kind, ("",))):
            return family
    return None


def test_every_dashboard_query_names_a_metric_ehrstream_exports_with_its_type_suffix() -> None:
    families = exported_families()
    unknown = {name for name in dashboard_metrics() if family_of(name, families) is None}
    assert unknown == set()


def test_the_dashboard_covers_what_operators_watch() -> None:
    families = exported_families()
    used = {family_of(name, families) for name in dashboard_metrics()}
    watched = {
        "ehrstream_worker_records_in",  # notes in
        "ehrstream_worker_notes_out",  # notes out, and the review rate
        "ehrstream_stage_seconds",  # stage latencies
        "ehrstream_worker_batch_notes",  # batch sizes
        "ehrstream_consumer_lag",
        "ehrstream_review_backlog",
        "ehrstream_dead_letters",  # by kind
        "ehrstream_gpu_memory_bytes",
        "ehrstream_gpu_utilisation_percent",
    }
    assert watched <= used


def test_panels_are_well_formed_and_use_the_provisioned_datasource() -> None:
    board = dashboard()
    (datasource,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "ehrstream.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert board["uid"] and board["title"] == "ehrstream" and board["panels"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"].strip() and t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in compose["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose["volumes"]
    assert compose["profiles"] == ["monitoring"]


def test_the_review_backlog_gauge_reads_the_queue(database: ChdbBackend) -> None:
    """The review app's backlog gauges, as its monitor thread refreshes them, end up in the scrape: one note waits
    for review on the disease task, none on the condition task."""
    from datetime import UTC, datetime

    from schemas.extraction import ExtractionStatus, TaskKind
    from schemas.review_task import ReasonKind, ReviewReason, ReviewTask
    from streams.sink.rows import TABLE_COLUMNS, extraction_row, json_each_row, review_task_row
    from tests.test_sink import extraction

    migrate(database)
    pending = extraction("waiting-1", status=ExtractionStatus.pending_review)
    reason = ReviewReason(task="disease", kind=ReasonKind.entity, label="Disease", start=4, end=10, confidence=0.4, threshold=0.8)
    task = ReviewTask(note_id="waiting-1", revision=0, note_type="progress_note", created_at=datetime.now(UTC), reasons=[reason])
    database.insert_json("extractions", TABLE_COLUMNS["extractions"], json_each_row([extraction_row(pending, 0, 0)]))
    database.insert_json("review_tasks", TABLE_COLUMNS["review_tasks"], json_each_row([review_task_row(task)]))
    store = ReviewStore(database, {"disease": TaskKind.ner, "condition": TaskKind.classification})
    BacklogMonitor(store, interval_s=60).refresh()
    samples = [s for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()) for s in family.samples]
    backlog = {s.labels["task"]: s.value for s in samples if s.name == "ehrstream_review_backlog"}
    assert backlog["disease"] == 1 and backlog["condition"] == 0
    ages = {s.labels["task"]: s.value for s in samples if s.name == "ehrstream_review_oldest_age_seconds"}
    assert ages["disease"] >= 0 and ages["condition"] == 0


@pytest.mark.parametrize("name", ["ehrstream_worker_records_in_total", "ehrstream_stage_seconds_bucket", "ehrstream_consumer_lag"])
def test_family_lookup_understands_suffixes(name: str) -> None:
    assert family_of(name, exported_families()) is not None
