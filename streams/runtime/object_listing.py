"""Listings for the embedded object store: what ListObjectsV2 returns, and the directories kept in memory.

Tansu lists a partition's record objects on every fetch, so a listing read from disk costs more with every batch the
partition holds (15 ms for 1,200 objects with ``rglob``, 3 ms with ``scandir``, plus the XML). The store keeps the
listings of the directories it was asked to list (directories with files only, as a partition's ``records/`` is) in
memory, updated by its own writes and deletes, with each object's XML fragment made once: a listing is then a sort
and a join. Memory is bounded by ``max_entries`` over all kept directories (the least recently listed ones are
dropped, and a directory larger than the bound is read from disk every time).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple
from xml.sax.saxutils import escape


class Listed(NamedTuple):
    """One object as a listing shows it; ``xml`` is its ``<Contents>`` element."""

    key: str
    size: int
    mtime: float
    etag: str
    xml: str

    @classmethod
    def of(cls, key: str, size: int, mtime: float, etag: str) -> Listed:
        modified = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        xml = (
            f"<Contents><Key>{escape(key)}</Key><LastModified>{modified}</LastModified><ETag>{escape(etag)}</ETag>"
            f"<Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        )
        return cls(key, size, mtime, etag, xml)


def list_bucket_result(bucket: str, prefix: str, items: list[Listed]) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(items)}</KeyCount>"
        f"<MaxKeys>{max(1000, len(items))}</MaxKeys><IsTruncated>false</IsTruncated>"
        + "".join(item.xml for item in items)
        + "</ListBucketResult>"
    ).encode()


class DirectoryListings:
    """The objects of recently listed directories, by directory path and file name, kept current by the store."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._dirs: OrderedDict[str, dict[str, Listed]] = OrderedDict()
        self._entries = 0
        #: a directory's first read from disk and every change to a kept one happen under this lock, so a write that
        #: races the first read is either seen by it or applied after it
        self._lock = threading.Lock()

    def listing(self, folder: str, read: Callable[[], dict[str, Listed] | None]) -> list[Listed] | None:
        """The directory's objects (unsorted), read with ``read`` the first time (None: not a directory of files
        only, or nothing there; it is then not kept)."""
        with self._lock:
            kept = self._dirs.get(folder)
            if kept is None:
                kept = read()
                if kept is None:
                    return None
                if len(kept) <= self.max_entries:
                    self._dirs[folder] = kept
                    self._entries += len(kept)
                    self._bound()
                return list(kept.values())
            self._dirs.move_to_end(folder)
            return list(kept.values())

    def put(self, folder: str, name: str, item: Listed) -> None:
        """A file written in ``folder``: shown from now on if the folder is kept."""
        with self._lock:
            kept = self._dirs.get(folder)
            if kept is not None:
                self._entries += name not in kept
                kept[name] = item
                self._bound()

    def drop(self, folder: str, name: str) -> None:
        with self._lock:
            kept = self._dirs.get(folder)
            if kept is not None and kept.pop(name, None) is not None:
                self._entries -= 1

    def forget(self, folder: str) -> None:
        """Stop keeping a directory (a subdirectory appeared in it: it no longer holds files only)."""
        with self._lock:
            kept = self._dirs.pop(folder, None)
            if kept is not None:
                self._entries -= len(kept)

    def _bound(self) -> None:
        while self._entries > self.max_entries and self._dirs:
            _, dropped = self._dirs.popitem(last=False)
            self._entries -= len(dropped)
