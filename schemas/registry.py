"""A Confluent Schema Registry client (REST API v1) and the Confluent wire format.

Wire format: magic byte ``0x00``, the schema id as 4 bytes big-endian, then the Avro binary body.
Subjects follow the TopicNameStrategy (``<topic>-value``), the default of Confluent's serializers.
Endpoints used: ``POST /subjects/{subject}/versions`` (register; the registry returns the existing id
for a schema it already has), ``POST /subjects/{subject}`` (look up), ``GET /schemas/ids/{id}``,
``POST /compatibility/subjects/{subject}/versions/latest`` and ``GET /subjects``.

Schemas by id are immutable, so they are cached for the life of the process; a registry that is
down when a new id is first seen makes that record fail with a clear error (the worker dead-letters
it as ``unknown_schema``; the record itself stays on its topic).
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

MAGIC = b"\x00"
CONFLUENT_HEADER_SIZE = 5
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """The registry refused or could not be reached. ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def confluent_header(schema_id: int) -> bytes:
    return MAGIC + schema_id.to_bytes(4, "big")


def confluent_schema_id(data: bytes) -> int | None:
    """The schema id of a Confluent-framed record, or None when ``data`` is not one."""
    if len(data) < CONFLUENT_HEADER_SIZE or data[:1] != MAGIC:
        return None
    return int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")


class SchemaRegistryClient:
    def __init__(self, url: str, username: str = "", password: str = "", timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE}
        if username:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._by_id: dict[int, str] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers)  # noqa: S310 (configured URL)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())
            except (ValueError, OSError):
                detail = {}
            message = detail.get("message") or exc.reason
            raise RegistryError(f"schema registry: {method} {path}: {exc.code} {message}", exc.code, detail.get("error_code")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"schema registry unreachable ({type(reason).__name__})") from None

    def register(self, subject: str, schema: str) -> int:
        """The schema's id under ``subject``, registering it if new (the registry checks compatibility)."""
        key = (subject, schema)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        schema_id = int(self._call("POST", f"/subjects/{_quote(subject)}/versions", {"schema": schema})["id"])
        with self._lock:
            self._ids[key] = schema_id
            self._by_id[schema_id] = schema
        return schema_id

    def lookup(self, subject: str, schema: str) -> dict[str, Any] | None:
        """``{"subject", "id", "version", "schema"}`` when ``schema`` is registered under ``subject``, else None."""
        try:
            found: dict[str, Any] = self._call("POST", f"/subjects/{_quote(subject)}", {"schema": schema})
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def schema(self, schema_id: int) -> str:
        """The schema text of an id (cached: ids are immutable)."""
        with self._lock:
            if schema_id in self._by_id:
                return self._by_id[schema_id]
        text = str(self._call("GET", f"/schemas/ids/{schema_id}")["schema"])
        with self._lock:
            self._by_id[schema_id] = text
        return text

    def is_compatible(self, subject: str, schema: str) -> bool:
        """Whether ``schema`` may be registered next under ``subject`` (True when the subject is new)."""
        try:
            result = self._call("POST", f"/compatibility/subjects/{_quote(subject)}/versions/latest", {"schema": schema})
        except RegistryError as exc:
            if exc.status == 404:  # no such subject (40401) or version (40402): nothing to be incompatible with
                return True
            raise
        return bool(result.get("is_compatible"))

    def subjects(self) -> list[str]:
        return [str(s) for s in self._call("GET", "/subjects")]


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")
