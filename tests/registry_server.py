"""A small Schema Registry-compatible HTTP server on loopback, for the tests.

It implements the part of Confluent's REST API v1 that ehrstream uses, with Confluent's status and
error codes: register (same schema, same id; BACKWARD compatibility enforced against the latest
version, 409 / 409 otherwise), look up, schema by id (404 / 40403), compatibility against the latest
version (404 / 40401 for an unknown subject) and the subject list. Compatibility is Avro resolution
as ``schemas.compat.can_read`` checks it. It also counts requests, so tests can see caching.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from schemas.compat import can_read


class LoopbackRegistry:
    def __init__(self) -> None:
        self.subjects: dict[str, list[int]] = {}
        self.schemas: dict[int, str] = {}
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")  # type: ignore[no-any-return]

            def do_GET(self) -> None:
                parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
                registry.requests[f"GET /{parts[0]}"] += 1
                with registry._lock:
                    if parts == ["subjects"]:
                        return self._reply(200, sorted(registry.subjects))
                    if parts[:2] == ["schemas", "ids"] and len(parts) == 3:
                        schema = registry.schemas.get(int(parts[2]))
                        if schema is None:
                            return self._reply(404, {"error_code": 40403, "message": "Schema not found"})
                        return self._reply(200, {"schema": schema})
                return self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})

            def do_POST(self) -> None:
                parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
                registry.requests[f"POST /{parts[0]}"] += 1
                schema = str(self._body().get("schema", ""))
                try:
                    json.loads(schema)
                except ValueError:
                    return self._reply(422, {"error_code": 42201, "message": "Invalid schema"})
                with registry._lock:
                    if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                        return self._register(parts[1], schema)
                    if len(parts) == 2 and parts[0] == "subjects":
                        return self._lookup(parts[1], schema)
                    if parts[:2] == ["compatibility", "subjects"] and parts[3:] == ["versions", "latest"]:
                        versions = registry.subjects.get(parts[2])
                        if not versions:
                            return self._reply(404, {"error_code": 40401, "message": f"Subject '{parts[2]}' not found."})
                        latest = registry.schemas[versions[-1]]
                        return self._reply(200, {"is_compatible": can_read(json.loads(latest), json.loads(schema))})
                return self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})

            def _register(self, subject: str, schema: str) -> None:
                canonical = json.dumps(json.loads(schema), sort_keys=True)
                for schema_id, text in registry.schemas.items():
                    if json.dumps(json.loads(text), sort_keys=True) == canonical:
                        if schema_id not in registry.subjects.setdefault(subject, []):
                            registry.subjects[subject].append(schema_id)
                        return self._reply(200, {"id": schema_id})
                versions = registry.subjects.setdefault(subject, [])
                if versions and not can_read(json.loads(registry.schemas[versions[-1]]), json.loads(schema)):
                    return self._reply(
                        409, {"error_code": 409, "message": "Schema being registered is incompatible with an earlier schema"}
                    )
                schema_id = len(registry.schemas) + 1
                registry.schemas[schema_id] = schema
                versions.append(schema_id)
                return self._reply(200, {"id": schema_id})

            def _lookup(self, subject: str, schema: str) -> None:
                if subject not in registry.subjects:
                    return self._reply(404, {"error_code": 40401, "message": f"Subject '{subject}' not found."})
                canonical = json.dumps(json.loads(schema), sort_keys=True)
                for version, schema_id in enumerate(registry.subjects[subject], start=1):
                    if json.dumps(json.loads(registry.schemas[schema_id]), sort_keys=True) == canonical:
                        return self._reply(200, {"subject": subject, "id": schema_id, "version": version, "schema": schema})
                return self._reply(404, {"error_code": 40403, "message": "Schema not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LoopbackRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
