"""Settings of the web app (environment variables, see RuntimeSettings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from service_runtime.settings import RuntimeSettings

# Where `npm ci` (make web-assets) puts the pinned front-end libraries of package.json.
DEFAULT_ASSETS_DIR = Path(__file__).resolve().parent / "node_modules"


class WebSettings(RuntimeSettings):
    service_name: str = "web"
    http_port: int = 8000

    # The services the pages read and the commands go to (their HTTP APIs only).
    profile_url: str = "http://127.0.0.1:8001"
    claims_url: str = "http://127.0.0.1:8002"
    trust_url: str = "http://127.0.0.1:8003"
    follow_url: str = "http://127.0.0.1:8004"
    collab_url: str = "http://127.0.0.1:8005"
    backend_timeout_s: float = Field(default=5.0, gt=0)

    # The development identity provider (/sign-in): it mints the same tokens the services
    # accept, with the configured key. None: on, except with ENVIRONMENT=production, where
    # turning it on is refused at start.
    dev_sign_in: bool | None = None
    session_ttl_s: int = Field(default=8 * 3600, ge=60)

    # The pinned front-end libraries (package.json), installed by `npm ci`.
    assets_dir: Path = DEFAULT_ASSETS_DIR

    # Live updates: tail the author topics (no consumer group) and push changes over SSE.
    live_updates: bool = True
    # Changes of one author within this window go to a page as one message.
    live_coalesce_s: float = Field(default=0.15, ge=0)
    live_keepalive_s: float = Field(default=15.0, gt=0)
    # A page rendered this long before the process started tailing (or before a change of
    # its author arrived) refreshes its sections when it subscribes: covers the moment
    # between reading the services and subscribing, and clocks of several web processes.
    live_catch_up_margin_s: float = Field(default=5.0, ge=0)

    # Co-authors, works and institutions asked of the research graph API for the first
    # slice (every topic comes too), and neighbours per expansion: 12 keeps the seed's
    # first drawing (12 + 12 + 9 topics) large enough to read and click.
    graph_limit: int = Field(default=12, ge=1, le=200)

    @property
    def dev_sign_in_enabled(self) -> bool:
        return self.dev_sign_in if self.dev_sign_in is not None else self.environment != "production"

    @model_validator(mode="after")
    def _no_dev_sign_in_in_production(self) -> WebSettings:
        if self.environment == "production" and self.dev_sign_in:
            raise ValueError(
                "refusing to start in production with the development sign-in: it lets anyone "
                "sign in as anyone (unset DEV_SIGN_IN)"
            )
        return self
