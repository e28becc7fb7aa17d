"""What a service's projection is made of, so a rebuild from the log can be compared with
the live copy (``service_runtime.replay``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Projection:
    """What a service's projection is made of: collection -> bookkeeping fields left out of
    comparisons (dotted paths from the document's top, e.g. ``state.revision``).
    Collections not named here (work queues, outbox markers) are not part of it."""

    collections: dict[str, frozenset[str]]

    @classmethod
    def of(cls, **collections: tuple[str, ...] | list[str]) -> Projection:
        return cls({name: frozenset(fields) for name, fields in collections.items()})
