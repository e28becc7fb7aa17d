"""The bare baseline for profile page reads: the same two reads by ``_id`` the profile
service makes for a page (the author's state and stored first page, and its standing),
what they return encoded by orjson and sent back, on the same uvicorn (uvloop +
httptools), without FastAPI, a response model or page assembly. Run by bench_profile.py:

    python bench/bare_page_server.py PORT DATABASE
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn
from pymongo import AsyncMongoClient

PORT, DATABASE = int(sys.argv[1]), sys.argv[2]
db = AsyncMongoClient[dict[str, Any]](os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017"))[DATABASE]

Scope = MutableMapping[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Send) -> None:
    if scope["type"] != "http":
        return
    author_id = scope["path"].rsplit("/", 1)[-1]
    doc, standing = await asyncio.gather(
        db.authors.find_one({"_id": author_id}, {"state": 1, "first_page": 1}),
        db.standing.find_one({"_id": author_id}),
    )
    body = orjson.dumps({**doc, "standing": standing}) if doc else b"{}"
    await send(
        {
            "type": "http.response.start",
            "status": 200 if doc else 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
