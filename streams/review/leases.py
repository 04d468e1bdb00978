"""Leases on review tasks: one reviewer per note at a time; an unrenewed lease expires.

A claim by the holder renews the lease; a claim by anyone else while it runs is
refused. An expired lease is simply gone: the task is back in the queue for everyone.
Leases live in the review app's memory (run one review app per queue); a restart
drops them, which only returns claimed tasks to the queue early.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    lease_id: str
    note_id: str
    reviewer_id: str
    expires_at: float


class LeaseConflict(Exception):  # noqa: N818 (a refusal, not a bug)
    def __init__(self, holder: Lease) -> None:
        super().__init__(f"task is claimed by {holder.reviewer_id} until {holder.expires_at:.0f}")
        self.holder = holder


class LeaseBook:
    def __init__(self, lease_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def _live(self, note_id: str) -> Lease | None:
        lease = self._leases.get(note_id)
        if lease is not None and lease.expires_at <= self._clock():
            del self._leases[note_id]
            return None
        return lease

    def claim(self, note_id: str, reviewer_id: str) -> Lease:
        """A new or renewed lease for ``reviewer_id``; LeaseConflict if another reviewer holds one."""
        with self._lock:
            held = self._live(note_id)
            if held is not None and held.reviewer_id != reviewer_id:
                raise LeaseConflict(held)
            lease_id = held.lease_id if held is not None else secrets.token_urlsafe(12)
            lease = Lease(lease_id, note_id, reviewer_id, self._clock() + self.lease_seconds)
            self._leases[note_id] = lease
            return lease

    def holder(self, note_id: str) -> Lease | None:
        with self._lock:
            return self._live(note_id)

    def held_by(self, note_id: str, reviewer_id: str, lease_id: str) -> bool:
        with self._lock:
            lease = self._live(note_id)
            return lease is not None and lease.reviewer_id == reviewer_id and secrets.compare_digest(lease.lease_id, lease_id)

    def release(self, note_id: str, reviewer_id: str) -> bool:
        with self._lock:
            lease = self._live(note_id)
            if lease is None or lease.reviewer_id != reviewer_id:
                return False
            del self._leases[note_id]
            return True

    def live(self) -> dict[str, Lease]:
        with self._lock:
            for note_id in list(self._leases):
                self._live(note_id)
            return dict(self._leases)
