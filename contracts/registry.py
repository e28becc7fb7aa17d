"""Decoding: bytes off the wire -> (envelope, typed payload), or a DecodeError saying why."""

from __future__ import annotations

import json

from pydantic import ValidationError

from contracts.envelope import Envelope, EventModel
from contracts.events import claims, collab, follows, notifications, profile, publications, trust

_MODELS: list[type[EventModel]] = [
    publications.WorkIngested,
    publications.AuthorImported,
    profile.AuthorRegistered,
    profile.AuthorUpdated,
    profile.WorkAdded,
    profile.WorkUpdated,
    profile.ProfileEditRequested,
    profile.ProfileEditRejected,
    claims.ClaimRequested,
    claims.ClaimEvidenceSubmitted,
    claims.ClaimWithdrawn,
    claims.ClaimReviewed,
    claims.ClaimSubmitted,
    claims.ClaimNeedsReview,
    claims.ClaimApproved,
    claims.ClaimRejected,
    claims.ClaimEvidenceAdded,
    claims.ClaimWithdrawnEvent,
    claims.ClaimRevoked,
    claims.VerificationLevelChanged,
    trust.TrustScoreChanged,
    follows.FollowRequested,
    follows.UnfollowRequested,
    follows.AuthorFollowed,
    follows.AuthorUnfollowed,
    follows.FollowerCountChanged,
    follows.FollowRejected,
    follows.FollowPending,
    notifications.NotificationCreated,
    notifications.NotificationsRead,
    notifications.FanoutCutRequested,
    notifications.FanoutChunkRequested,
    collab.InvitationRequested,
    collab.InvitationAnswerRequested,
    collab.InvitationWithdrawRequested,
    collab.MessagePostRequested,
    collab.InvitationSent,
    collab.InvitationRejected,
    collab.InvitationAccepted,
    collab.InvitationDeclined,
    collab.InvitationWithdrawn,
    collab.InvitationClosed,
    collab.MessagePosted,
    collab.InvitationCommandRejected,
]

# (topic, event_type) -> model: one event type name may live on two topics
# (ClaimWithdrawn is a command on webapp.claims and an event on claims.events).
EVENT_TYPES: dict[tuple[str, str], type[EventModel]] = {(str(m.topic), m.event_type): m for m in _MODELS}
assert len(EVENT_TYPES) == len(_MODELS), "duplicate (topic, event_type)"


class DecodeError(ValueError):
    """The message can never be processed: it belongs in the dead-letter topic."""


def model_for(topic: str, event_type: str) -> type[EventModel]:
    try:
        return EVENT_TYPES[(topic, event_type)]
    except KeyError:
        raise DecodeError(f"unknown event type {event_type!r} on topic {str(topic)!r}") from None


def decode(topic: str, raw: bytes | None) -> tuple[Envelope, EventModel]:
    if raw is None:
        raise DecodeError("empty message (tombstone) where an event was expected")
    try:
        # Parsed and validated in one pass by pydantic-core (no json.loads tree first).
        envelope = Envelope.model_validate_json(raw)
    except ValidationError as exc:
        raise _not_an_envelope(raw, exc) from None
    model = model_for(topic, envelope.event_type)
    if envelope.schema_version > model.schema_version:
        raise DecodeError(
            f"{envelope.event_type} schema_version {envelope.schema_version} is newer than "
            f"this consumer understands ({model.schema_version})"
        )
    try:
        payload = model.model_validate(envelope.data)
    except ValidationError as exc:
        raise DecodeError(f"{envelope.event_type} invalid: {_brief(exc)}") from None
    return envelope, payload


def _not_an_envelope(raw: bytes, exc: ValidationError) -> DecodeError:
    if exc.errors()[0]["type"] != "json_invalid":
        return DecodeError(f"envelope invalid: {_brief(exc)}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as utf8:
        return DecodeError(f"payload is not UTF-8: {utf8}")
    try:
        json.loads(text)
    except json.JSONDecodeError as bad:
        return DecodeError(f"payload is not JSON: {bad}")
    return DecodeError(f"payload is not JSON: {_brief(exc)}")


def _brief(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
