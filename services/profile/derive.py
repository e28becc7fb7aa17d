"""What the profile service derives from an author's works: pure, no broker, no driver.

An author record keeps one compact *entry* per work it appears on (year, topics,
co-authors, whether the work has an external id, and a fingerprint of the work's
content). Everything the page and the events show about the author's works (counts,
works by year, topics, close collaborators, record verification level) is derived from
those entries, so a redelivered or corrected work changes the entry and the derived
state follows, never a delta.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from typing import Any

from contracts.events.publications import Work

# {"id", "y", "h", "x", "t": [topics], "co": [{"id": author_id, "n": name}, ...]}; no nested
# arrays: FerretDB does not store them.
WorkEntry = dict[str, Any]


def fold_name(text: str) -> str:
    """Case- and accent-insensitive form of a name: "Françoise Beaufays" -> "francoise beaufays"."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return " ".join(re.sub(r"[^0-9a-z]+", " ", bare).split())


def name_keys(display_name: str) -> list[str]:
    """Every word-start suffix of the folded name, so a prefix search finds "Quoc V. Le"
    by "quoc", "le" or "v le"."""
    words = fold_name(display_name).split()
    return [" ".join(words[i:]) for i in range(len(words))]


def work_fingerprint(work: Work) -> str:
    """Hash of everything a work says: equal fingerprints mean a re-ingest changes nothing."""
    canonical = json.dumps(work.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def distinct_topics(topics: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for topic in topics:
        label = " ".join(topic.split())
        if label and label.casefold() not in seen:
            seen[label.casefold()] = label
    return list(seen.values())


def work_entry(work: Work, author_id: str, fingerprint: str) -> WorkEntry:
    ids = work.external_ids
    return {
        "id": work.work_id,
        "y": work.year,
        "h": fingerprint,
        "x": bool(ids.doi or ids.arxiv_id),
        "t": distinct_topics(work.topics),
        "co": [{"id": a.author_id, "n": a.display_name} for a in work.authors if a.author_id != author_id],
    }


def record_verification_level(orcid: str | None, entries: list[WorkEntry]) -> str:
    """L1 when the record is linked to a public scholarly index (an ORCID iD, or a work
    with a DOI or arXiv id); L0 for a bare record. L2/L3 come from the claims service."""
    return "L1" if orcid or any(e["x"] for e in entries) else "L0"


def derive_state(identity: dict[str, Any], entries: list[WorkEntry], revision: int, min_shared_works: int) -> dict[str, Any]:
    """The author's full current state (the fields of contracts' ``AuthorState``)."""
    by_year = Counter(str(e["y"]) for e in entries)
    topic_counts = Counter(topic for e in entries for topic in e["t"])
    shared = Counter(co["id"] for e in entries for co in e["co"])
    names = {co["id"]: co["n"] for e in entries for co in e["co"]}
    close = [(co_id, n) for co_id, n in shared.items() if n >= min_shared_works]
    return {
        "author_id": identity["author_id"],
        "display_name": identity["display_name"],
        "description": identity.get("description"),
        "affiliation": identity.get("affiliation"),
        "orcid": identity.get("orcid"),
        "open_to_collaborate": bool(identity.get("open_to_collaborate", False)),
        "works_count": len(entries),
        "works_by_year": dict(sorted(by_year.items(), reverse=True)),
        "topics": [{"name": t, "count": n} for t, n in sorted(topic_counts.items(), key=lambda tn: (-tn[1], tn[0]))],
        "close_collaborators": [
            {"author_id": co_id, "display_name": names[co_id], "shared_works": n}
            for co_id, n in sorted(close, key=lambda cn: (-cn[1], names[cn[0]]))
        ],
        "record_verification_level": record_verification_level(identity.get("orcid"), entries),
        "revision": revision,
    }


def newest_first(entries: list[WorkEntry]) -> list[WorkEntry]:
    """The page's order: year descending, then work id (a total order, so cursors are stable)."""
    return sorted(entries, key=lambda e: (-e["y"], e["id"]))
