"""Child processes of the embedded runtime: they die with their parent, and loopback ports for them."""

from __future__ import annotations

import signal
import socket
import sys


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM when its parent dies, even by SIGKILL, so no broker or worker is orphaned.
    (Strictly: when the thread that started it ends; ehrstream starts them from the main thread.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
