"""Where an import stopped, per author: the next page to fetch, in a small JSON file.

The file maps an OpenAlex author id to its progress. It is rewritten atomically (temp file
+ rename) after every published page, so a crash leaves either the old or the new state,
never half a file. One file serves one importer process at a time: two processes importing
into the same file could overwrite each other's entries (give them different paths).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

_VERSION = 1


@dataclass
class AuthorProgress:
    per_page: int  # pages are only meaningful with the page size they were counted in
    next_page: int = 1
    total: int | None = None  # meta.count when last seen
    published: int = 0  # works published by this import so far, over every run
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> works skipped
    author_published: bool = False
    completed: bool = False


class Checkpoint(Protocol):
    def load(self, author_key: str) -> AuthorProgress | None: ...

    def save(self, author_key: str, progress: AuthorProgress) -> None: ...


class JsonFileCheckpoint:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ValueError(f"{self.path} is not an importer state file (version {_VERSION})")
        return data.get("authors", {})

    def load(self, author_key: str) -> AuthorProgress | None:
        entry = self._read().get(author_key)
        return AuthorProgress(**entry) if entry else None

    def save(self, author_key: str, progress: AuthorProgress) -> None:
        authors = self._read()
        authors[author_key] = asdict(progress)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": _VERSION, "authors": authors}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class MemoryCheckpoint:
    """For callers that want no file (one-off imports, tests of the paging logic)."""

    def __init__(self) -> None:
        self.entries: dict[str, AuthorProgress] = {}

    def load(self, author_key: str) -> AuthorProgress | None:
        p = self.entries.get(author_key)
        return AuthorProgress(**asdict(p)) if p else None

    def save(self, author_key: str, progress: AuthorProgress) -> None:
        self.entries[author_key] = AuthorProgress(**asdict(progress))
