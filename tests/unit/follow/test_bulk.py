"""A large fan-out's notifications, encoded without Pydantic, are the events consumers
expect: valid ``NotificationCreated`` envelopes, keyed by user, the same on every attempt."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contracts.envelope import Envelope
from contracts.events.notifications import NotificationCreated, notification_id
from contracts.registry import decode
from contracts.topics import Topic
from services.follow.bulk import shared_records
from services.follow.rules import SharedEntry

SOURCE = uuid.uuid4()
ENTRY = SharedEntry(
    "1b7e4f1e-3a52-5f7e-9e5c-0d6f0b1f6a11:3",
    "openalex:A5017898742",
    "new_work",
    'Quoc V. Le published a new work: "Sequence" \u00e0 la carte',
    SOURCE,
    datetime(2026, 12, 4, 10, 0, 0, 123456, tzinfo=UTC),
)


def test_each_record_decodes_as_the_notification_of_its_user() -> None:
    cause = Envelope(
        event_id=uuid.uuid4(),
        event_type="WorkAdded",
        schema_version=1,
        occurred_at=datetime.now(UTC),
        producer="profile",
        correlation_id="corr-1",
        data={},
    )
    at = datetime(2026, 12, 4, 10, 0, 1, 5000, tzinfo=UTC)
    records = shared_records(ENTRY, ["u1", "user-0000002"], producer="follow", cause=cause, occurred_at=at)
    assert [k for k, _ in records] == [b"u1", b"user-0000002"]
    for (_key, value), user in zip(records, ["u1", "user-0000002"], strict=True):
        envelope, payload = decode(Topic.NOTIFICATIONS_EVENTS, value)
        assert isinstance(payload, NotificationCreated)
        nid = notification_id(SOURCE, user)
        assert envelope.event_id == payload.notification_id == nid
        assert (envelope.producer, envelope.correlation_id, envelope.causation_id) == (
            "follow",
            "corr-1",
            cause.event_id,
        )
        assert envelope.occurred_at == at
        assert payload == NotificationCreated(
            notification_id=nid,
            user_id=user,
            author_id=ENTRY.author_id,
            kind="new_work",
            source_event_id=SOURCE,
            title=ENTRY.title,
            created_at=ENTRY.created_at,
            shared_id=ENTRY.shared_id,
        )
    again = shared_records(ENTRY, ["u1", "user-0000002"], producer="follow", cause=cause, occurred_at=at)
    assert again == records, "a redelivered chunk sends the same bytes"
