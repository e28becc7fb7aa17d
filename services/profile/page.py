"""The profile page's JSON, assembled from the stored author, standing and works: pure.

The page's first works are cut at ingestion and kept in the author document
(``first_page``), so a page is one author read and one standing read; a page cut for
another page size (or an author written before) is assembled from the works collection.

Before the trust service has scored an author, ``trust_snapshot.score`` and ``band`` are
null (the page shows "not scored yet"), never a made-up number; ``verification_level``
is always known (the claim-derived level while claimed, else the record's L0/L1).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from service_runtime import compact
from services.profile.derive import WorkEntry, newest_first
from services.profile.standing import effective_verification_level


class BadCursor(ValueError):
    pass


def encode_cursor(entry: WorkEntry) -> str:
    """Opaque keyset cursor: the (year, work id) of the last work shown. New works never
    shift a later page, since the next page starts strictly after that key."""
    return base64.urlsafe_b64encode(json.dumps([entry["y"], entry["id"]]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        year, work_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(year, int) and isinstance(work_id, str):
            return year, work_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        pass
    raise BadCursor("cursor is malformed: pass back the next_cursor of a previous page")


def page_slice(entries: list[WorkEntry], cursor: str | None, limit: int) -> tuple[list[WorkEntry], str | None]:
    ordered = newest_first(entries)
    if cursor:
        year, work_id = decode_cursor(cursor)
        ordered = [e for e in ordered if (-e["y"], e["id"]) > (-year, work_id)]
    shown = ordered[:limit]
    return shown, encode_cursor(shown[-1]) if len(ordered) > limit else None


def pack_works(works: list[dict[str, Any]]) -> bytes:
    """The first page's works as stored: packed JSON. FerretDB's cost to read a document
    grows with its bytes, and abstracts make a real first page ~40 KB of JSON (the seed's);
    packed it is ~3x smaller, and inflating it costs ~0.1 ms."""
    return compact.pack(works)


def unpack_works(packed: bytes) -> str:
    """The JSON list ``pack_works`` stored, as text."""
    return compact.unpack_text(packed)


def first_page(
    entries: list[WorkEntry], limit: int, known: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]] | None, str | None, list[str]]:
    """The first ``limit`` works (whole, newest first) and the cursor to the rest, from the
    works whose content is ``known``; the ids missing from ``known`` are returned (and the
    page is None) so the caller can read them and ask again."""
    shown, cursor = page_slice(entries, None, limit)
    missing = [e["id"] for e in shown if e["id"] not in known]
    if missing:
        return None, cursor, missing
    return [known[e["id"]] for e in shown], cursor, []


def works_page(shown: list[WorkEntry], works: dict[str, dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    items = [works[e["id"]] for e in shown if e["id"] in works]
    return {"items": items, "next_cursor": next_cursor}


def trust_snapshot(state: dict[str, Any], standing: dict[str, Any] | None) -> dict[str, Any]:
    standing = standing or {}
    claim, trust = standing.get("claim"), standing.get("trust")
    return {
        "score": trust["score"] if trust else None,
        "band": trust["band"] if trust else None,
        "verification_level": effective_verification_level(state["record_verification_level"], claim),
        "claimed": bool(claim and claim.get("claimed")),
    }


def author_page_json(page: dict[str, Any], works_json: str, next_cursor: str | None) -> bytes:
    """The page (``author_page``) as JSON bytes with its first works (``works_json``, a JSON
    list, stored so) spliced in as they are: parsing and re-encoding 20 works was most of
    the page's CPU."""
    head = json.dumps(page, separators=(",", ":"), ensure_ascii=False)
    tail = f',"works":{{"items":{works_json},"next_cursor":{json.dumps(next_cursor)}}}}}'
    return (head[:-1] + tail).encode()


def author_page(doc: dict[str, Any], standing: dict[str, Any] | None) -> dict[str, Any]:
    """The page without its works (author_page_json adds them)."""
    state = doc["state"]
    snapshot = trust_snapshot(state, standing)
    followers = ((standing or {}).get("followers") or {}).get("count", 0)
    return {
        "author_id": doc["_id"],
        "display_name": state["display_name"],
        "description": state.get("description"),
        "affiliation": state.get("affiliation"),
        "orcid": state.get("orcid"),
        "open_to_collaborate": state.get("open_to_collaborate", False),
        "trust_snapshot": snapshot,
        "record_verification_level": state["record_verification_level"],
        "counts": {
            "works": state["works_count"],
            "followers": followers,
            "topics": len(state["topics"]),
            "close_collaborators": len(state["close_collaborators"]),
        },
        "topics": state["topics"],
        "close_collaborators": state["close_collaborators"],
        "works_by_year": state["works_by_year"],
        "direct_collaboration_unlocked": snapshot["claimed"],
        "revision": state["revision"],
    }
