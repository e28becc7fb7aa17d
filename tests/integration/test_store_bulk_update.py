"""FerretDB stalls on one update command of ~100 statements matching existing documents;
``bulk_update`` must get any number of them through, and report like bulk_write."""

from __future__ import annotations

import asyncio

import pytest
from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.errors import BulkWriteError

from service_runtime.store import bulk_update
from tests.conftest import Namespace


async def test_many_updates_of_existing_documents_complete(ns: Namespace) -> None:
    client = AsyncMongoClient(ns.infra["mongodb"])
    db_name = f"t{ns.id}_bulk"
    ns.databases.append(db_name)
    col = client[db_name].docs
    try:
        ops = [UpdateOne({"_id": f"d{i % 300}"}, {"$inc": {"n": 1}}, upsert=True) for i in range(900)]
        first = await asyncio.wait_for(bulk_update(col, ops[:300]), 60)
        assert first.upserted_count == 300
        rest = await asyncio.wait_for(bulk_update(col, ops[300:]), 60)  # 600 updates of existing documents
        assert rest.matched_count == 600 and rest.upserted_count == 0
        assert await col.count_documents({"n": 3}) == 300
        with pytest.raises(BulkWriteError) as failed:
            await bulk_update(
                col,
                [InsertOne({"_id": "d5"})]
                + [UpdateOne({"_id": "x"}, {"$set": {"a": 1}}, upsert=True)] * 40
                + [InsertOne({"_id": "d7"})],
            )
        assert [e["index"] for e in failed.value.details["writeErrors"]] == [0, 41]
    finally:
        await client.close()
