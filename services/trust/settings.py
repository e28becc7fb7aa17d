"""Settings of the trust service (environment variables, see RuntimeSettings)."""

from __future__ import annotations

from pydantic import Field

from service_runtime.settings import RuntimeSettings


class TrustSettings(RuntimeSettings):
    service_name: str = "trust"
    http_port: int = 8003
    # Bigger batches than the runtime's default while catching up: one read, one bulk write
    # and one commit per batch, and an author's events of one batch are one write
    # (measured: 20,000 events in 3.4 s against 4.0 s at 500). Live, batches are whatever
    # has arrived, so this costs no latency.
    consumer_max_records: int = Field(default=2000, ge=1)
    # Coalescing (see README: Recomputation, coalesced). An author is recomputed this long
    # after its last signal change read live, so events arriving closer together than this
    # make one recomputation. It is the latency trust adds to every score change; smaller,
    # a trickle of events for one author (gaps above the window) splits into more
    # recomputations and more TrustScoreChanged, each one history entry and one event for
    # profile and follow to handle. A burst already in the log when read (a produce request
    # of 500 works, a consumer catching up) is coalesced whatever the window: the author
    # waits until its partitions are read to their end.
    recompute_window_ms: int = Field(default=50, ge=0)
    # ...but never later than this after its first unscored change: the latency bound of
    # an author under a steady trickle (gaps below the window), which is then recomputed
    # (and may publish a change) once per this period.
    recompute_max_delay_ms: int = Field(default=200, ge=0)
    # A burst read from a backlog (the consumer catching up): how long, in the events' own
    # time, it may span and still be one recomputation. Longer: an author whose events in
    # a backlog were written over a long time waits for more of them (it is scored when
    # its partitions are read to their end in any case). Not a latency of live input.
    recompute_burst_span_ms: int = Field(default=2000, ge=0)
    # The recompute loop wakes when the first scheduled author is due; it sleeps at most
    # this long (checking for the sweep) when nothing is scheduled.
    recompute_poll_ms: int = Field(default=500, ge=10)
    # Authors per pass, and passes at once: while one waits for the store or the broker,
    # another works (each leases its own authors).
    recompute_batch: int = Field(default=250, ge=1)
    recompute_passes: int = Field(default=4, ge=1)
    # The consumer hands the authors it marks dirty to the recompute loop of its own
    # process; this often the loop also reads the store (index on dirty, due_at) for
    # authors dirty and overdue that no live process scheduled (a restart, a dead replica).
    recompute_sweep_s: float = Field(default=60.0, gt=0)
    # A replica that leased authors and died releases them after this long.
    recompute_lease_s: float = Field(default=30.0, gt=0)
