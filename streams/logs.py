"""Logging set-up. Log lines carry records' positions (topic/partition/offset), never note text or patient ids."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ShutdownNoise(logging.Filter):
    """kafka-python logs a cancelled metadata refresh as an ERROR whenever a client closes; it is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Cancelled" not in record.getMessage()


#: client libraries capped at WARNING whatever the level: their INFO is noise, and their DEBUG prints record
#: payloads (kafka-python and aiokafka log "Sending (key=... value=...)"), which would put note text in the log
CLIENT_LOGGERS = ("kafka", "aiokafka", "httpx", "urllib3", "faust", "mode")


def cap_client_loggers(level: str) -> None:
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT, force=True)
    cap_client_loggers(level)
    logging.getLogger("kafka.cluster").addFilter(_ShutdownNoise())
