"""Values a projection stores as one JSON string or one compressed blob.

FerretDB reads and rewrites a document's flat strings much faster than the same data as
nested values, and its cost still grows with the bytes; the services encode and decode
those strings on every batch. orjson does both several times faster than the standard
library's json (same compact output: no spaces, UTF-8 unescaped)."""

from __future__ import annotations

import zlib
from typing import Any

import orjson


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


def pack(value: Any) -> bytes:
    """Compact JSON, zlib-compressed (level 1: ~3x smaller for our lists of entries and
    works, and cheap both ways)."""
    return zlib.compress(orjson.dumps(value), 1)


def unpack(blob: bytes) -> Any:
    return orjson.loads(zlib.decompress(blob))


def pack_texts(texts: list[str]) -> bytes:
    """JSON texts (each one value, already encoded) packed as one JSON array, without
    decoding and re-encoding them."""
    return zlib.compress(("[" + ",".join(texts) + "]").encode(), 1)


def unpack_texts(blob: bytes) -> list[str]:
    """The values ``pack_texts`` stored, each as compact JSON text again."""
    return [orjson.dumps(value).decode() for value in orjson.loads(zlib.decompress(blob))]


def unpack_text(blob: bytes) -> str:
    """The JSON text ``pack`` stored, undecoded (to splice into a response as it is)."""
    return zlib.decompress(blob).decode()
