"""What every fault test asserts once the system has settled, each in one place:

* ``assert_projections_rebuild``: every service's projection equals a rebuild of it from
  the topics (``service_runtime.replay.rebuild`` + ``compare_databases``);
* ``assert_expected_state``: works counts, owners and follower counts the stream implies,
  read over HTTP from the services' own pages;
* ``assert_no_duplicate_notifications``: one inbox notification per follower and source
  fact (a work added, a claim approved, a trust revision), and the inbox and
  ``notifications.events`` hold the same notifications.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from bzpeer_cli.services import build
from contracts.topics import Topic
from service_runtime.replay import compare_databases, rebuild
from service_runtime.topic_reader import read_topic
from tests.mixed_stream import MixedStream
from tests.pipeline import Pipeline


async def assert_projections_rebuild(pipe: Pipeline) -> None:
    """Rebuild every service's projection from the topics into a database of its own and
    compare it with the live one, over what the service declares its projection to be
    (``Service.projection``: collections and the bookkeeping fields left out). Run after
    ``pipe.settle()`` with the services stopped (a rebuild publishes nothing)."""
    ns = pipe.ns

    async def one(name: str) -> list[str]:
        live = pipe.settings[name].model_copy(
            update={"mongodb_uri": ns.infra["mongodb"], "kafka_bootstrap_servers": ns.infra["kafka"]}
        )
        rebuilt = f"{live.database_name}_rebuilt"
        ns.databases.append(rebuilt)
        result = await rebuild(lambda s: build(name, s), live, database=rebuilt)
        problems = await compare_databases(
            ns.infra["mongodb"], live.database_name, rebuilt, result.projection, limit=10
        )
        return [
            f"{name}: {await _fields_that_differ(ns.infra['mongodb'], live.database_name, rebuilt, p, ignore)}"
            for p in problems
            for ignore in [result.projection.collections.get(p.partition("/")[0], frozenset())]
        ]

    problems = [p for ps in await asyncio.gather(*(one(n) for n in pipe.settings)) for p in ps]
    for p in [p for p in problems if p.startswith("claims: users/")][:2]:
        try:
            problems.append(await _claims_trail(pipe, p.split("/", 1)[1].split(":", 1)[0]))
        except Exception as exc:  # the trail only explains; it must not hide the failure
            problems.append(f"  no trail ({exc!r})")
    assert not problems, "projections differ from a rebuild from the topics:\n" + "\n".join(problems)[:8000]


async def _claims_trail(pipe: Pipeline, user: str) -> str:
    """A user's slots that differ: the user's claims as live holds them, and their events."""
    client: AsyncMongoClient = AsyncMongoClient(pipe.ns.infra["mongodb"])
    try:
        db = client[pipe.settings["claims"].database_name]
        claims = await db.claims.find({"user_id": user}, {"outbox": 0, "evidence": 0}).to_list(None)
    finally:
        await client.close()
    ids = {c["_id"] for c in claims}
    events = []
    for r in await read_topic(pipe.kafka, pipe.ns.topic(Topic.CLAIMS_EVENTS)):
        try:
            env = json.loads(r.value)
        except ValueError:
            continue
        if env["data"].get("claim_id") in ids:
            state = env["data"].get("claim") or {}
            events.append((r.partition, r.offset, env["event_type"], state.get("status"), state.get("revision")))
    shown = [
        (c["_id"], c["status"], c["revision"], [(h.get("event"), h.get("status")) for h in c.get("history", [])])
        for c in claims
    ]
    return f"  {user}: claims={shown} events={events}"


async def _fields_that_differ(uri: str, live_db: str, rebuilt_db: str, problem: str, ignore: frozenset[str]) -> str:
    """``compare_databases`` names a document and prints both whole; keep only the top-level
    fields that differ, so a failure says what a rebuild gets wrong."""
    collection, _, rest = problem.partition("/")
    _id = rest.split(": ", 1)[0]  # "<id>: live=... rebuilt=..." or "<id>: missing from ..."
    client: AsyncMongoClient = AsyncMongoClient(uri)
    try:
        a = await client[live_db][collection].find_one({"_id": _id}) or {}
        b = await client[rebuilt_db][collection].find_one({"_id": _id}) or {}
    finally:
        await client.close()
    if not a or not b:
        return f"{problem[:200]} (live={a or None!r} rebuilt={b or None!r})"[:600]
    fields = sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))

    def show(k: str) -> str:
        x, y = a.get(k), b.get(k)
        if isinstance(x, list) and isinstance(y, list) and sorted(map(repr, x)) == sorted(map(repr, y)):
            return f"{k}: the same {len(x)} items in another order"
        return f"{k}: live={x!r} rebuilt={y!r}"[:300]

    return f"{collection}/{_id}: " + "; ".join(show(k) for k in fields)


async def assert_expected_state(pipe: Pipeline, stream: MixedStream) -> None:
    """Every author's works count, owner and follower count as the stream says, and each
    author scored by trust, as the profile and claims services serve them."""
    expected = stream.expected
    wrong: list[str] = []
    async with httpx.AsyncClient(timeout=10.0) as http:
        profile, claims = pipe.procs["profile"].url, pipe.procs["claims"].url
        for author in sorted(expected.works):
            page = (await http.get(f"{profile}/authors/{author}")).json()
            counts = page.get("counts") or {}
            if counts.get("works") != expected.works[author]:
                wrong.append(f"{author}: works {counts.get('works')} != {expected.works[author]}")
            if counts.get("followers") != expected.followers.get(author, 0):
                wrong.append(f"{author}: followers {counts.get('followers')} != {expected.followers.get(author, 0)}")
            snapshot = page.get("trust_snapshot") or {}
            if snapshot.get("score") is None or snapshot.get("claimed") != (author in expected.owners):
                wrong.append(f"{author}: trust snapshot {snapshot}")
        for author, owner in sorted(expected.owners.items()):
            claim = (await http.get(f"{claims}/authors/{author}/claim")).json()
            if not claim.get("claimed") or claim.get("owner_user_id") != owner:
                wrong.append(f"{author}: claim {claim} (expected owner {owner})")
    if wrong:
        miscounted = [w.split(":")[0] for w in wrong if ": followers " in w]
        for author in miscounted[:3]:
            try:
                wrong.append(await _follow_trail(pipe, author))
            except Exception as exc:  # the trail only explains; it must not hide the failure
                wrong.append(f"  {author}: no trail ({exc!r})")
    assert not wrong, f"{len(wrong)} authors differ from what the stream implies:\n" + "\n".join(wrong[:30])


async def _records_of(pipe: Pipeline, topic: Topic, author: str) -> list[tuple[Any, Any, Any]]:
    """A topic's records about one author (poison records passed over): (record, envelope, data)."""
    out = []
    for r in await read_topic(pipe.kafka, pipe.ns.topic(topic)):
        try:
            env = json.loads(r.value)
        except ValueError:
            continue
        if isinstance(env, dict) and isinstance(env.get("data"), dict) and env["data"].get("author_id") == author:
            out.append((r, env, env["data"]))
    return out


