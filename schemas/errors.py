"""The project's base exception and the errors raised while reading records.

Every error carries structured fields, not only a message, so callers can route
it (dead-letter topic, retry, user message) without parsing strings.
"""

from __future__ import annotations

from schemas.dead_letter import ErrorKind


class EhrstreamError(Exception):
    """Base class of every error ehrstream raises on purpose."""


class RecordError(EhrstreamError):
    """A record that cannot be turned into a valid model.

    ``kind`` says why, in the dead-letter vocabulary; ``message`` is safe to log:
    it never contains the record's content (no note text, no patient ids).
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
