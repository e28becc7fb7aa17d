"""What every bzpeer service repeats, written once: settings, logging, the Kafka broker and
producer, the MongoDB client, batch consumption with dead-lettering and retries, metrics,
health/readiness HTTP, JWT authentication, and the composition of all of it (``Service``)."""
