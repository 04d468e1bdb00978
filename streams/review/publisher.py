"""Review decisions out: produced to the review-decisions topic, acknowledged by the broker before the reviewer is told."""

from __future__ import annotations

from schemas.codec import Codecs
from schemas.review_decision import ReviewDecision
from streams.kafka.clients import producer as make_producer
from streams.settings import Settings


class DecisionPublisher:
    """Produces decisions to the review-decisions topic and waits for the broker's acknowledgement."""

    def __init__(self, settings: Settings, bootstrap: str, codecs: Codecs) -> None:
        self.topic = settings.topics.review_decisions
        self._producer = make_producer(settings, bootstrap)
        self._codec = codecs.of(ReviewDecision)

    def send(self, decision: ReviewDecision, timeout_s: float = 15.0) -> None:
        future = self._producer.send(self.topic, key=decision.note_id.encode("utf-8"), value=self._codec.encode(decision))
        future.get(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close(timeout=5)
