"""The envelope, the registry's decoding, value types, and committed-schema compatibility."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from contracts import TOPICS, DecodeError, Envelope, decode, deterministic_event_id
from contracts.events.common import orcid_checksum_ok
from contracts.events.publications import AuthorImported, Work, WorkAuthor, WorkIngested
from contracts.schemas_io import committed_schemas, current_schemas, incompatibilities
from contracts.topics import Topic


def test_envelope_wraps_payload_with_causation_and_utc_time() -> None:
    cause = Envelope.wrap(AuthorImported(author_id="a1", display_name="A", source="t"), producer="importer")
    effect = Envelope.wrap(
        AuthorImported(author_id="a1", display_name="B", source="t"), producer="profile", cause=cause
    )
    assert effect.causation_id == cause.event_id and effect.correlation_id == cause.correlation_id
    assert cause.correlation_id == str(cause.event_id)
    assert effect.occurred_at.tzinfo is not None and effect.occurred_at.utcoffset() == timedelta(0)
    local = Envelope.model_validate(
        {**json.loads(effect.to_bytes()), "occurred_at": datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))}
    )
    assert local.occurred_at == datetime(2024, 1, 1, 10, tzinfo=UTC)


def test_envelope_rejects_naive_time() -> None:
    env = json.loads(
        Envelope.wrap(AuthorImported(author_id="a1", display_name="A", source="t"), producer="p").to_bytes()
    )
    env["occurred_at"] = "2024-01-01T10:00:00"
    with pytest.raises(ValidationError):
        Envelope.model_validate(env)


def test_deterministic_event_ids_repeat_for_the_same_cause() -> None:
    cause = uuid.uuid4()
    assert deterministic_event_id(cause, "WorkAdded", "a1") == deterministic_event_id(cause, "WorkAdded", "a1")
    assert deterministic_event_id(cause, "WorkAdded", "a1") != deterministic_event_id(cause, "WorkAdded", "a2")


def test_decode_roundtrip_and_reasons() -> None:
    env = Envelope.wrap(AuthorImported(author_id="a1", display_name="A", source="t"), producer="p")
    envelope, payload = decode(Topic.PUBLICATIONS_INGESTED, env.to_bytes())
    assert isinstance(payload, AuthorImported) and envelope == env
    with pytest.raises(DecodeError, match="not JSON"):
        decode(Topic.PUBLICATIONS_INGESTED, b"{")
    with pytest.raises(DecodeError, match=r"unknown event type 'AuthorImported' on topic 'claims\.events'"):
        decode(Topic.CLAIMS_EVENTS, env.to_bytes())
    newer = env.model_copy(update={"schema_version": 2})
    with pytest.raises(DecodeError, match="newer than this consumer understands"):
        decode(Topic.PUBLICATIONS_INGESTED, newer.to_bytes())


@pytest.mark.parametrize(
    "orcid,ok",
    [
        ("0000-0002-1825-0097", True),
        ("0000-0001-5109-3700", True),
        ("0000-0002-1694-233X", True),
        ("0000-0002-1825-0098", False),
        ("0000-0002-1694-2339", False),
    ],
)
def test_orcid_check_digit(orcid: str, ok: bool) -> None:
    assert orcid_checksum_ok(orcid) is ok


def _work(**changes) -> dict:
    base = dict(
        work_id="w1", type="preprint", year=2023, title="T", authors=[WorkAuthor(author_id="a1", display_name="A")]
    )
    base.update(changes)
    return base


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"authors": []}, "at least 1"),
        ({"year": 1599}, "greater than or equal to 1600"),
        ({"year": 2101}, "less than or equal to 2100"),
        ({"year": "2023"}, "must be an integer"),  # what JSON Schema calls no integer is refused
        ({"year": 2023.5}, "valid integer"),
        ({"title": " \t "}, "at least 1 character"),  # blank: stripped, then too short
        ({"title": "x" * 501}, "at most 500"),
        ({"work_id": "has space"}, "pattern"),
    ],
)
def test_work_rejects_bad_input(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Work(**_work(**changes))


def test_work_ingested_key_must_be_an_author() -> None:
    with pytest.raises(ValidationError, match="one of the work's authors"):
        WorkIngested(author_id="someone-else", work=Work(**_work()), source="t")


def test_every_topic_has_explicit_partitions_and_a_dead_letter_topic() -> None:
    for topic in Topic:
        assert TOPICS[topic].partitions >= 1
        assert f"{topic}.dlq" in TOPICS


# --- committed JSON Schemas ---------------------------------------------------------


def test_committed_schemas_are_up_to_date_and_compatible() -> None:
    committed, current = committed_schemas(), current_schemas()
    missing = sorted(set(current) - set(committed))
    assert not missing, f"schemas not exported (run `make schemas` and commit): {missing}"
    removed = sorted(set(committed) - set(current))
    assert not removed, f"published schemas removed (bump schema_version instead): {removed}"
    problems = {name: incompatibilities(committed[name], current[name]) for name in committed}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, f"backward-incompatible changes: {problems}"
    stale = sorted(n for n in committed if committed[n] != current[n])
    assert not stale, f"compatible changes not exported (run `make schemas` and commit): {stale}"


SCHEMA = {
    "type": "object",
    "properties": {
        "author_id": {"type": "string"},
        "count": {"type": "integer"},
        "band": {"enum": ["Emerging", "Established"], "type": "string"},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
    },
    "required": ["author_id", "count"],
    "$defs": {"Tag": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
}


def _changed(fn) -> dict:
    s = copy.deepcopy(SCHEMA)
    fn(s)
    return s


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda s: s["properties"].pop("count"), "count: field removed"),
        (lambda s: s["properties"].__setitem__("count", {"type": "string"}), "count: type changed"),
        (
            lambda s: (s["properties"].__setitem__("extra", {"type": "string"}), s["required"].append("extra")),
            "extra: new required field",
        ),
        (lambda s: s["properties"]["band"].__setitem__("enum", ["Emerging"]), "band: enum values removed"),
        (
            lambda s: s["$defs"]["Tag"]["properties"].__setitem__("name", {"type": "integer"}),
            "tags[].name: type changed",
        ),
        (lambda s: s["properties"].__setitem__("note", {"type": "string"}), "note: type changed"),
    ],
)
def test_incompatible_changes_are_caught(mutate, expected: str) -> None:
    problems = incompatibilities(SCHEMA, _changed(mutate))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s["properties"].__setitem__("optional_new", {"type": "string"}),
        lambda s: s["properties"]["band"].__setitem__("enum", ["Emerging", "Established", "Trusted"]),
        lambda s: s["properties"].__setitem__("count", {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    ],
)
def test_compatible_changes_pass(mutate) -> None:
    assert incompatibilities(SCHEMA, _changed(mutate)) == []


def test_a_work_year_is_an_integer_as_json_schema_means_it() -> None:
    assert Work(**_work(year=2023.0)).year == 2023


def test_a_work_takes_an_author_listed_twice_once_where_first_listed() -> None:
    twice = [WorkAuthor(author_id="a1", display_name="A"), WorkAuthor(author_id="a1", display_name="A. Again")]
    work = Work(**_work(authors=[*twice, WorkAuthor(author_id="b2", display_name="B")]))
    assert [(a.author_id, a.display_name) for a in work.authors] == [("a1", "A"), ("b2", "B")]
