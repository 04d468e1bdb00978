"""Logging set-up. Log lines carry records' positions (topic/partition/offset), never note text or patient ids."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ShutdownNoise(logging.Filter):
    """kafka-python logs a cancelled metadata refresh as an ERROR whenever a client closes; it is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Cancelled" not in record.getMessage()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT, force=True)
    # third-party chatter at INFO is noise for operators
    for noisy in ("kafka", "aiokafka", "httpx", "urllib3", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("kafka.cluster").addFilter(_ShutdownNoise())
