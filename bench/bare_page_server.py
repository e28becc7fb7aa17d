"""The bare baseline for profile page reads: the same two reads by ``_id`` the profile
service makes for a page (the author's page source and its standing), the stored first
page inflated and sent back, on the same uvicorn (uvloop + httptools), without FastAPI,
validation or page assembly. Run by bench_profile.py:

    python bench/bare_page_server.py PORT DATABASE
"""

from __future__ import annotations

import asyncio
import os
import sys
import zlib

import uvicorn
from pymongo import AsyncMongoClient

PORT, DATABASE = int(sys.argv[1]), sys.argv[2]
db = AsyncMongoClient(os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017"))[DATABASE]


async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    author_id = scope["path"].rsplit("/", 1)[-1]
    doc, _standing = await asyncio.gather(
        db.authors.find_one({"_id": author_id}, {"state_json": 1, "page_works": 1, "page_limit": 1, "page_cursor": 1}),
        db.standing.find_one({"_id": author_id}),
    )
    body = zlib.decompress(doc["page_works"]) if doc else b"{}"
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
