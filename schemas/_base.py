"""Shared base of the pydantic models that mirror the Avro schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict


def _millis_utc(value: datetime) -> datetime:
    """Timestamps travel as Avro timestamp-millis: make them aware (UTC) and millisecond-exact."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=(value.microsecond // 1000) * 1000)


TimestampMillis = Annotated[datetime, AfterValidator(_millis_utc)]


def utc_now() -> datetime:
    """Now, as a timestamp-millis value."""
    return _millis_utc(datetime.now(UTC))


class AvroModel(BaseModel):
    """A pydantic model mirroring the Avro schema file named by ``avro_schema``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: file name of the Avro schema this model mirrors, beside this module
    avro_schema: ClassVar[str]
