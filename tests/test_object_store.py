"""The embedded broker's object store: compare-and-set stays exact when writes run in parallel, and an ETag is
never served for a version it was not computed from."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from xml.etree import ElementTree

import pytest

from streams.runtime.object_store import ObjectStore, StoredObject, _handler


def _md5(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ObjectStore, str]]:
    store = ObjectStore(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(store))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield store, f"http://127.0.0.1:{server.server_port}/bucket"
    finally:
        server.shutdown()
        server.server_close()


def _put(url: str, body: bytes, **headers: str) -> int:
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_parallel_compare_and_set_increments_lose_no_update(served: tuple[ObjectStore, str]) -> None:
    store, base = served
    url = f"{base}/groups/counter.json"
    assert _put(url, b"0", **{"If-None-Match": "*"}) == 200
    assert _put(url, b"0", **{"If-None-Match": "*"}) == 412  # create-if-absent refuses an existing key
    refused = 0

    def increment(times: int) -> None:
        nonlocal refused
        for _ in range(times):
            while True:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    value, etag = int(resp.read()), resp.headers["ETag"]
                status = _put(url, str(value + 1).encode(), **{"If-Match": etag})
                if status == 200:
                    break
                assert status == 412
                refused += 1
        # other keys are written at the same time, in parallel with the counter's compare-and-sets
        for i in range(times):
            assert _put(f"{base}/records/{threading.get_ident()}-{i:04d}.batch", os.urandom(64)) == 200

    threads = [threading.Thread(target=increment, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = store.read("bucket", "groups/counter.json")
    assert found is not None and found[0] == b"100"  # every increment applied exactly once
    assert found[1] == _md5(b"100")
    listed = store.listing("bucket", "records/")
    assert len(listed) == 100 and all(item.etag == _md5(store.path("bucket", item.key).read_bytes()) for item in listed)
    with urllib.request.urlopen(f"{base}?list-type=2&prefix=records/", timeout=10) as resp:
        page = ElementTree.fromstring(resp.read())
    namespace = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    keys = [e.text for e in page.findall("s3:Contents/s3:Key", namespace)]
    assert keys == [item.key for item in listed] and page.findtext("s3:KeyCount", None, namespace) == "100"


def test_a_kept_listing_follows_writes_deletes_and_new_folders_as_a_read_from_disk_does(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, max_cached_etags=8)
    rng = random.Random(7)

    def from_disk(prefix: str) -> list[tuple[str, int, str]]:
        return [(i.key, i.size, i.etag) for i in ObjectStore(tmp_path).listing("b", prefix)]

    def kept(prefix: str) -> list[tuple[str, int, str]]:
        return [(i.key, i.size, i.etag) for i in store.listing("b", prefix)]

    store.write("b", "c/a.batch", b"a")
    assert kept("c/") == from_disk("c/")  # a folder of files only: kept from now on
    store.write("b", "c/d/x.batch", b"x")  # now it holds a folder too
    assert kept("c/") == from_disk("c/") == [("c/a.batch", 1, _md5(b"a")), ("c/d/x.batch", 1, _md5(b"x"))]
    for step in range(300):
        folder = rng.choice(["t/p0/records", "t/p1/records", "t/p0", "u"])
        key = f"{folder}/{rng.randrange(12):04d}.batch"
        if rng.random() < 0.2:
            store.delete("b", key)
        else:
            store.write("b", key, os.urandom(rng.randrange(1, 40)))
        prefix = rng.choice(["t/p0/records/", "t/p1/records/", "t/p0/", "t/", "u/", "t/p0/records/000", ""])
        assert kept(prefix) == from_disk(prefix), (step, prefix)
        # the listing's joined XML (made once per version, extended by a write that sorts last) is its objects' XML
        listing = store.listing("b", prefix)
        assert listing.xml == "".join(item.xml for item in ObjectStore(tmp_path).listing("b", prefix)), (step, prefix)
    # more objects than the bound: listings are still complete, read from disk
    for i in range(20):
        store.write("b", f"big/{i:04d}.batch", b"x")
    assert len(kept("big/")) == 20 == len(from_disk("big/"))


def test_a_kept_listing_grows_with_the_brokers_next_batches_and_its_xml_stays_whole(tmp_path: Path) -> None:
    """The broker's pattern: a partition's next record batch sorts last, and fetches list the partition in between."""
    store = ObjectStore(tmp_path)

    def disk_xml(prefix: str) -> str:
        return "".join(item.xml for item in ObjectStore(tmp_path).listing("b", prefix))

    for i in range(0, 20, 2):
        store.write("b", f"r/{i:04d}.batch", os.urandom(3))
        listing = store.listing("b", "r/")
        assert listing.xml == disk_xml("r/") and len(listing) == i // 2 + 1
    store.write("b", "r/0005.batch", b"x")  # not last: the listing is made again
    store.delete("b", "r/0000.batch")
    assert store.listing("b", "r/").xml == disk_xml("r/") and len(store.listing("b", "r/")) == 10
    assert [item.key for item in store.listing("b", "r/001")] == [f"r/{i:04d}.batch" for i in range(10, 20, 2)]


def test_an_etag_is_recomputed_when_the_file_is_replaced_behind_the_cache(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    first = store.write("b", "k/1", b"first")
    assert store.current_etag("b", "k/1") == first == _md5(b"first")
    replacement = tmp_path / "b" / "k" / "new"
    replacement.write_bytes(b"second")
    os.replace(replacement, tmp_path / "b" / "k" / "1")  # a new inode, as every write of the store makes
    assert store.current_etag("b", "k/1") == _md5(b"second")
    # the bytes, the ETag and the date of the same version
    assert store.read("b", "k/1") == StoredObject(b"second", _md5(b"second"), (tmp_path / "b" / "k" / "1").stat().st_mtime)
    assert [e[3] for e in store.listing("b", "k/")] == [_md5(b"second")]


def test_the_object_stores_etag_cache_is_bounded_and_a_miss_recomputes_the_same_etag(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, max_cached_etags=2)
    written = {f"k/{i}": store.write("b", f"k/{i}", f"object {i}".encode()) for i in range(5)}
    assert len(store._etags) == 2
    for key, etag in written.items():
        assert etag == _md5(f"object {key[2:]}".encode())
        assert store.current_etag("b", key) == etag
        assert store.read("b", key) == StoredObject(f"object {key[2:]}".encode(), etag, store.path("b", key).stat().st_mtime)
    assert len(store._etags) == 2
    assert sorted(e[3] for e in store.listing("b", "k/")) == sorted(written.values()) and len(store._etags) == 2
    assert store.current_etag("b", "k/missing") is None and store.read("b", "k/missing") is None


def test_kept_listings_stay_within_their_bound_dropping_the_least_recently_listed(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, max_cached_etags=100)
    for folder in range(5):
        store.write("b", f"p{folder}/0000.batch", b"x")
        store.listing("b", f"p{folder}/")  # kept from now on
        for i in range(1, 40):
            store.write("b", f"p{folder}/{i:04d}.batch", b"x")
        assert store._listings._entries <= 100 and len(store._etags) <= 100
    assert [len(store.listing("b", f"p{folder}/")) for folder in range(5)] == [40] * 5  # still complete, from disk
    assert store._listings._entries <= 100


def test_a_key_that_would_leave_the_root_is_refused(served: tuple[ObjectStore, str], tmp_path: Path) -> None:
    store, url = served
    for bucket, key in [("bucket", "../../outside"), ("..", "outside"), ("bucket", "a/../../../outside")]:
        with pytest.raises(PermissionError):
            store.path(bucket, key)
    assert store.path("bucket", "a/../b") == store.root / "bucket" / "b"  # `..` that stays inside is the key it names
    # over HTTP: 403, and nothing written outside the root
    assert _put(url + "/%2E%2E/%2E%2E/outside", b"x") == 403
    assert not (tmp_path.parent / "outside").exists()
    assert _put(url + "/inside", b"x") == 200
    assert (store.root / "bucket" / "inside").read_bytes() == b"x"
