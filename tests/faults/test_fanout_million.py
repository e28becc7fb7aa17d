"""A million followers: a SIGKILL of one of two follow replicas in the middle of the
fan-out, then a restart, ends with each of the 1,000,000 followers notified exactly once
(in the store, over HTTP for a sample, and 1,000,000 distinct ids on notifications.events),
and nobody who unfollowed before the work or followed after it. The same scenario runs at
20,000 followers in the integration tests. Size: ``BZPEER_FANOUT_FOLLOWERS``. Seeding a
million edges and the checks take minutes: run it with ``BZPEER_TEST_STALL_S=1800``, e.g.

    BZPEER_TEST_STALL_S=1800 .local/venv/bin/python -m pytest tests/faults/test_fanout_million.py -m faults
"""

from __future__ import annotations

import os

import pytest

from tests.integration.follow.crash import fanout_killed_midway

pytestmark = pytest.mark.faults

FOLLOWERS = int(os.environ.get("BZPEER_FANOUT_FOLLOWERS", "1000000"))


async def test_a_million_follower_fanout_killed_midway_notifies_each_follower_once(ns, producer) -> None:
    await fanout_killed_midway(ns, producer, FOLLOWERS, chunk=10_000, timeout_s=1800)
