"""What the profile service derives from an author's works: pure, no broker, no driver.

An author record keeps one *entry* per work it appears on (year, topics, co-authors,
whether the work has an external id, and a fingerprint of the work's content).
Everything the page and the events show about the author's works (counts, works by year,
topics, close collaborators, record verification level) is derived from those entries,
so a redelivered or corrected work changes the entry and the derived state follows,
never a delta.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from typing import Any

from contracts.events.publications import Work

# {"work_id", "year", "fingerprint", "has_external_id", "topics": [...],
#  "co_authors": [{"author_id", "display_name"}, ...],
#  "institutions": [{"institution_id", "display_name"}, ...]}   # only when the authorship names some
# stored as it is (a plain subdocument).
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
    entry: WorkEntry = {
        "work_id": work.work_id,
        "year": work.year,
        "fingerprint": fingerprint,
        "has_external_id": bool(ids.doi or ids.arxiv_id),
        "topics": distinct_topics(work.topics),
        "co_authors": [
            {"author_id": a.author_id, "display_name": a.display_name} for a in work.authors if a.author_id != author_id
        ],
    }
    # The author's own institutions on this work; absent when there are none, so entries of
    # works ingested before institutions existed stay equal (no spurious WorkUpdated).
    own = [i for a in work.authors if a.author_id == author_id for i in a.institutions]
    if own:
        entry["institutions"] = [{"institution_id": i.institution_id, "display_name": i.display_name} for i in own]
    return entry


def work_summary(work: Work) -> dict[str, Any]:
    """What a ``WorkAdded``/``WorkUpdated`` says of the work (contracts' ``WorkSummary``)."""
    return {
        "work_id": work.work_id,
        "type": work.type,
        "year": work.year,
        "title": work.title,
        "venue": work.venue,
        "external_ids": work.external_ids.model_dump(mode="json"),
    }


def record_verification_level(orcid: str | None, works_with_external_id: int) -> str:
    """L1 when the record is linked to a public scholarly index (an ORCID iD, or a work
    with a DOI or arXiv id); L0 for a bare record. L2/L3 come from the claims service."""
    return "L1" if orcid or works_with_external_id else "L0"


def derive_state(
    identity: dict[str, Any], entries: list[WorkEntry], revision: int, min_shared_works: int
) -> dict[str, Any]:
    """The author's full current state (the fields of contracts' ``AuthorState``)."""
    return Tally(entries, min_shared_works).state(identity, revision)


class Tally:
    """The counts an author's state is derived from, kept up to date entry by entry.

    The planner derives the state after every change of a batch (each event carries it);
    recounting all entries each time cost O(works) per change, O(works^2) for an author
    whose back catalogue arrives in one batch. Adding or removing an entry is O(its topics
    and co-authors); the state is then O(years, topics, close collaborators)."""

    def __init__(self, entries: list[WorkEntry], min_shared_works: int) -> None:
        self.min_shared = min_shared_works
        self.works = 0
        self.with_external_id = 0
        self.by_year: Counter[str] = Counter()
        self.topics: Counter[str] = Counter()
        self.shared: Counter[str] = Counter()
        self.close: set[str] = set()
        # Works per institution of the author's own authorships (the research graph's).
        self.institutions: Counter[str] = Counter()
        # Each co-author's and institution's fullest spelling (``fuller_name``): the same
        # whatever the order the works came in. A removal may take the fullest one away:
        # names are then recounted from ``entries`` (rare: a corrected or dropped work).
        self.names: dict[str, str] = {}
        self.institution_names: dict[str, str] = {}
        self._entries = entries
        self._names_stale = False
        for entry in entries:
            self.add(entry)

    def copy(self, entries: list[WorkEntry]) -> Tally:
        """The same counts, for a copy of the entries they were counted from."""
        other = Tally.__new__(Tally)
        other.min_shared, other.works, other.with_external_id = self.min_shared, self.works, self.with_external_id
        other.by_year, other.topics, other.shared = self.by_year.copy(), self.topics.copy(), self.shared.copy()
        other.close, other.names = set(self.close), dict(self.names)
        other.institutions, other.institution_names = self.institutions.copy(), dict(self.institution_names)
        other._entries, other._names_stale = entries, self._names_stale
        return other

    def add(self, entry: WorkEntry) -> None:
        self._count(entry, 1)
        self._name(entry)

    def _name(self, entry: WorkEntry) -> None:
        for co in entry["co_authors"]:
            held = self.names.get(co["author_id"])
            if held is None or fuller_name(co["display_name"], held):
                self.names[co["author_id"]] = co["display_name"]
        for inst in entry.get("institutions", ()):
            held = self.institution_names.get(inst["institution_id"])
            if held is None or fuller_name(inst["display_name"], held):
                self.institution_names[inst["institution_id"]] = inst["display_name"]

    def remove(self, entry: WorkEntry, entries: list[WorkEntry]) -> None:
        """``entry`` left the author; ``entries`` are the ones that remain (for the names)."""
        self._count(entry, -1)
        self._entries = entries
        self._names_stale = self._names_stale or bool(entry["co_authors"] or entry.get("institutions"))

    def _count(self, entry: WorkEntry, sign: int) -> None:
        self.works += sign
        self.with_external_id += sign * bool(entry["has_external_id"])
        self.by_year[str(entry["year"])] += sign
        for topic in entry["topics"]:
            self.topics[topic] += sign
        for co in entry["co_authors"]:
            co_id = co["author_id"]
            n = self.shared[co_id] = self.shared[co_id] + sign
            if n >= self.min_shared:
                self.close.add(co_id)
            else:
                self.close.discard(co_id)
        for inst in entry.get("institutions", ()):
            self.institutions[inst["institution_id"]] += sign

    def _fresh_names(self) -> None:
        if self._names_stale:
            self.names, self.institution_names = {}, {}
            for entry in self._entries:
                self._name(entry)
            self._names_stale = False

    def graph(self) -> dict[str, Any]:
        """The author's neighbourhood the research graph shows (stored with the author as
        ``graph``): every co-author with the works shared (close ones marked), most first,
        and every institution of the author's own authorships with its works."""
        self._fresh_names()
        names, shared, inst = self.names, self.shared, self.institutions
        return {
            "coauthors": [
                {
                    "author_id": co_id,
                    "display_name": names[co_id],
                    "shared_works": n,
                    "close": co_id in self.close,
                }
                for co_id, n in sorted(shared.items(), key=lambda cn: (-cn[1], names.get(cn[0], ""), cn[0]))
                if n > 0
            ],
            "institutions": [
                {"institution_id": i, "display_name": self.institution_names[i], "works": n}
                for i, n in sorted(
                    inst.items(), key=lambda i_n: (-i_n[1], self.institution_names.get(i_n[0], ""), i_n[0])
                )
                if n > 0
            ],
        }

    def state(self, identity: dict[str, Any], revision: int) -> dict[str, Any]:
        """The author's full current state (the fields of contracts' ``AuthorState``)."""
        self._fresh_names()
        names, shared = self.names, self.shared
        orcid = identity.get("orcid")
        return {
            "author_id": identity["author_id"],
            "display_name": identity["display_name"],
            "description": identity.get("description"),
            "affiliation": identity.get("affiliation"),
            "orcid": orcid,
            "open_to_collaborate": bool(identity.get("open_to_collaborate", False)),
            "set_by_owner": list(identity.get("set_by_owner") or ()),
            "works_count": self.works,
            "works_by_year": {y: n for y, n in sorted(self.by_year.items(), reverse=True) if n > 0},
            "topics": [
                {"name": t, "count": n} for t, n in sorted(self.topics.items(), key=lambda tn: (-tn[1], tn[0])) if n > 0
            ],
            "close_collaborators": [
                {"author_id": co_id, "display_name": names[co_id], "shared_works": shared[co_id]}
                for co_id in sorted(self.close, key=lambda c: (-shared[c], names[c], c))
            ],
            "record_verification_level": record_verification_level(orcid, self.with_external_id),
            "revision": revision,
        }


def fuller_name(candidate: str, held: str | None) -> bool:
    """Whether ``candidate`` is the fuller of two spellings of a name (longer; equal
    lengths: the alphabetically first), a total order so the result is the same in any order."""
    if held is None:
        return True
    return (len(candidate), _reverse(candidate)) > (len(held), _reverse(held))


def _reverse(name: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in name)


def newest_first(entries: list[WorkEntry]) -> list[WorkEntry]:
    """The page's order: year descending, then work id (a total order, so cursors are stable)."""
    return sorted(entries, key=page_key)


def page_key(entry: WorkEntry) -> tuple[int, str]:
    return -entry["year"], entry["work_id"]
