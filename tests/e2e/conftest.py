"""The web app's side of the end-to-end tests: a publisher on the namespace's topics."""

from __future__ import annotations

import pytest

from service_runtime.kafka import make_broker
from service_runtime.publishing import EventPublisher
from tests.conftest import Namespace


@pytest.fixture
async def webapp(ns: Namespace):
    broker = make_broker(ns.infra["kafka"], client_id="webapp")
    await broker.connect()
    yield EventPublisher(broker, "webapp", ns.topic_prefix)
    await broker.stop()
