"""Retention on the embedded broker's durable storage: a record batch goes only when every consumer group committing on
its partition has committed past it and it is old enough; consumers of the real broker read on across the gap."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from streams.runtime.broker import TansuBroker
from streams.runtime.object_retention import committed_offsets, sweep
from streams.runtime.object_store import ObjectStore
from streams.waiting import poll_until

CLUSTER = "clusters/c"


def _batch(store: ObjectStore, topic: str, partition: int, base: int) -> None:
    store.write("tansu", f"{CLUSTER}/topics/{topic}/partitions/{partition:010d}/records/{base:020d}.batch", b"records")


def _commit(store: ObjectStore, group: str, topic: str, partition: int, offset: int | None) -> str:
    key = f"{CLUSTER}/groups/consumers/{group}/offsets/{topic}/partitions/{partition:010d}.json"
    body = b"not json" if offset is None else json.dumps({"offset": offset, "leader_epoch": -1, "timestamp": None, "metadata": ""}).encode()
    store.write("tansu", key, body)
    return key


def _bases(store: ObjectStore, topic: str, partition: int) -> list[int]:
    prefix = f"{CLUSTER}/topics/{topic}/partitions/{partition:010d}/records/"
    on_disk = sorted(int(p.name[:20]) for p in (store.root / "tansu" / prefix).iterdir())
    listed = [int(item.key[len(prefix) : len(prefix) + 20]) for item in store.listing("tansu", prefix)]
    assert listed == on_disk  # what the broker is told is what is on disk
    return on_disk


def test_a_batch_goes_once_every_committing_group_is_past_it_and_it_is_old_enough(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    for base in (0, 5, 10, 15, 20):
        _batch(store, "notes", 0, base)
        _batch(store, "dead", 0, base)
    for base in (0, 5):
        _batch(store, "notes", 1, base)
    _commit(store, "sink", "notes", 0, 17)
    _commit(store, "worker", "notes", 0, 12)
    assert committed_offsets(str(tmp_path / "tansu" / CLUSTER)) == {("notes", "0000000000"): 12}
    later = time.time() + 3600

    assert sweep(store, retention_s=60) == 0  # consumed, but written just now
    assert _bases(store, "notes", 0) == [0, 5, 10, 15, 20]

    # 0-4 and 5-9 are below both groups' offsets; 10-14 holds offset 12, which "worker" has not consumed
    assert sweep(store, retention_s=60, now=later) == 2
    assert _bases(store, "notes", 0) == [10, 15, 20]
    assert _bases(store, "notes", 1) == [0, 5]  # no group has committed there
    assert _bases(store, "dead", 0) == [0, 5, 10, 15, 20]  # nor on a topic nothing consumes

    # a group whose offset cannot be read holds the partition whole
    unreadable = _commit(store, "audit", "notes", 0, None)
    _commit(store, "sink", "notes", 0, 100)
    _commit(store, "worker", "notes", 0, 100)
    assert sweep(store, retention_s=60, now=later) == 0
    store.delete("tansu", unreadable)
    # the last batch stays, whatever the offsets: where it ends is known only from the next one
    assert sweep(store, retention_s=60, now=later) == 2
    assert _bases(store, "notes", 0) == [20]


def _records_dir(storage: Path, topic: str) -> Path:
    found = list(storage.glob(f"tansu/clusters/*/topics/{topic}/partitions/0000000000/records"))
    assert len(found) == 1, found
    return found[0]


def _read_all(bootstrap: str, tp: TopicPartition, group: str, expect: int) -> list[int]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest", consumer_timeout_ms=500
    )
    try:
        consumer.assign([tp])
        offsets: list[int] = []
        deadline = time.monotonic() + 30
        while len(offsets) < expect and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                offsets += [r.offset for r in records]
        return offsets
    finally:
        consumer.close()


def _commit_on_broker(bootstrap: str, tp: TopicPartition, group: str, offset: int) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close()


def test_the_durable_broker_drops_what_every_group_consumed_and_its_consumers_read_on(tmp_path: Path) -> None:
    storage = tmp_path / "broker"
    topic = f"retention-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    with TansuBroker(storage_dir=storage, retention_s=0.5) as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic(topic, 1, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        for i in range(40):
            producer.send(topic, str(i).encode()).get(timeout=10)  # one batch per record
        records = _records_dir(storage, topic)
        assert len(list(records.iterdir())) == 40

        _commit_on_broker(broker.bootstrap, tp, "slow", 10)
        _commit_on_broker(broker.bootstrap, tp, "fast", 30)
        poll_until(lambda: len(list(records.iterdir())) == 30, 15, "the batches both groups consumed to go")
        time.sleep(1.0)  # and no more than those
        assert sorted(int(p.name[:20]) for p in records.iterdir()) == list(range(10, 40))

        # a group that starts now reads what is left, in order, from the first batch kept
        assert _read_all(broker.bootstrap, tp, "late", expect=30) == list(range(10, 40))

        _commit_on_broker(broker.bootstrap, tp, "slow", 35)  # "fast", at 30, now holds the partition
        poll_until(lambda: len(list(records.iterdir())) == 10, 15, "the batches below 30 to go")
        for i in range(40, 45):
            producer.send(topic, str(i).encode()).get(timeout=10)
        producer.close()
        # the group that holds the partition reads on from its offset, new records included
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="fast", enable_auto_commit=False, auto_offset_reset="none")
        try:
            consumer.assign([tp])
            assert consumer.position(tp) == 30
            seen: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(seen) < 15 and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    seen += [r.value for r in batch]
        finally:
            consumer.close()
        assert seen == [str(i).encode() for i in range(30, 45)]
