from __future__ import annotations

from pydantic import Field

from service_runtime.settings import RuntimeSettings


class TrustSettings(RuntimeSettings):
    service_name: str = "trust"
    http_port: int = 8003
    # Debounce: an author is recomputed this long after its last signal change, so a burst
    # spread over several batches yields one recomputation...
    recompute_window_ms: int = Field(default=250, ge=0)
    # ...but never later than this after its first unscored change (a steady trickle
    # of events cannot postpone the score forever).
    recompute_max_delay_ms: int = Field(default=2000, ge=0)
    # How often the recompute loop looks for due authors when it found none.
    recompute_poll_ms: int = Field(default=100, ge=10)
    recompute_batch: int = Field(default=1000, ge=1)
    # The consumer hands the authors it marks dirty to the recompute loop of its own
    # process; this often the loop also reads the store for dirty authors no live process
    # scheduled (left by a restart or a dead replica) and outboxes left unpublished.
    # It reads the whole collection (FerretDB has no index but _id), so not often.
    recompute_sweep_s: float = Field(default=60.0, gt=0)
    # A replica that claimed authors and died releases them after this long.
    recompute_lease_s: float = Field(default=30.0, gt=0)
