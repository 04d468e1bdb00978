"""CPU seconds of a process and all its descendants, read from the processes themselves (Linux ``/proc``).

The bench charges every process of the embedded stack (the bench process with its publisher and sink thread, the
broker, its object store, the workers) for the notes they move; ``/proc/<pid>/stat`` holds each process's user and
system CPU time. Elsewhere (no ``/proc``) the reading is None and the bench says so.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of one process, or None if it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid ... (comm may hold spaces)
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu(root: int | None = None) -> dict[int, tuple[str, float]] | None:
    """Per process of ``root``'s tree (this process by default, and every live descendant): its command line and its
    user + system CPU seconds. None without /proc."""
    if not PROC.is_dir():
        return None
    root = os.getpid() if root is None else root
    stats = {int(p.name): s for p in PROC.iterdir() if p.name.isdigit() and (s := _stat(int(p.name))) is not None}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in stats.items():
        children[parent].append(pid)
    out: dict[int, tuple[str, float]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            try:
                cmdline = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except FileNotFoundError:
                cmdline = ""
            out[pid] = (cmdline, stats[pid][1])
        todo.extend(children.get(pid, []))
    return out


def role(cmdline: str, pid: int, root: int) -> str:
    """Which part of the embedded stack a process is, by its command line."""
    if pid == root:
        return "bench (publisher, sink)"
    if "tansu" in cmdline:
        return "broker"
    if "streams.runtime.object_store" in cmdline:
        return "object store"
    if cmdline.endswith(" worker"):
        return "workers"
    return "other"


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], root: int | None = None) -> dict[str, float]:
    """CPU seconds per role between two readings (processes in both; a process started between them counts from 0)."""
    root = os.getpid() if root is None else root
    out: dict[str, float] = defaultdict(float)
    for pid, (cmdline, seconds) in after.items():
        out[role(cmdline, pid, root)] += seconds - (before[pid][1] if pid in before else 0.0)
    return dict(out)
