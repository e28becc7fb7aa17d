"""Settings of the claims service (environment variables, e.g. ``MAX_OPEN_CLAIMS_PER_USER``).

The outbox's grace time and sweep interval (``OUTBOX_GRACE_S``, ``OUTBOX_SWEEP_INTERVAL_S``)
and the attempts at a batch whose documents another writer changed
(``WRITE_CONFLICT_ATTEMPTS``) are the runtime's."""

from __future__ import annotations

from pydantic import Field

from service_runtime.settings import RuntimeSettings


class ClaimsSettings(RuntimeSettings):
    service_name: str = "claims"
    http_port: int = 8002

    max_open_claims_per_user: int = Field(default=3, ge=1)
    # One record per person is the norm; raise it for e.g. a person with a duplicate record.
    max_approved_claims_per_user: int = Field(default=1, ge=1)
    # A claim for an author the service has not seen yet waits this long for the author
    # (profile.events may lag the web app), then is rejected with unknown_author.
    pending_author_timeout_s: float = Field(default=600.0, gt=0)
    # How often the sweeper looks for claims whose wait is over.
    sweep_interval_s: float = Field(default=15.0, gt=0)
