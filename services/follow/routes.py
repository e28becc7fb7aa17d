"""HTTP: follow/unfollow (authenticated, published as commands), followers, following,
and a user's own notifications."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from contracts.events.common import ID_PATTERN, Id
from contracts.events.follows import FollowRequested, UnfollowRequested
from contracts.events.notifications import NotificationsRead
from service_runtime.auth import CurrentUser, Principal
from service_runtime.problems import problem_responses
from service_runtime.publishing import EventPublisher
from service_runtime.requests import RequestBody
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore

router = APIRouter()
AuthorId = Annotated[str, Path(pattern=ID_PATTERN, description="author id, e.g. openalex:A5017898742")]
UserId = Annotated[str, Path(pattern=ID_PATTERN, description="user id (the token's subject)")]


# async: FastAPI runs a plain ``def`` dependency in a worker thread (see profile's routes).
async def get_store(request: Request) -> FollowStore:
    store: FollowStore = request.app.state.follow_store
    return store


async def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.service.publisher
    return publisher


async def get_settings(request: Request) -> FollowSettings:
    settings: FollowSettings = request.app.state.service.settings
    return settings


Store = Annotated[FollowStore, Depends(get_store)]
Publisher = Annotated[EventPublisher, Depends(get_publisher)]
Settings = Annotated[FollowSettings, Depends(get_settings)]


class FollowBody(RequestBody):
    author_id: Id


class Accepted(BaseModel):
    status: str = "accepted"
    command: str
    event_id: str


class Follower(BaseModel):
    user_id: str
    followed_at: datetime | None


class FollowersPage(BaseModel):
    author_id: str
    follower_count: int
    followers: list[Follower]
    next_cursor: str | None


class Followed(BaseModel):
    author_id: str
    followed_at: datetime | None


class Following(BaseModel):
    user_id: str
    following: list[Followed]


class Notification(BaseModel):
    notification_id: str
    author_id: str
    kind: str
    title: str
    source_event_id: str
    created_at: datetime
    read: bool


class NotificationsPage(BaseModel):
    user_id: str
    notifications: list[Notification]
    next_cursor: str | None


UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class MarkRead(RequestBody):
    # None: mark every notification of the user read. Ids by pattern, not as ``uuid.UUID``:
    # a strict body takes no string for a UUID, and a lax one takes forms the schema refuses.
    notification_ids: list[Annotated[str, Field(pattern=UUID_PATTERN)]] | None = Field(default=None, max_length=1000)


@router.post(
    "/follows",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    tags=["follows"],
    summary="Follow an author (the user comes from the token)",
)
async def follow(body: FollowBody, user: CurrentUser, publisher: Publisher) -> Accepted:
    out = publisher.outgoing(FollowRequested(user_id=user.user_id, author_id=body.author_id))
    await publisher.publish([out])
    return Accepted(command="FollowRequested", event_id=str(out.envelope.event_id))


@router.delete(
    "/follows/{author_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    tags=["follows"],
    summary="Unfollow an author (a no-op if not followed)",
)
async def unfollow(author_id: AuthorId, user: CurrentUser, publisher: Publisher) -> Accepted:
    out = publisher.outgoing(UnfollowRequested(user_id=user.user_id, author_id=author_id))
    await publisher.publish([out])
    return Accepted(command="UnfollowRequested", event_id=str(out.envelope.event_id))


@router.get(
    "/authors/{author_id}/followers",
    response_model=FollowersPage,
    tags=["follows"],
    summary="Followers of an author, by user id, paged",
    responses=problem_responses(404),
)
async def followers(
    author_id: AuthorId,
    store: Store,
    settings: Settings,
    cursor: Annotated[str | None, Query(pattern=ID_PATTERN, description="next_cursor of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> FollowersPage:
    count = await store.follower_count(author_id)
    if count is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown author {author_id}")
    size = limit or settings.page_limit
    found = await store.followers(author_id, cursor, size + 1)
    page = found[:size]
    return FollowersPage(
        author_id=author_id,
        follower_count=count,
        followers=[Follower(user_id=u, followed_at=at) for u, at in page],
        next_cursor=page[-1][0] if len(found) > size else None,
    )


@router.get("/users/{user_id}/following", response_model=Following, tags=["follows"], summary="Authors a user follows")
async def following(user_id: UserId, store: Store) -> Following:
    return Following(
        user_id=user_id,
        following=[Followed(author_id=a, followed_at=at) for a, at in await store.following(user_id)],
    )


def _only_self(user_id: str, user: Principal) -> None:
    if user.user_id != user_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only the user themself can read or change their notifications")


# A notifications cursor is a keyset: "<created_at in ms since the epoch>.<id>" of the last
# notification shown. Any cursor of this shape is a place in the inbox (one past the end
# gives an empty page), so no well-formed cursor is refused.
NOTIFICATIONS_CURSOR = r"^[0-9]{1,14}\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode_cursor(doc: dict[str, Any]) -> str:
    created_at: datetime = doc["created_at"]
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return f"{(created_at - _EPOCH) // timedelta(milliseconds=1)}.{doc['_id']}"


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    ms, notification_id = cursor.split(".", 1)
    return _EPOCH + timedelta(milliseconds=int(ms)), notification_id


@router.get(
    "/users/{user_id}/notifications",
    response_model=NotificationsPage,
    tags=["notifications"],
    summary="The user's own notifications, newest first",
    responses=problem_responses(403),
)
async def notifications(
    user_id: UserId,
    user: CurrentUser,
    store: Store,
    settings: Settings,
    cursor: Annotated[
        str | None, Query(pattern=NOTIFICATIONS_CURSOR, description="next_cursor of the previous page")
    ] = None,
    unread: Annotated[bool, Query(description="only unread ones")] = False,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> NotificationsPage:
    _only_self(user_id, user)
    size = limit or settings.page_limit
    docs = await store.notifications(
        user_id, unread_only=unread, before=_decode_cursor(cursor) if cursor else None, limit=size + 1
    )
    page = docs[:size]
    return NotificationsPage(
        user_id=user_id,
        notifications=[
            Notification(
                notification_id=d["_id"],
                author_id=d["author_id"],
                kind=d["kind"],
                title=d["title"],
                source_event_id=d["source_event_id"],
                created_at=d["created_at"],
                read=d["read"],
            )
            for d in page
        ],
        next_cursor=_encode_cursor(page[-1]) if len(docs) > size else None,
    )


@router.post(
    "/users/{user_id}/notifications/read",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    tags=["notifications"],
    summary="Mark the given notifications (or all) read",
    responses=problem_responses(403),
)
async def mark_read(
    user_id: UserId,
    user: CurrentUser,
    publisher: Publisher,
    body: Annotated[MarkRead | None, Body()] = None,
) -> Accepted:
    """Published on the user's partition of notifications.events (after every notification
    it can cover) and applied by the inbox consumer, so a rebuild of the inbox keeps it."""
    _only_self(user_id, user)
    ids = None if body is None or body.notification_ids is None else [uuid.UUID(i) for i in body.notification_ids]
    out = publisher.outgoing(NotificationsRead(user_id=user_id, notification_ids=ids))
    await publisher.publish([out])
    return Accepted(command="NotificationsRead", event_id=str(out.envelope.event_id))
