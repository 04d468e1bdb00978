"""The embedded broker's object store: compare-and-set stays exact when writes run in parallel, and an ETag is
never served for a version it was not computed from."""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from streams.runtime.object_store import ObjectStore, _handler


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
    assert len(listed) == 100 and all(etag == _md5(store.path("bucket", key).read_bytes()) for key, _, _, etag in listed)


def test_an_etag_is_recomputed_when_the_file_is_replaced_behind_the_cache(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    first = store.write("b", "k/1", b"first")
    assert store.current_etag("b", "k/1") == first == _md5(b"first")
    replacement = tmp_path / "b" / "k" / "new"
    replacement.write_bytes(b"second")
    os.replace(replacement, tmp_path / "b" / "k" / "1")  # a new inode, as every write of the store makes
    assert store.current_etag("b", "k/1") == _md5(b"second")
    assert store.read("b", "k/1") == (b"second", _md5(b"second"))
    assert [e[3] for e in store.listing("b", "k/")] == [_md5(b"second")]


def test_the_object_stores_etag_cache_is_bounded_and_a_miss_recomputes_the_same_etag(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, max_cached_etags=2)
    written = {f"k/{i}": store.write("b", f"k/{i}", f"object {i}".encode()) for i in range(5)}
    assert len(store._etags) == 2
    for key, etag in written.items():
        assert etag == _md5(f"object {key[2:]}".encode())
        assert store.current_etag("b", key) == etag and store.read("b", key) == (f"object {key[2:]}".encode(), etag)
    assert len(store._etags) == 2
    assert sorted(e[3] for e in store.listing("b", "k/")) == sorted(written.values()) and len(store._etags) == 2
    assert store.current_etag("b", "k/missing") is None and store.read("b", "k/missing") is None
