"""Dispatch by payload type."""

from __future__ import annotations

from typing import TypeVar

import pytest

from contracts import Envelope, EventModel
from contracts.events.follows import FollowRequested, UnfollowRequested
from contracts.events.publications import AuthorImported
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch

P = TypeVar("P", bound=EventModel)


def incoming(payload: P) -> Incoming[P]:
    return Incoming(Envelope.wrap(payload, producer="test"), payload, str(payload.topic), 0, 0)


def test_each_type_goes_to_its_handler() -> None:
    dispatch = (
        Dispatch[str]()
        .on(FollowRequested, handler=lambda p, item: f"follow {p.user_id}")
        .on(UnfollowRequested, handler=lambda p, item: f"unfollow {p.user_id} at {item.offset}")
    )
    assert dispatch(incoming(FollowRequested(user_id="u1", author_id="a"))) == "follow u1"
    assert dispatch(incoming(UnfollowRequested(user_id="u2", author_id="a"))) == "unfollow u2 at 0"
    assert dispatch.types == (FollowRequested, UnfollowRequested)


def test_an_unregistered_type_is_an_error_and_a_type_registers_once() -> None:
    dispatch = Dispatch[None]().on(FollowRequested, handler=lambda p, item: None)
    other = incoming(AuthorImported(author_id="a", display_name="A", source="test"))
    assert not dispatch.handles(other)
    with pytest.raises(TypeError, match="AuthorImported"):
        dispatch(other)
    with pytest.raises(ValueError):
        dispatch.on(FollowRequested, handler=lambda p, item: None)
