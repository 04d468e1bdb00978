"""Reviewer accounts, sign-in and sessions.

Passwords are stored only as scrypt hashes (``scrypt$N$r$p$salt$hash``, made by
``ehrstream reviewer hash``). A sign-in opens a server-side session: a random token
(the cookie, or a bearer token for scripts) and a per-session CSRF token that every
cookie-authenticated write must send back in the ``X-CSRF-Token`` header. Repeated
failures for one reviewer id lock that id out for a while. Nothing here logs a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from streams.settings import ReviewSettings

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    if not password:
        raise ValueError("empty password")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.urlsafe_b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest)
        actual = hashlib.scrypt(
            password.encode("utf-8"), salt=base64.urlsafe_b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class Session:
    token: str
    reviewer_id: str
    csrf_token: str
    expires_at: float


class LockedOut(Exception):  # noqa: N818 (a refusal, not a bug)
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class Accounts:
    """Checks credentials against the configured reviewers and keeps the open sessions (in memory)."""

    def __init__(self, settings: ReviewSettings, clock: Callable[[], float] = time.time) -> None:
        self._hashes = {r.id: r.password_hash.get_secret_value() for r in settings.reviewers}
        self._session_s = settings.session_hours * 3600
        self._max_failed = settings.max_failed_logins
        self._lockout_s = settings.lockout_seconds
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        # a fixed hash to verify against for unknown ids, so timing does not tell which ids exist
        self._decoy = hash_password(secrets.token_urlsafe(12))

    @property
    def reviewer_ids(self) -> list[str]:
        return sorted(self._hashes)

    def sign_in(self, reviewer_id: str, password: str) -> Session | None:
        """A new session, or None for a wrong id or password. Raises LockedOut after too many failures."""
        now = self._clock()
        failures = self._failures[reviewer_id]
        while failures and failures[0] < now - self._lockout_s:
            failures.popleft()
        if len(failures) >= self._max_failed:
            raise LockedOut(failures[0] + self._lockout_s - now)
        stored = self._hashes.get(reviewer_id)
        ok = verify_password(password, stored if stored is not None else self._decoy) and stored is not None
        if not ok:
            failures.append(now)
            return None
        failures.clear()
        session = Session(secrets.token_urlsafe(32), reviewer_id, secrets.token_urlsafe(32), now + self._session_s)
        self._sessions[session.token] = session
        return session

    def session(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            self._sessions.pop(token, None)
            return None
        return session

    def sign_out(self, token: str) -> None:
        self._sessions.pop(token, None)

    @staticmethod
    def csrf_ok(session: Session, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(session.csrf_token, supplied)
