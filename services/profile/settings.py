"""Settings of the profile service (environment variables, see RuntimeSettings)."""

from __future__ import annotations

from pydantic import Field

from service_runtime.settings import RuntimeSettings


class ProfileSettings(RuntimeSettings):
    service_name: str = "profile"
    http_port: int = 8001
    # A co-author is a close collaborator from this many shared works on. 5 is the
    # threshold that reproduces the seed page's "4 close collaborators" from the real
    # co-author lists (see README.md).
    close_collaborator_min_shared_works: int = Field(default=5, ge=1)
    # Works shown on the page itself; the rest are paged through /authors/{id}/works.
    page_works: int = Field(default=20, ge=1, le=100)
    # Work entries of the authors last written kept decoded in memory (store.WrittenAuthors),
    # with their first pages: ~1-3 KB per entry. 0: decode every author on every batch.
    written_cache_entries: int = Field(default=100_000, ge=0)
    # How often an optimistic write is retried when another writer changed the same author.
    write_conflict_attempts: int = Field(default=8, ge=1)
    # The sweep publishes a written outbox once it is this old: a younger one is most
    # likely being published by its writer right now (publishing it too would only send
    # duplicates).
    outbox_grace_s: float = Field(default=30.0, ge=0)
    # A write of authors that never finished (its process died mid-write) leaves a pending
    # outbox token; the sweep publishes what its authors carry once it is this old. Far
    # above the time one batch's author write takes.
    outbox_stale_after_s: float = Field(default=600.0, gt=0)
