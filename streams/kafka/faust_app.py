"""Faust's app with the one change ehrstream needs of its Kafka driver: the worker reads committed records only.

Feeds that produce with transactions (Kafka Connect, Debezium, exactly-once Java or librdkafka producers) abort
some of them, and an aborted note must never be extracted. faust-streaming 0.15 sets ``isolation_level`` to
``read_committed`` only when the app itself runs exactly-once (transactional producers of its own), so the
worker's consumer is built here with it set, whatever the processing guarantee.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

#: every consumer ehrstream opens (Faust's aiokafka, kafka-python) reads only committed records
ISOLATION_LEVEL = "read_committed"


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = ISOLATION_LEVEL  # aiokafka builds its fetcher from this when the consumer starts
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class ReadCommittedApp(faust.App):
    """``faust.App`` whose worker consumer reads with ``isolation_level=read_committed`` (``kafka://`` brokers)."""

    def _new_transport(self) -> TransportT:
        return _ReadCommittedTransport(self.conf.broker_consumer, self)
