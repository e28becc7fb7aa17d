"""Trust's queries other than by ``_id`` are served by the secondary indexes its store
adapter declares (the store's own plan says so): the sweep's dirty authors, the rescore's
authors behind the formula, a page of an author's history."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.trust.scoring import CURRENT
from services.trust.store import AUTHORS, HISTORY, TrustStore
from tests.conftest import Namespace
from tests.integration.test_store_guarantees import _index_names


@pytest.mark.parametrize(
    "collection, query, index",
    [
        (AUTHORS, {"filter": {"dirty": True, "due_at": {"$lte": 5}}}, "due_dirty"),
        (AUTHORS, {"filter": {"score.formula_version": {"$lt": CURRENT.version}}}, f"behind_v{CURRENT.version}"),
        (
            HISTORY,
            {"filter": {"author_id": "a7", "revision": {"$lt": 30}}, "sort": {"revision": -1}},
            "author_revision",
        ),
    ],
)
async def test_each_query_uses_its_index(ns: Namespace, collection: str, query: dict[str, Any], index: str) -> None:
    name = f"t{ns.id}_trust_indexes"
    ns.databases.append(name)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(ns.infra["mongodb"])
    try:
        db = client[name]
        await TrustStore(db).create_indexes()
        await db[HISTORY].insert_many(
            [{"_id": f"a{i % 300}#{i:010d}", "author_id": f"a{i % 300}", "revision": i} for i in range(6000)]
        )
        await db[AUTHORS].insert_many(
            [
                {"_id": f"a{i}", "dirty": i % 50 == 0, "due_at": i, "score": {"formula_version": CURRENT.version}}
                for i in range(6000)
            ]
        )
        plan = await db.command("explain", {"find": collection, "limit": 21, **query}, verbosity="queryPlanner")
    finally:
        await client.close()
    assert index in set(_index_names(plan)), plan
