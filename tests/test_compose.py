"""docker-compose.yml, checked statically (no Docker engine runs here), and ``ehrstream init`` for real.

The compose file is parsed as Compose does it (YAML with merge keys, ``${VAR:-default}`` substitution)
and checked against what the code expects: every service, command, port, volume, secret, healthcheck
and environment variable; the same environment is then loaded as ehrstream's settings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cli import main
from streams.runtime.broker import TansuBroker
from streams.settings import Settings
from tests.conftest import REPO
from tests.registry_server import LoopbackRegistry

COMPOSE = REPO / "docker-compose.yml"
EHRSTREAM_SERVICES = {"init", "worker", "worker-cpu", "sink", "review"}
LONG_RUNNING = {"kafka", "clickhouse", "schema-registry", "worker", "worker-cpu", "sink", "review", "prometheus", "grafana"}


def _substitute(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error} (the error when unset or empty)."""
    if isinstance(value, dict):
        return {k: _substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        current = env.get(name, "")
        if op == ":?" and not current:
            raise KeyError(f"{name}: {arg}")
        return current or (arg if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved by the YAML loader
    return _substitute(raw, {"EHRSTREAM_REVIEW__REVIEWERS": "[]"})  # type: ignore[no-any-return]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {k: str(v) for k, v in env.items()}


def test_every_service_is_there_with_its_image_and_restart_policy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == EHRSTREAM_SERVICES | {"kafka", "clickhouse", "schema-registry", "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:")  # the official image, KRaft mode
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
        assert "healthcheck" in services[name] or name == "prometheus", name
    assert services["init"]["restart"] == "on-failure"  # one shot, retried until it succeeds once
    # persistent volumes for the broker's log and the database, declared at the top level
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    assert "clickhouse-data:/var/lib/clickhouse" in services["clickhouse"]["volumes"]
    assert {"kafka-data", "clickhouse-data"} <= set(compose["volumes"])


def test_ehrstream_services_run_real_commands_after_init(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in EHRSTREAM_SERVICES:
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["command"][0] in main.commands, (name, service["command"])
        assert "clickhouse_password" in service["secrets"]
        if name != "init":
            assert service["depends_on"]["init"]["condition"] == "service_completed_successfully", name
    init_deps = services["init"]["depends_on"]
    assert init_deps["kafka"]["condition"] == init_deps["clickhouse"]["condition"] == "service_healthy"


def test_workers_scale_share_a_group_and_only_the_gpu_profile_reserves_a_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gpu, cpu = services["worker"], services["worker-cpu"]
    for worker in (gpu, cpu):
        # --scale needs no fixed container name and no host port
        assert "container_name" not in worker and "ports" not in worker
        assert "EHRSTREAM_WORKER_GROUP" not in _env(worker)  # every replica in the default group
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert _env(gpu)["EHRSTREAM_DEVICE"] == "cuda" and "cu12" in gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert "deploy" not in cpu and _env(cpu)["EHRSTREAM_DEVICE"] == "cpu"
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    partitions = int(_env(gpu)["EHRSTREAM_TOPIC_PARTITIONS"])
    assert partitions >= 4  # room to scale out
    # the replicas share their quantised int8 models (agents.runners.onnx_cache) in a volume their user can write
    for worker in (gpu, cpu):
        assert worker["volumes"] == ["onnx-cache:/app/.ehrstream/cache"]
    assert "onnx-cache" in compose["volumes"]
    assert Settings(data_dir=Path("/app/.ehrstream")).onnx_cache().directory == Path("/app/.ehrstream/cache/onnx")
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "EHRSTREAM_DATA_DIR=/app/.ehrstream" in dockerfile
    assert "mkdir -p /app/.ehrstream/cache && chown -R ehrstream /app/.ehrstream" in dockerfile


def test_addresses_ports_and_secrets_agree_across_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka_env = services["kafka"]["environment"]
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split("://", 1)[1]
    for name in EHRSTREAM_SERVICES:
        env = _env(services[name])
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == advertised
        assert env["CLICKHOUSE_URL"] == "http://clickhouse:8123"
        assert env["CLICKHOUSE_USER"] == services["clickhouse"]["environment"]["CLICKHOUSE_USER"]
        assert env["CLICKHOUSE_PASSWORD_FILE"] == services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD_FILE"]
        assert env["CLICKHOUSE_PASSWORD_FILE"] == "/run/secrets/clickhouse_password"  # where Compose mounts the secret
    assert compose["secrets"]["clickhouse_password"]["file"] == "./secrets/clickhouse_password"
    # the records ehrstream produces fit the broker's limit
    assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) > Settings().max_record_bytes
    # healthchecks probe the ports the processes serve
    metrics_port = _env(services["sink"])["EHRSTREAM_METRICS_PORT"]
    for name in ("worker", "worker-cpu", "sink"):
        assert f"127.0.0.1:{metrics_port}/metrics" in " ".join(services[name]["healthcheck"]["test"]), name
    review = services["review"]
    port = review["command"][review["command"].index("--port") + 1]
    assert review["ports"] == [f"127.0.0.1:{port}:{port}"] and f":{port}/healthz" in " ".join(review["healthcheck"]["test"])
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    sd = prometheus["scrape_configs"][0]["dns_sd_configs"][0]
    assert set(sd["names"]) == {"worker", "worker-cpu", "sink", "review"} and str(sd["port"]) == metrics_port
    registry = services["schema-registry"]
    assert registry["environment"]["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"].endswith(advertised)


def test_analysts_have_a_read_only_clickhouse_user_limited_to_the_ehrstream_database(compose: dict[str, Any]) -> None:
    """The server enforces it (readonly = 1 in the user's profile, a SELECT grant on one database), not ehrstream; the
    password is a compose secret handed to the server's config through the environment, never in the repository."""
    import xml.etree.ElementTree as ET

    clickhouse = compose["services"]["clickhouse"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in clickhouse["volumes"] if m.startswith("./")}
    source = mounts["/etc/clickhouse-server/users.d/analyst.xml"]
    config = ET.parse(REPO / source).getroot()
    user = config.find("users/analyst")
    assert user is not None
    profile = config.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") == "1"  # 1: no writes, no settings, no outside table functions
    grants = [q.text for q in user.findall("grants/query")]
    assert grants == [f"GRANT SELECT ON {Settings().clickhouse_database}.*"]
    password = user.find("password")
    assert password is not None and not (password.text or "").strip() and password.get("from_env") == "ANALYST_PASSWORD"
    secret = "clickhouse_analyst_password"
    assert secret in clickhouse["secrets"] and compose["secrets"][secret]["file"] == f"./secrets/{secret}"
    assert f'export ANALYST_PASSWORD="$(cat /run/secrets/{secret})" && exec /entrypoint.sh' in " ".join(clickhouse["entrypoint"]).replace(
        "$$", "$"
    )  # Compose's escape
    assert all(user.find(tag) is None for tag in ("password_sha256_hex", "password_double_sha1_hex", "access_management"))


def test_the_compose_environment_is_valid_ehrstream_settings(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every variable the file sets is one ehrstream reads, and together they load (production checks included)."""
    secret = tmp_path / "clickhouse_password"
    secret.write_text("a-real-Password-41\n")
    for name in EHRSTREAM_SERVICES:
        env = _env(compose["services"][name])
        for key in list(os.environ):
            if key.startswith(("EHRSTREAM_", "CLICKHOUSE_", "KAFKA_", "SCHEMA_REGISTRY")):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(secret) if key.endswith("_FILE") else value)
        settings = Settings.load()
        assert settings.environment == "production" and not settings.embedded_kafka and not settings.embedded_clickhouse
        assert settings.clickhouse_password.get_secret_value() == "a-real-Password-41"
        assert settings.metrics_port == 9400
        known = {"KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL", "CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD_FILE", "SCHEMA_REGISTRY_URL"}
        for key in env:
            field = key.removeprefix("EHRSTREAM_").split("__")[0].lower()
            assert key in known or field in Settings.model_fields, (name, key)
        # the same settings run embedded once the two service addresses are left out
        monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
        monkeypatch.delenv("CLICKHOUSE_URL")
        embedded = Settings.load()
        assert embedded.embedded_kafka and embedded.embedded_clickhouse and embedded.metrics_port == 9400


def test_the_image_holds_every_package(compose: dict[str, Any]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = json.loads(re.search(r"^packages = (\[.*\])", pyproject, re.MULTILINE).group(1))  # type: ignore[union-attr]
    for top in {p.split(".")[0] for p in packages}:
        assert f"COPY {top} ./{top}" in dockerfile, top
    assert "COPY models ./models" in dockerfile and 'ENTRYPOINT ["ehrstream"]' in dockerfile
    assert "ARG TORCH_INDEX_URL" in dockerfile and "USER ehrstream" in dockerfile


@pytest.mark.slow
def test_init_creates_topics_tables_and_registers_schemas(broker: TansuBroker, tmp_path: Path) -> None:
    """What the compose `init` service runs, against the real broker, chdb and the loopback registry."""
    with LoopbackRegistry() as registry:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "SCHEMA_REGISTRY_URL": registry.url,
            "EHRSTREAM_TOPICS__NOTES": f"init-notes-{tmp_path.name}",
        }
        cmd = [sys.executable, "-m", "streams.cli", "--data-dir", str(tmp_path / "data"), "init"]
        first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr[-2000:]
        assert f"init-notes-{tmp_path.name}" in first.stdout
        assert "migrations applied: 001_tables.sql, 002_review.sql, 003_analytics.sql" in first.stdout
        assert len(registry.subjects) == 5 and f"init-notes-{tmp_path.name}-value" in registry.subjects
        again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "none (up to date)" in again.stdout
        assert len(registry.schemas) == 5  # nothing registered twice
