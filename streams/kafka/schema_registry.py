"""The project's schemas and a Confluent Schema Registry: subjects, registration, compatibility.

Subjects follow the TopicNameStrategy: each model's topic plus ``-value``. Without a registry,
``check_schemas`` still checks what ehrstream itself promises: that every earlier version of a
schema kept in ``schemas/history`` can be read with the current one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agents.config import TopicSettings
from schemas._base import AvroModel
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs, schema_history, schema_text
from schemas.compat import can_read
from schemas.dead_letter import DeadLetter
from schemas.extraction import Extraction
from schemas.registry import SchemaRegistryClient
from schemas.review_decision import ReviewDecision
from schemas.review_task import ReviewTask
from streams.settings import Settings


def subjects(topics: TopicSettings) -> dict[type[AvroModel], str]:
    return {
        ClinicalNote: f"{topics.notes}-value",
        Extraction: f"{topics.extractions}-value",
        ReviewTask: f"{topics.review}-value",
        ReviewDecision: f"{topics.review_decisions}-value",
        DeadLetter: f"{topics.deadletter}-value",
    }


def registry_client(settings: Settings) -> SchemaRegistryClient | None:
    if not settings.schema_registry_url:
        return None
    return SchemaRegistryClient(
        settings.schema_registry_url, settings.schema_registry_user, settings.schema_registry_password.get_secret_value()
    )


def build_codecs(settings: Settings) -> Codecs:
    """The process's codecs: with a registry they read (and, with ``avro_wire = confluent``, write) the Confluent
    wire format. Built once where the settings are read and passed down to the pipeline, the sink and the review app."""
    return Codecs(registry_client(settings), subjects(settings.topics), produce_confluent=settings.avro_wire == "confluent")


@dataclass
class SchemaStatus:
    model: str
    subject: str
    fingerprint: str
    #: every earlier version in schemas/history is readable with the current schema
    history_readable: bool
    #: the registry accepts the current schema as the subject's next version (None: no registry)
    registry_compatible: bool | None = None
    #: the current schema's id in the registry, when registered (None: not registered or no registry)
    registry_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.history_readable and self.registry_compatible is not False


def check_schemas(settings: Settings, register: bool = False) -> list[SchemaStatus]:
    client = registry_client(settings)
    plain = Codecs()
    out = []
    for model, subject in subjects(settings.topics).items():
        current = schema_text(model.avro_schema)
        readable = all(can_read(json.loads(old), json.loads(current)) for old in schema_history(model.avro_schema))
        status = SchemaStatus(model.__name__, subject, plain.of(model).fingerprint.hex(), readable)
        if client is not None:
            status.registry_compatible = client.is_compatible(subject, current)
            if register and status.ok:
                status.registry_id = client.register(subject, current)
            else:
                found = client.lookup(subject, current)
                status.registry_id = int(found["id"]) if found else None
        out.append(status)
    return out
