"""A Kafka Produce request written by hand, for batches no client library will write: a record batch whose CRC does
not match its bytes, as a faulty producer, disk or proxy could leave on a topic."""

from __future__ import annotations

import socket
import struct
import time

from kafka.record.default_records import DefaultRecordBatchBuilder


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def corrupt_batch(values: list[bytes]) -> bytes:
    """A v2 record batch of ``values`` whose last byte is flipped after the CRC was computed."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=False, producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20
    )
    now = int(time.time() * 1000)
    for i, value in enumerate(values):
        builder.append(i, timestamp=now, key=b"corrupt", value=value, headers=[])
    raw = bytearray(builder.build())
    raw[-1] ^= 0xFF
    return bytes(raw)


def produce_batch(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Send one record batch with a Produce v3 request (acks=-1); returns the partition's error code (0 = stored)."""
    host, port = bootstrap.rsplit(":", 1)
    partition_data = struct.pack(">ii", 1, partition) + struct.pack(">i", len(batch)) + batch
    body = struct.pack(">h", -1) + struct.pack(">hi", -1, 10_000) + struct.pack(">i", 1) + _string(topic) + partition_data
    request = struct.pack(">hhi", 0, 3, 1) + _string("ehrstream-test") + body
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", sock.recv(4))[0]
        data = b""
        while len(data) < size:
            data += sock.recv(size - len(data))
    position = 4 + 4  # correlation id, responses count
    position += 2 + struct.unpack(">h", data[position : position + 2])[0]  # topic name
    position += 4 + 4  # partitions count, partition
    return int(struct.unpack(">h", data[position : position + 2])[0])