async def _follow_trail(pipe: Pipeline, author: str) -> str:
    """Where a follower count went wrong: the follow service's author document and edges,
    its follows.events for the author and the profile's standing."""
    client: AsyncMongoClient = AsyncMongoClient(pipe.ns.infra["mongodb"])
    try:
        follow = client[pipe.settings["follow"].database_name]
        doc = await follow.authors.find_one({"_id": author}, {"outbox": 0})
        edges = await follow.edges.find({"author_id": author}, {"_id": 0, "author_id": 0}).to_list(None)
        standing = await client[pipe.settings["profile"].database_name].standing.find_one({"_id": author})
    finally:
        await client.close()
    events = [
        (r.offset, env["event_type"], d.get("user_id"), d.get("count"), d.get("revision"))
        for r, env, d in await _records_of(pipe, Topic.FOLLOWS_EVENTS, author)
    ]
    commands = [
        (r.offset, env["event_type"], d.get("user_id"))
        for r, env, d in await _records_of(pipe, Topic.WEBAPP_FOLLOWS, author)
    ]
    return f"  {author}: commands={commands} follow author={doc} edges={edges} events={events} standing={standing}"


async def _source_facts(pipe: Pipeline) -> dict[str, tuple[str, ...]]:
    """The fact each possible source event of a notification stands for, by event id."""
    facts: dict[str, tuple[str, ...]] = {}
    for topic in (Topic.PROFILE_EVENTS, Topic.CLAIMS_EVENTS, Topic.TRUST_EVENTS):
        for r in await read_topic(pipe.kafka, pipe.ns.topic(topic)):
            try:
                env = json.loads(r.value)
            except ValueError:
                continue  # a poison record (dead-lettered by its readers)
            data, kind = env["data"], env["event_type"]
            if kind == "WorkAdded":
                facts[env["event_id"]] = (kind, data["author_id"], data["work"]["work_id"])
            elif kind == "ClaimApproved":
                facts[env["event_id"]] = (kind, data["author_id"], data["claim_id"])
            elif kind == "TrustScoreChanged":
                facts[env["event_id"]] = (kind, data["author_id"], str(data["revision"]))
    return facts


async def assert_no_duplicate_notifications(pipe: Pipeline) -> int:
    """Returns the number of notifications."""
    client: AsyncMongoClient = AsyncMongoClient(pipe.ns.infra["mongodb"])
    try:
        inbox = (
            await client[pipe.settings["follow"].database_name]
            .inbox.find({}, {"user_id": 1, "source_event_id": 1, "kind": 1})
            .to_list(None)
        )
    finally:
        await client.close()
    facts = await _source_facts(pipe)
    unknown = [n for n in inbox if n["source_event_id"] not in facts]
    assert not unknown, f"notifications whose source event is not on the topics: {unknown[:5]}"
    per_fact = Counter((n["user_id"], facts[n["source_event_id"]]) for n in inbox)
    dup = {k: c for k, c in per_fact.items() if c > 1}
    assert not dup, f"{len(dup)} (user, source fact) pairs notified more than once: {list(dup.items())[:10]}"
    published = {
        env["data"]["notification_id"]
        for r in await read_topic(pipe.kafka, pipe.ns.topic(Topic.NOTIFICATIONS_EVENTS))
        for env in _decoded(r.value)
    }
    stored = {str(n["_id"]) for n in inbox}
    assert stored == published, (
        f"inbox and notifications.events differ: {len(stored - published)} only stored, "
        f"{len(published - stored)} only published"
    )
    return len(stored)


def _decoded(value: bytes | None) -> list[dict[str, Any]]:
    """The record's JSON envelope, or nothing for a poison record (dead-lettered by its readers)."""
    try:
        return [json.loads(value or b"")]
    except ValueError:
        return []


def dead_letter_bodies(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]
