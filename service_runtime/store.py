"""The MongoDB client (PyMongo's async API) and what counts as a transient store failure."""

from __future__ import annotations

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
)

TRANSIENT_STORE_ERRORS: tuple[type[BaseException], ...] = (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
)


def connect_store(uri: str) -> AsyncMongoClient:
    # Short server selection: a store outage surfaces quickly as a transient error and is
    # retried by the delivery loop rather than blocking a handler for 30 s.
    return AsyncMongoClient(uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000, tz_aware=True)


def database(client: AsyncMongoClient, name: str) -> AsyncDatabase:
    return client.get_database(name)


async def store_reachable(client: AsyncMongoClient) -> bool:
    try:
        await client.admin.command("ping")
        return True
    except TRANSIENT_STORE_ERRORS:
        return False
