"""Kafka TLS for real, SASL options as each client library receives them, ClickHouse secrets from files.

Tansu 0.6 cannot be given SCRAM users while it requires authentication (``tansu user create`` itself is
refused), so a live SASL handshake is out of reach here. TLS is tested end to end: a TLS-terminating proxy
on loopback (certificates made by ``openssl`` for this test) sits in front of Tansu, which advertises the
proxy's address, so every client (kafka-python in publish and the sink, aiokafka in the Faust worker) must
speak TLS and verify the certificate to get anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from schemas.clinical_note import ClinicalNote
from streams.errors import BrokerError
from streams.ingest.publish import publish_file
from streams.kafka.clients import client_config, ensure_topics, faust_broker_settings
from streams.runtime.broker import TansuBroker
from streams.runtime.processes import free_port
from streams.runtime.sink_thread import SinkThread
from streams.runtime.workers import WorkerProcess
from streams.settings import KafkaSecurity, Settings
from streams.sink.backend import ChdbBackend
from tests.conftest import wait_for_final


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make the test certificates)")
    d = tmp_path_factory.mktemp("tls")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ehrstream test CA",
        # Python 3.13's default TLS context is X.509-strict: a CA needs these extensions, as real CAs have
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.cnf", cwd=d,
    )  # fmt: skip
    return d


class TlsProxy:
    """TLS on ``port``, plain TCP to ``upstream``: what a TLS-terminating load balancer does."""

    def __init__(self, certs: Path, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(certs / "server.pem"), str(certs / "server.key"))
        self.loop = asyncio.new_event_loop()
        self.handshakes = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))

    def start(self) -> TlsProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context), self.loop)
        self.server = future.result(10)
        return self

    def stop(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def tls_broker(certificates: Path) -> Iterator[tuple[str, TlsProxy]]:
    proxy_port = free_port()
    with TansuBroker(advertised=f"127.0.0.1:{proxy_port}") as broker:
        proxy = TlsProxy(certificates, broker.port)
        proxy.port = proxy_port
        proxy.start()
        yield f"127.0.0.1:{proxy_port}", proxy
        proxy.stop()


@pytest.mark.slow
@pytest.mark.e2e
def test_worker_publish_and_sink_speak_tls_to_the_broker(
    tls_broker: tuple[str, TlsProxy],
    certificates: Path,
    tiny_settings: Settings,
    database: ChdbBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bootstrap, proxy = tls_broker
    security = KafkaSecurity(security_protocol="SSL", ssl_cafile=certificates / "ca.pem")
    settings = tiny_settings.model_copy(update={"kafka_bootstrap_servers": bootstrap, "kafka": security})
    # the worker subprocess reads the same settings from its environment
    monkeypatch.setenv("EHRSTREAM_KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("EHRSTREAM_KAFKA__SSL_CAFILE", str(certificates / "ca.pem"))
    ensure_topics(settings, bootstrap)
    sink = SinkThread(settings, bootstrap, backend=database)
    worker = WorkerProcess(settings, bootstrap, tmp_path / "worker.log")
    sink.start()
    worker.start()
    try:
        notes = tmp_path / "notes.jsonl"
        notes.write_text(
            "".join(
                ClinicalNote(
                    note_id=f"tls-{i}", patient_id="p", note_type="t", created_at="2026-11-01T00:00:00Z", text="Has asthma.", source="tls"
                ).model_dump_json()
                + "\n"
                for i in range(10)
            )
        )
        assert publish_file(notes, settings, bootstrap, settings.topics.notes, progress=False).accepted == 10
        assert wait_for_final(database, 10, worker, tmp_path / "worker.log") == 10
        assert proxy.handshakes >= 3  # publish, worker and sink connections all came through TLS
    finally:
        worker.stop()
        sink.stop()


@pytest.mark.slow
def test_a_client_that_cannot_verify_the_broker_is_refused(tls_broker: tuple[str, TlsProxy], tmp_path: Path) -> None:
    bootstrap, _ = tls_broker
    untrusting = Settings(kafka_bootstrap_servers=bootstrap, kafka=KafkaSecurity(security_protocol="SSL"))  # system CAs only
    with pytest.raises(BrokerError):
        ensure_topics(untrusting, bootstrap, timeout_s=3)
    plain = Settings(kafka_bootstrap_servers=bootstrap)
    with pytest.raises(BrokerError):
        ensure_topics(plain, bootstrap, timeout_s=3)


def test_sasl_settings_reach_both_client_libraries(certificates: Path) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    security = KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="ingest",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile=certificates / "ca.pem",
    )
    settings = Settings(kafka_bootstrap_servers="broker-1:9093", kafka=security)
    config = client_config(settings)  # kafka-python
    assert config["security_protocol"] == "SASL_SSL" and config["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("ingest", "s3cret")
    assert isinstance(config["ssl_context"], ssl.SSLContext) and config["ssl_context"].verify_mode is ssl.CERT_REQUIRED
    auth = credentials_to_aiokafka_auth(faust_broker_settings(settings, "broker-1:9093")["broker_credentials"])  # Faust -> aiokafka
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("ingest", "s3cret")
    assert auth["ssl_context"] is not None
    plain = Settings(kafka_bootstrap_servers="broker-1:9092", kafka=security.model_copy(update={"security_protocol": "SASL_PLAINTEXT"}))
    assert (
        credentials_to_aiokafka_auth(faust_broker_settings(plain, "b:9092")["broker_credentials"])["security_protocol"] == "SASL_PLAINTEXT"
    )
    # the embedded broker is plain loopback, whatever is configured
    assert client_config(Settings(kafka=security)) == {}
    assert "s3cret" not in repr(settings)


def test_sasl_without_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="sasl_username"):
        KafkaSecurity(security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="no such file"):
        KafkaSecurity(security_protocol="SSL", ssl_cafile=Path("/nonexistent/ca.pem"))


def test_secrets_come_from_files_and_the_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ch").write_text("from-file\n")
    (tmp_path / "sasl").write_text("sasl-from-file")
    monkeypatch.setenv("CLICKHOUSE_URL", "https://clickhouse.internal:8443")
    monkeypatch.setenv("CLICKHOUSE_USER", "ehrstream")
    monkeypatch.setenv("CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "ch"))
    monkeypatch.setenv("EHRSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("EHRSTREAM_KAFKA__SASL_USERNAME", "ingest")
    monkeypatch.setenv("EHRSTREAM_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "sasl"))
    settings = Settings.load()
    assert settings.clickhouse_password.get_secret_value() == "from-file"  # trailing newline stripped
    assert settings.kafka.sasl_password.get_secret_value() == "sasl-from-file"
    assert "from-file" not in repr(settings)
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "from-env")
    assert Settings.load().clickhouse_password.get_secret_value() == "from-env"
    monkeypatch.setenv("CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "missing"))
    from streams.errors import ConfigError

    with pytest.raises(ConfigError, match="CLICKHOUSE_PASSWORD_FILE"):
        Settings.load()


def test_server_backend_takes_credentials_from_settings_and_never_reports_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.errors import SinkError
    from streams.sink.backend import ServerBackend, open_backend

    monkeypatch.setenv("CLICKHOUSE_URL", f"http://url-user:url-Secret-1@127.0.0.1:{free_port()}")
    monkeypatch.setenv("CLICKHOUSE_USER", "ehrstream")
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "settings-Secret-2")
    backend = open_backend(Settings.load())
    assert isinstance(backend, ServerBackend)
    with pytest.raises(SinkError) as raised:
        backend.query("SELECT 1")
    text = f"{raised.value} {raised.value.__cause__} {raised.value.__context__}"
    assert "Secret" not in text and "unreachable" in text
