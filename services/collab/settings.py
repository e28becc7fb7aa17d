"""Settings of the collab service (environment variables, e.g. ``MAX_OPEN_INVITATIONS_PER_SENDER``)."""

from __future__ import annotations

from pydantic import Field

from service_runtime.settings import RuntimeSettings


class CollabSettings(RuntimeSettings):
    service_name: str = "collab"
    http_port: int = 8005

    # Pending invitations (sent, not answered yet) a sender may have at once, over all records.
    max_open_invitations_per_sender: int = Field(default=5, ge=1)
    # After an owner declined a sender, that sender's new invitations to them are refused this long.
    decline_cooldown_days: float = Field(default=30.0, ge=0)
    # Longest invitation message or thread message.
    max_message_chars: int = Field(default=2000, ge=1, le=20_000)
    # Most invitations of each kind (received, sent) a user's list returns, newest first.
    list_limit: int = Field(default=100, ge=1, le=1000)
