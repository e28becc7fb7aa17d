"""Rebuilding the profile projection from the log (``bzpeer replay profile``): folds only,
no decision taken again.

* ``authors``: each author's state, identity and revision are those of the newest event
  the live service published for it on ``profile.events`` (``PublishedStates``, the only
  writer that creates author documents); whether its identity came from an importer
  (``imported``) is a fold of the ``AuthorImported`` on ``publications.ingested``
  (``IngestedFacts``), set by the drain hook.
* ``works``: the importers' fact, a fold of ``publications.ingested``: the last version
  of each work in partition order (``IngestedFacts``).
* an author's work entries, first page and research graph (co-authors, institutions) are
  pure functions of the works it appears on:
  derived once every input is consumed (``derive_works_of_authors``, a drain hook), and
  checked against the state the author's last event published.
* ``standing``: the same fold as live (``handlers.RecordStanding``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.events import profile as ev
from contracts.events.common import is_newer
from contracts.events.publications import AuthorImported, WorkIngested
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.logging import get_logger
from services.profile.derive import Tally, WorkEntry, newest_first, work_entry
from services.profile.ingest import IDENTITY_FIELDS, FirstPage, NewWork
from services.profile.page import cut_first_page
from services.profile.settings import ProfileSettings
from services.profile.store import ProfileStore

log = get_logger(__name__)

AuthorEvent = ev.AuthorRegistered | ev.AuthorUpdated | ev.WorkAdded | ev.WorkUpdated


def _state(payload: AuthorEvent, item: Incoming[AuthorEvent]) -> ev.AuthorState:
    return payload.author


STATES = (
    Dispatch[ev.AuthorState]()
    .on(ev.AuthorRegistered, handler=_state)
    .on(ev.AuthorUpdated, handler=_state)
    .on(ev.WorkAdded, handler=_state)
    .on(ev.WorkUpdated, handler=_state)
)


class PublishedStates:
    """Rebuild only: ``profile.events`` -> each author's state, identity and revision, from
    the newest event published for it (whatever order the partitions are read in)."""

    accepts = STATES.types

    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    async def __call__(self, batch: Sequence[Incoming[Any]]) -> None:
        newest: dict[str, ev.AuthorState] = {}
        for item in batch:
            state = STATES(item)
            held = newest.get(state.author_id)
            if is_newer(state.revision, held.revision if held else None):
                newest[state.author_id] = state
        await self.store.fold_states(newest.values())


def _work(payload: WorkIngested, item: Incoming[WorkIngested]) -> NewWork | str:
    return NewWork.of(payload.work)


def _imported(payload: AuthorImported, item: Incoming[AuthorImported]) -> NewWork | str:
    return payload.author_id


FACTS = Dispatch[NewWork | str]().on(WorkIngested, handler=_work).on(AuthorImported, handler=_imported)


class IngestedFacts:
    """Rebuild only: ``publications.ingested`` -> ``works`` (the last version of each work,
    in partition order) and which authors an importer described (``imported``)."""

    accepts = FACTS.types

    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    async def __call__(self, batch: Sequence[Incoming[Any]]) -> None:
        works: dict[str, NewWork] = {}
        imported: set[str] = set()
        for item in batch:
            fact = FACTS(item)
            if isinstance(fact, NewWork):
                works[fact.work.work_id] = fact  # a later offset of the partition wins
            else:
                imported.add(fact)
        await self.store.fold_works(works.values())
        await self.store.fold_imported(imported)


def works_of_authors(
    author_ids: Sequence[str], works: Sequence[NewWork], page_limit: int
) -> dict[str, tuple[list[WorkEntry], FirstPage]]:
    """Each author's entries (newest first) and first page, from the works it appears on."""
    entries: dict[str, list[WorkEntry]] = {a: [] for a in author_ids}
    contents: dict[str, dict[str, Any]] = {}
    for w in works:
        contents[w.work.work_id] = w.work.model_dump(mode="json")
        for author_id in w.author_ids:
            if author_id in entries:
                entries[author_id].append(work_entry(w.work, author_id, w.fingerprint))
    out = {}
    for author_id, listed in entries.items():
        page = cut_first_page(listed, page_limit, contents)
        assert isinstance(page, FirstPage), "every work listed is known"
        out[author_id] = (newest_first(listed), page)
    return out


async def derive_works_of_authors(store: ProfileStore, settings: ProfileSettings, chunk: int = 500) -> None:
    """Drain hook: every author's entries and first page from the folded works, checked
    against the state its newest event published (a difference means the rebuild holds
    another version of a work than live did: see the README's list)."""
    last: str | None = None
    differing: list[str] = []
    while authors := await store.states_after(last, chunk):
        last = authors[-1][0]
        ids = [a for a, _ in authors]
        derived = works_of_authors(ids, await store.works_of(ids), settings.page_works)
        imported = await store.imported_in(ids)
        graphs = {}
        for author_id, state in authors:
            entries = derived[author_id][0]
            tally = Tally(entries, settings.close_collaborator_min_shared_works)
            graphs[author_id] = tally.graph()
            if state is None:
                continue
            identity = {k: state.get(k) for k in IDENTITY_FIELDS} | {"author_id": author_id}
            recount = tally.state(identity, state["revision"])
            if ev.AuthorState.model_validate(recount).model_dump(mode="json") != state:
                differing.append(author_id)
        await store.set_works_of({a: (*derived[a], graphs[a]) for a in ids}, imported)
    await store.forget_imported()
    if differing:
        log.warning("rebuilt_works_differ_from_published_state", authors=len(differing), first=differing[:10])
