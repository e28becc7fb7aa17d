"""One settings class for what every service shares; a service subclasses it for its own."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Signs tokens for local runs and tests only. A service told it runs in production refuses
# to start with it (see ``RuntimeSettings._no_dev_key_in_production``).
DEV_JWT_SECRET = "bzpeer-development-signing-key-not-for-production-use"


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    service_name: str = "bzpeer"
    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    mongodb_uri: str = "mongodb://127.0.0.1:27017"
    # Each service owns one database; defaults to "bzpeer_<service>".
    mongodb_database: str | None = None
    # Prefix of every physical topic name ("" in production). Tests give each run its own
    # fresh set of topics this way; contracts always speak of the logical names.
    topic_prefix: str = ""
    # True while a projection is rebuilt from the log (``bzpeer replay``). The log already
    # holds every event the service published, so a rebuild publishes nothing, and the
    # decisions the service took live (scores, notifications) are read back from its own
    # output topics instead of being taken again (see ``Service.consume(runs=...)``).
    rebuilding: bool = False
    # Prefix for consumer group ids, so test runs or copies of the system don't share offsets.
    consumer_group_prefix: str = "bzpeer"

    http_host: str = "127.0.0.1"
    http_port: int = 8000

    # Batch consumption: up to this many records per handler call.
    consumer_max_records: int = Field(default=500, ge=1)
    consumer_batch_timeout_ms: int = Field(default=50, ge=1)
    # Transient failures (store or broker unreachable) are retried with capped exponential backoff.
    retry_initial_delay_s: float = Field(default=0.2, gt=0)
    retry_max_delay_s: float = Field(default=5.0, gt=0)
    # A non-transient handler error is retried this many times before the message is dead-lettered.
    handler_attempts: int = Field(default=3, ge=1)
    # Outbox entries older than this are published by the sweeper (their writer died, or
    # its input will not come again); younger ones are most likely being published by their
    # writer right now. The sweep runs at start and then every interval.
    outbox_grace_s: float = Field(default=30.0, ge=0)
    outbox_sweep_interval_s: float = Field(default=30.0, gt=0)
    # Published entries are removed from their documents this long after, many at once
    # (0: right after publishing). See service_runtime.outbox.
    outbox_clear_after_s: float = Field(default=0.5, ge=0)
    # How often a guarded write that lost to another writer is read, decided and tried again.
    write_conflict_attempts: int = Field(default=8, ge=1)

    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    # HS256: the shared secret; RS256/ES256: the identity provider's public key (PEM).
    jwt_key: str = DEV_JWT_SECRET
    jwt_issuer: str = "bzpeer-webapp"
    jwt_audience: str = "bzpeer"

    @property
    def database_name(self) -> str:
        return self.mongodb_database or f"bzpeer_{self.service_name}"

    def physical_topic(self, logical: str) -> str:
        return f"{self.topic_prefix}{logical}"

    def logical_topic(self, physical: str) -> str:
        return physical.removeprefix(self.topic_prefix)

    @property
    def consumer_group(self) -> str:
        return f"{self.consumer_group_prefix}.{self.service_name}"

    @model_validator(mode="after")
    def _no_dev_key_in_production(self) -> RuntimeSettings:
        if self.environment == "production" and self.jwt_key == DEV_JWT_SECRET:
            raise ValueError(
                "refusing to start in production with the development JWT key: set JWT_KEY "
                "to the identity provider's key"
            )
        return self
