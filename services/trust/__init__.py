"""The trust service: an explainable, deterministic trust score recomputed from events."""
