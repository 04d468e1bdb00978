"""Logging set-up. Log lines carry ids of records' positions (topic/partition/offset), never note text or patient ids."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT, force=True)
    # third-party chatter at INFO is noise for operators
    for noisy in ("kafka", "aiokafka", "httpx", "urllib3", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
