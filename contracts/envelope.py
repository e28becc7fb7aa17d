"""The one envelope every message on every topic travels in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

# Namespace for event ids derived from their cause: re-running a handler on a redelivered
# message yields the same output ids, so consumers see a duplicate, not a new event.
_EVENT_ID_NAMESPACE = uuid.UUID("6f1c8a52-3d0e-4b8e-9a57-0b7f2f0f5e21")


def deterministic_event_id(*parts: object) -> uuid.UUID:
    """A UUIDv5 from the parts that identify an output event (e.g. cause id + type + key)."""
    return uuid.uuid5(_EVENT_ID_NAMESPACE, "\x1f".join(str(p) for p in parts))


class EventModel(BaseModel):
    """Base of every event/command payload (the envelope's ``data``).

    Subclasses set ``event_type`` (past tense for events, imperative for commands),
    ``schema_version`` and ``topic``; ``key`` names the field the message is keyed by.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    topic: ClassVar[str]
    key_field: ClassVar[str] = "author_id"

    def key(self) -> str:
        return str(getattr(self, self.key_field))


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID
    event_type: str = Field(min_length=1, max_length=100)
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime
    producer: str = Field(min_length=1, max_length=100)
    correlation_id: str = Field(min_length=1, max_length=200)
    causation_id: uuid.UUID | None = None
    data: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)

    @classmethod
    def wrap(
        cls,
        payload: EventModel,
        *,
        producer: str,
        cause: Envelope | None = None,
        event_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Self:
        """Envelope a payload; a caused event inherits the cause's correlation id."""
        eid = event_id or uuid.uuid4()
        return cls(
            event_id=eid,
            event_type=payload.event_type,
            schema_version=payload.schema_version,
            occurred_at=occurred_at or datetime.now(UTC),
            producer=producer,
            correlation_id=correlation_id or (cause.correlation_id if cause else str(eid)),
            causation_id=cause.event_id if cause else None,
            data=payload.model_dump(mode="json"),
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
