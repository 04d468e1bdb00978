"""What the embedded broker (Tansu) does with aborted transactions: a librdkafka transactional producer aborts 5
records and commits 5; a read_committed librdkafka consumer and ehrstream's kafka-python consumer read the topic.
On a Kafka broker both would read the 5 committed records only. README's Guarantees quote this tool's output."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer

from streams.kafka.clients import consumer
from streams.runtime.broker import TansuBroker
from streams.settings import Settings


def main() -> None:
    with TansuBroker() as broker:
        topic = f"txn-{uuid.uuid4().hex[:6]}"
        producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "t1", "enable.idempotence": True})
        producer.init_transactions(20)
        for outcome in ("aborted", "committed"):
            producer.begin_transaction()
            for i in range(5):
                producer.produce(topic, value=f"{outcome}-{i}".encode())
            producer.flush()
            (producer.abort_transaction if outcome == "aborted" else producer.commit_transaction)(20)
        rdkafka = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": uuid.uuid4().hex,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        rdkafka.subscribe([topic])
        got: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(got) < 10:
            message = rdkafka.poll(0.5)
            if message is not None and not message.error():
                got.append(message.value().decode())
        rdkafka.close()
        print(f"librdkafka read_committed, 15 s: {sorted(got)}")
        ours = consumer(Settings(), broker.bootstrap, topic, group_id=None, consumer_timeout_ms=3000)
        print(f"ehrstream kafka-python read_committed: {sorted(m.value.decode() for m in ours)}")
        ours.close()


if __name__ == "__main__":
    main()
