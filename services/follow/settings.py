"""Settings of the follow service (environment variables, see RuntimeSettings)."""

from __future__ import annotations

from pydantic import Field

from service_runtime.settings import RuntimeSettings

# The consumer group (suffix) that reads profile.events, claims.events and trust.events.
SOURCES_GROUP = "sources"


class FollowSettings(RuntimeSettings):
    service_name: str = "follow"
    http_port: int = 8004

    # A follow of an author not known yet is parked this long for the author to arrive
    # (profile.events may lag the web app), then rejected with reason unknown_author once
    # profile.events has been read up to the end of the wait (see README, unknown authors).
    unknown_author_wait_s: float = Field(default=60.0, gt=0)
    # How often the sweeper looks for parked follows to apply (author known) or reject.
    sweep_interval_s: float = Field(default=1.0, gt=0)
    # Followers per fan-out chunk (one follow.fanout message, one bulk inbox insert).
    fanout_chunk_size: int = Field(default=1000, ge=1, le=10_000)
    # Chunks of one batch a replica notifies together (one range read per author, one insert
    # of their chunk documents, one of their inbox entries, one publish, one pull): as many
    # chunks as hold this many times fanout_chunk_size followers, all in memory until
    # published. Small fan-outs of a source batch are mostly one such group.
    fanout_chunk_concurrency: int = Field(default=4, ge=1, le=64)
    # Fan-outs of at most this many chunks are notified by the planner itself, not through
    # follow.fanout, where they would queue behind a large fan-out's chunks (0: none).
    fanout_inline_chunks: int = Field(default=1, ge=0, le=10)
    # A fan-out to more followers than this keeps one shared inbox entry per chunk (a
    # document listing its followers) instead of an entry per follower (docs/fanout.md).
    fanout_shared_above: int = Field(default=10_000, ge=0)
    # Followers per chunk of such a fan-out (one shared entry, one run of sends).
    fanout_shared_chunk_size: int = Field(default=10_000, ge=1, le=50_000)
    # Shared chunks a replica notifies at once: their work is CPU (building and sending
    # records), and every one running delays the other consumers' steps in the process.
    # One: on two cores shared with the broker and the store, a second one made the
    # million no faster and doubled other work's p99 (docs/performance.md).
    fanout_shared_concurrency: int = Field(default=1, ge=1, le=16)
    # How long the fan-out's own producer waits to fill a batch of records.
    fanout_send_linger_ms: int = Field(default=20, ge=0, le=1000)
    # Page size of the HTTP lists.
    page_limit: int = Field(default=100, ge=1, le=1000)

    @property
    def sources_group(self) -> str:
        return f"{self.consumer_group}.{SOURCES_GROUP}"
