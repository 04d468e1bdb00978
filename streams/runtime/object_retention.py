"""Retention for the embedded broker's durable storage: record batches that every consumer has committed past go.

Tansu 0.6 keeps each record batch as an object (``clusters/<cluster>/topics/<topic>/partitions/<p>/records/<base
offset>.batch``), lists a partition's every object on each fetch that finds data, and deletes none: it answers
Kafka's DeleteRecords by dropping the connection. So a partition's fetches cost more with every batch it ever held,
and a stack that runs for hours slows down (README, "Not promised" before 2026-12-05). This sweeper runs in the object
store's process (:mod:`streams.runtime.object_store`), every few seconds. In each partition a batch is deleted when

- every consumer group that has committed an offset on that partition (Tansu keeps it in
  ``clusters/<cluster>/groups/consumers/<group>/offsets/<topic>/partitions/<p>.json``) has committed past the batch's
  last record: the next batch's base offset is at most the group's offset, and
- it was written more than ``retention_s`` ago.

What stays: a partition no group has committed on keeps everything (the dead-letter topic, which the stack itself
does not consume); the last batch of a partition is always kept (where it ends is known only from the next one); a
group that stopped committing holds its partitions' records for good. What goes is what Kafka's time retention would
delete too, sooner: a consumer group that starts later reads from what is left.

Tansu reads nothing of a batch it has not listed, and fetches only at or after a consumer's position, so a deleted
batch is never asked for by a consumer of a group that committed past it. Its own cache holds ETags for conditional
reads of its metadata objects, not listings or batches (tansu-storage ``dynostore.rs``, 0.6).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.runtime.object_store import ObjectStore

log = logging.getLogger(__name__)

#: a record batch's file name: its base offset, zero-padded to 20 digits
_BATCH = re.compile(r"(\d{20})\.batch")
#: a committed offset's file name: the partition, zero-padded to 10 digits
_PARTITION = re.compile(r"(\d{10})\.json")


def _subdirectories(path: str) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def committed_offsets(cluster_dir: str) -> dict[tuple[str, str], int]:
    """The lowest offset any consumer group has committed, per (topic, partition folder) of a cluster's folder. A
    partition no group has committed on is absent."""
    lowest: dict[tuple[str, str], int] = {}
    consumers = os.path.join(cluster_dir, "groups", "consumers")
    for group in _subdirectories(consumers):
        offsets = os.path.join(consumers, group, "offsets")
        for topic in _subdirectories(offsets):
            folder = os.path.join(offsets, topic, "partitions")
            try:
                names = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if (found := _PARTITION.fullmatch(name)) is None:
                    continue
                try:
                    with open(os.path.join(folder, name), "rb") as fh:
                        offset = json.load(fh).get("offset")
                except (OSError, ValueError, AttributeError):
                    offset = None
                if not isinstance(offset, int) or offset < 0:
                    # an offset this sweeper cannot read holds the partition whole: never delete on a guess
                    offset = 0
                key = (topic, found.group(1))
                lowest[key] = min(offset, lowest.get(key, offset))
    return lowest


def sweep(store: ObjectStore, retention_s: float, now: float | None = None) -> int:
    """Delete, in every partition of every cluster of every bucket, the record batches that every group committing on
    the partition has committed past and that were written more than ``retention_s`` ago. Returns how many."""
    cutoff = (time.time() if now is None else now) - retention_s
    deleted = 0
    root = str(store.root)
    for bucket in _subdirectories(root):
        clusters = os.path.join(root, bucket, "clusters")
        for cluster in _subdirectories(clusters):
            cluster_dir = os.path.join(clusters, cluster)
            for (topic, partition), floor in committed_offsets(cluster_dir).items():
                prefix = f"clusters/{cluster}/topics/{topic}/partitions/{partition}/records/"
                deleted += _sweep_partition(store, bucket, prefix, floor, cutoff)
    return deleted


def _sweep_partition(store: ObjectStore, bucket: str, prefix: str, floor: int, cutoff: float) -> int:
    batches = [(int(m.group(1)), item) for item in store.listing(bucket, prefix) if (m := _BATCH.fullmatch(item.key[len(prefix) :]))]
    deleted = 0
    # sorted by key, so by base offset: stop at the first batch that must stay, every later one must too
    for (_, item), (next_base, _) in itertools.pairwise(batches):
        if next_base > floor or item.mtime > cutoff:
            break
        with store.key_lock(bucket, item.key):
            store.delete(bucket, item.key)
        deleted += 1
    return deleted


def start_sweeping(store: ObjectStore, retention_s: float) -> threading.Thread:
    """:func:`sweep` a few times per retention period (at most every 5 s), in a daemon thread that lives as long as the
    object store's process."""
    interval_s = min(5.0, max(retention_s / 4, 0.05))

    def run() -> None:
        while True:
            time.sleep(interval_s)
            try:
                deleted = sweep(store, retention_s)
            except Exception:  # a sweep that failed deletes nothing more; the next one starts afresh
                log.exception("retention sweep failed")
                continue
            if deleted:
                log.debug("retention: %d record batches deleted", deleted)

    thread = threading.Thread(target=run, name="retention", daemon=True)
    thread.start()
    return thread
