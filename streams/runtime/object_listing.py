"""Listings for the embedded object store: what ListObjectsV2 returns, and the directories kept in memory.

Tansu lists a partition's record objects on every fetch, so a listing read from disk costs more with every batch the
partition holds (15 ms for 1,200 objects with ``rglob``, 3 ms with ``scandir``, plus the XML). The store keeps the
listings of the directories it was asked to list (directories with files only, as a partition's ``records/`` is) in
memory, updated by its own writes and deletes, with each object's XML fragment made once. A kept directory's listing
(sorted, and its fragments joined) is made once per version: a new object whose key sorts last (the broker's next
record batch) extends it, any other change drops it until the next listing. Between two writes the broker's fetches
get the same listing for nothing; before, each paid a sort and a join over the whole partition (0.45 ms of server CPU
at 500 objects, growing with the partition). Memory is bounded by ``max_entries`` over all kept directories (the
least recently listed ones are dropped, and a directory larger than the bound is read from disk every time).
"""

from __future__ import annotations

import functools
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


class Listing(tuple[Listed, ...]):
    """Objects sorted by key, and their ``<Contents>`` elements joined (once, when first asked for)."""

    @functools.cached_property
    def xml(self) -> str:
        return "".join(item.xml for item in self)

    def extended(self, item: Listed) -> Listing:
        """This listing with ``item`` after the last object (its key must sort last)."""
        out = Listing((*self, item))
        if "xml" in self.__dict__:
            out.__dict__["xml"] = self.__dict__["xml"] + item.xml
        return out


def list_bucket_result(bucket: str, prefix: str, items: Listing) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(items)}</KeyCount>"
        f"<MaxKeys>{max(1000, len(items))}</MaxKeys><IsTruncated>false</IsTruncated>" + items.xml + "</ListBucketResult>"
    ).encode()


class _Kept:
    """A kept directory: its objects by file name, and their listing (None after a change it cannot follow)."""

    __slots__ = ("items", "listing")

    def __init__(self, items: dict[str, Listed], listing: Listing) -> None:
        self.items = items
        self.listing: Listing | None = listing


class DirectoryListings:
    """The objects of recently listed directories, by directory path and file name, kept current by the store."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._dirs: OrderedDict[str, _Kept] = OrderedDict()
        self._entries = 0
        #: a directory's first read from disk and every change to a kept one happen under this lock, so a write that
        #: races the first read is either seen by it or applied after it
        self._lock = threading.Lock()

    def listing(self, folder: str, read: Callable[[], dict[str, Listed] | None]) -> Listing | None:
        """The directory's objects, sorted by key; read with ``read`` the first time (None: not a directory of files
        only, or nothing there; it is then not kept)."""
        with self._lock:
            kept = self._dirs.get(folder)
            if kept is None:
                found = read()
                if found is None:
                    return None
                listing = Listing(sorted(found.values()))
                if len(found) <= self.max_entries:
                    self._dirs[folder] = _Kept(found, listing)
                    self._entries += len(found)
                    self._bound()
                return listing
            self._dirs.move_to_end(folder)
            if kept.listing is None:
                kept.listing = Listing(sorted(kept.items.values()))
            return kept.listing

    def put(self, folder: str, name: str, item: Listed) -> None:
        """A file written in ``folder``: shown from now on if the folder is kept."""
        with self._lock:
            kept = self._dirs.get(folder)
            if kept is not None:
                new = name not in kept.items
                self._entries += new
                kept.items[name] = item
                listing = kept.listing
                if new and listing is not None and (not listing or listing[-1].key < item.key):
                    kept.listing = listing.extended(item)  # the broker's next batch: the listing grows by one
                else:
                    kept.listing = None  # made again at the next listing
                self._bound()

    def drop(self, folder: str, name: str) -> None:
        with self._lock:
            kept = self._dirs.get(folder)
            if kept is not None and kept.items.pop(name, None) is not None:
                self._entries -= 1
                kept.listing = None

    def forget(self, folder: str) -> None:
        """Stop keeping a directory (a subdirectory appeared in it: it no longer holds files only)."""
        with self._lock:
            kept = self._dirs.pop(folder, None)
            if kept is not None:
                self._entries -= len(kept.items)

    def _bound(self) -> None:
        while self._entries > self.max_entries and self._dirs:
            _, dropped = self._dirs.popitem(last=False)
            self._entries -= len(dropped.items)
