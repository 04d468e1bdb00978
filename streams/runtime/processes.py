"""Child processes of the embedded runtime: they die with their parent, serve on loopback ports, and stop cleanly."""

from __future__ import annotations

import gc
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from streams.errors import BrokerError
from streams.waiting import poll_until


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM when its parent dies, even by SIGKILL, so no broker or worker is orphaned.
    (Strictly: when the thread that started it ends; ehrstream starts them from the main thread.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def settle_heap() -> None:
    """Call once a process has loaded what it keeps for life (libraries, models, clients): those objects leave the
    cyclic garbage collector's generations (``gc.freeze``), so its full collections stop walking half a million
    objects of torch and transformers while the hot path allocates (0.17 ms of CPU per note in a worker, docs/performance/hot-path.md)."""
    gc.collect()
    gc.freeze()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ListeningProcess:
    """A child process that serves on a loopback port: started, waited for until it accepts connections, stopped
    (SIGTERM, then SIGKILL after 5 s). It dies with its parent."""

    def __init__(self, name: str, cmd: list[str], port: int, log_file: Path | None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.port = port
        self.log_file = log_file
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        out: Any = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115 (owned by the process)
        self.proc = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
            self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, preexec_fn=die_with_parent
        )

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BrokerError(f"127.0.0.1:{self.port}", f"{self.name} exited with code {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        try:
            poll_until(listening, timeout_s, f"{self.name} to listen on 127.0.0.1:{self.port}", interval_s=0.05)
        except TimeoutError as exc:
            self.stop()
            raise BrokerError(f"127.0.0.1:{self.port}", str(exc)) from None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
