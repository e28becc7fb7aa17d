"""Dispatch by payload type: one handler per event type, typed, instead of ``isinstance``
chains over ``Incoming.payload``.

    apply = (Dispatch[list[Emit]]()
             .on(ClaimRequested, book.request)          # (payload: ClaimRequested, item) -> list[Emit]
             .on(ClaimWithdrawn, book.withdraw))
    emits = apply(item)            # the handler of type(item.payload)
    apply.types                    # the payload types it takes: Service.consume(accepts=...)

A handler receives the payload as its own type and the ``Incoming`` it came in (envelope,
topic, partition, offset). A payload of a type nobody registered is a programming error
(the consumer was subscribed with ``accepts=dispatch.types``), so it raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from contracts.envelope import EventModel
from service_runtime.delivery import Incoming

R = TypeVar("R")
P = TypeVar("P", bound=EventModel)


class Dispatch(Generic[R]):
    def __init__(self) -> None:
        self._handlers: dict[type[EventModel], Callable[[Any, Incoming[Any]], R]] = {}

    def on(self, *kinds: type[P], handler: Callable[[P, Incoming[P]], R]) -> Dispatch[R]:
        for kind in kinds:
            if kind in self._handlers:
                raise ValueError(f"{kind.__name__} already has a handler")
            self._handlers[kind] = handler
        return self

    @property
    def types(self) -> tuple[type[EventModel], ...]:
        return tuple(self._handlers)

    def handles(self, item: Incoming[Any]) -> bool:
        return type(item.payload) in self._handlers

    def __call__(self, item: Incoming[Any]) -> R:
        handler = self._handlers.get(type(item.payload))
        if handler is None:
            raise TypeError(f"no handler for {type(item.payload).__name__} ({item.topic})")
        return handler(item.payload, item)
