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
    # Entries and first-page works of the authors last written, kept in memory with the
    # revision written (store.WrittenAuthors): a batch then reads those authors without
    # them. ~0.3-1.5 KB each. 0: read every author whole.
    written_cache_size: int = Field(default=100_000, ge=0)
    # Published events leave an author's outbox with its next write (the same update), or
    # after this long in one bulk pull with the others not written since. Pulled at once,
    # every author was written twice per batch: the pull rewrites the whole document.
    outbox_clear_after_s: float = Field(default=1.0, ge=0)
