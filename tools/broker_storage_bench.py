"""Publish rates of the embedded broker in memory and on disk (the durable default): 3,000 notes of about 1.2 KB
sent with acks=all and flushed once (bulk), then 200 sent one at a time, each waited for (acknowledgement latency).
README's "Durable by default" numbers come from `python tools/broker_storage_bench.py`."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from streams.kafka.clients import ensure_topics, producer
from streams.runtime.broker import TansuBroker
from streams.settings import Settings

NOTE = b"Seen today for asthma, hypertension and type 2 diabetes; no chest pain. " * 17


def measure(storage: Path | None) -> dict[str, float]:
    settings = Settings()
    with TansuBroker(storage_dir=storage) as broker:
        ensure_topics(settings, broker.bootstrap)
        p = producer(settings, broker.bootstrap)
        started = time.perf_counter()
        for i in range(3000):
            p.send(settings.topics.notes, key=str(i).encode(), value=NOTE)
        p.flush()
        bulk = 3000 / (time.perf_counter() - started)
        waits = []
        for i in range(200):
            t = time.perf_counter()
            p.send(settings.topics.notes, key=str(i).encode(), value=NOTE).get(30)
            waits.append((time.perf_counter() - t) * 1000)
        p.close()
    waits.sort()
    return {"bulk_notes_per_s": round(bulk, 1), "ack_p50_ms": round(statistics.median(waits), 2), "ack_p99_ms": round(waits[197], 2)}


def main() -> None:
    print(f"memory: {measure(None)}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"disk:   {measure(Path(tmp) / 'broker')}")


if __name__ == "__main__":
    main()
