"""Retrying what fails for a while (store or broker unreachable) until it succeeds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service_runtime.kafka import TRANSIENT_BROKER_ERRORS
from service_runtime.logging import get_logger
from service_runtime.store import TRANSIENT_STORE_ERRORS, is_deadlock

T = TypeVar("T")
TRANSIENT_ERRORS = TRANSIENT_STORE_ERRORS + TRANSIENT_BROKER_ERRORS
log = get_logger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Unreachable store or broker, or a write the store asks to retry (``is_deadlock``)."""
    return isinstance(exc, TRANSIENT_ERRORS) or is_deadlock(exc)


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    initial_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``operation`` until it stops failing transiently; other errors propagate.

    There is no attempt limit on purpose: a message whose store is down must wait, not be
    dead-lettered or committed. The process may die meanwhile; then nothing was committed
    and the message is delivered again.
    """
    delay = initial_delay_s
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if on_retry:
                on_retry(exc)
            log.warning("transient_failure", what=what, error=repr(exc), retry_in_s=round(delay, 2))
            # Jittered: writers that lost one race together must not retry in step.
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, max_delay_s)
