"""Settings of the OpenAlex importer (environment variables, like every bzpeer process)."""

from __future__ import annotations

from pydantic import Field

from service_runtime.settings import RuntimeSettings

# OpenAlex basic paging serves at most the first 10,000 results of a list.
BASIC_PAGING_LIMIT = 10_000


class ImporterSettings(RuntimeSettings):
    service_name: str = "importer"

    openalex_base_url: str = "https://api.openalex.org"
    # Puts requests in OpenAlex's "polite pool"; also sent in the User-Agent.
    openalex_mailto: str | None = None
    # OpenAlex asks for a (free) API key on list requests since 2026; sent when set.
    openalex_api_key: str | None = None
    # The classic polite pool asks for <= 10 requests/s (keyed plans allow 100): half of 10 by
    # default leaves room for other clients sharing the same mailto or key.
    openalex_requests_per_second: float = Field(default=5.0, gt=0, le=100)
    # 100 is the largest page every documented version of the API accepts.
    openalex_per_page: int = Field(default=100, ge=1, le=100)
    openalex_timeout_s: float = Field(default=30.0, gt=0)
    # Attempts per request (the first included) before a transient failure becomes an error.
    openalex_max_attempts: int = Field(default=6, ge=1)
    openalex_backoff_initial_s: float = Field(default=0.5, gt=0)
    openalex_backoff_max_s: float = Field(default=30.0, gt=0)
    # A Retry-After longer than this is capped: we wait this long and try again.
    openalex_max_retry_after_s: float = Field(default=300.0, gt=0)
    # Where the per-author checkpoint lives (a small JSON file).
    import_state_path: str = ".local/state/openalex-import.json"
