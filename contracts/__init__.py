"""bzpeer's message contracts: the envelope, the topic registry and every event model.

Services import from here and nowhere else; the JSON Schemas exported from these models
are committed under ``contracts/schemas`` and guarded by a compatibility test.
"""

from contracts.envelope import Envelope, EventModel, deterministic_event_id
from contracts.registry import EVENT_TYPES, DecodeError, decode, model_for
from contracts.topics import TOPICS, Topic, TopicSpec, dlq_topic

__all__ = [
    "EVENT_TYPES",
    "TOPICS",
    "DecodeError",
    "Envelope",
    "EventModel",
    "Topic",
    "TopicSpec",
    "decode",
    "deterministic_event_id",
    "dlq_topic",
    "model_for",
]
