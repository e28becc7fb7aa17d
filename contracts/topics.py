"""Every topic bzpeer uses: name, partition count, key, and retention policy.

Partition counts are explicit (the broker runs with auto-creation off); the project
creates topics from this registry (``service_runtime.topics.ensure_topics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DLQ_SUFFIX = ".dlq"


class Topic(StrEnum):
    PUBLICATIONS_INGESTED = "publications.ingested"
    WEBAPP_CLAIMS = "webapp.claims"
    WEBAPP_FOLLOWS = "webapp.follows"
    PROFILE_EVENTS = "profile.events"
    CLAIMS_EVENTS = "claims.events"
    TRUST_EVENTS = "trust.events"
    FOLLOWS_EVENTS = "follows.events"
    NOTIFICATIONS_EVENTS = "notifications.events"
    # Internal work queue of the follow service: one message per chunk of followers.
    FOLLOW_FANOUT = "follow.fanout"
    WEBAPP_COLLAB = "webapp.collab"
    COLLAB_EVENTS = "collab.events"
    WEBAPP_PROFILE = "webapp.profile"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    description: str
    # Every topic keeps its full history (retention -1): projections are rebuilt by
    # replaying from offset 0. Compaction would drop the history that replays need.
    retention_ms: int = -1
    cleanup_policy: str = "delete"

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


def dlq_topic(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


_AUTHOR = "author_id"
_SPECS = [
    TopicSpec(
        Topic.PUBLICATIONS_INGESTED, 6, _AUTHOR, "Works and author records from importers, keyed by the first author."
    ),
    TopicSpec(Topic.WEBAPP_CLAIMS, 6, _AUTHOR, "Claim commands from the web app and reviewers."),
    TopicSpec(Topic.WEBAPP_FOLLOWS, 6, _AUTHOR, "Follow/unfollow commands from the web app."),
    TopicSpec(Topic.PROFILE_EVENTS, 6, _AUTHOR, "Author records and works with their derived state."),
    TopicSpec(Topic.CLAIMS_EVENTS, 6, _AUTHOR, "Claim lifecycle and verification level."),
    TopicSpec(Topic.TRUST_EVENTS, 6, _AUTHOR, "Trust score changes."),
    TopicSpec(Topic.FOLLOWS_EVENTS, 6, _AUTHOR, "Follow edges and exact follower counts."),
    TopicSpec(Topic.NOTIFICATIONS_EVENTS, 6, "user_id", "Notifications for delivery systems outside bzpeer."),
    TopicSpec(
        Topic.FOLLOW_FANOUT,
        12,
        "fanout_id:chunk",
        "Chunks of a notification fan-out, spread over partitions.",
        retention_ms=7 * 24 * 3600 * 1000,
    ),
    TopicSpec(Topic.WEBAPP_COLLAB, 6, _AUTHOR, "Invitations, answers and messages from the web app."),
    TopicSpec(Topic.COLLAB_EVENTS, 6, _AUTHOR, "Invitations to claimed researchers and their conversations."),
    TopicSpec(Topic.WEBAPP_PROFILE, 6, _AUTHOR, "Owners' edits of their own record from the web app."),
]

TOPICS: dict[str, TopicSpec] = {s.name: s for s in _SPECS}
# Dead-letter topics mirror their source's partitioning and keep everything for inspection.
TOPICS.update(
    {dlq_topic(s.name): TopicSpec(dlq_topic(s.name), s.partitions, s.key, f"Dead letters of {s.name}.") for s in _SPECS}
)
