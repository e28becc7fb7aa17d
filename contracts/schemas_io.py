"""Export the contracts' JSON Schemas and tell whether a change to one is backward compatible.

``python -m contracts.schemas_io`` rewrites ``contracts/schemas/``; the committed files are
the published contract, and ``tests/unit/test_contract_compat.py`` fails when the code
drifts from them incompatibly (a field removed or retyped, a new required field, an enum
value removed) or when they are out of date.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.envelope import Envelope
from contracts.registry import EVENT_TYPES

SCHEMA_DIR = Path(__file__).parent / "schemas"


def current_schemas() -> dict[str, dict[str, Any]]:
    out = {"Envelope.json": Envelope.model_json_schema()}
    for (topic, event_type), model in EVENT_TYPES.items():
        out[f"{topic}.{event_type}.v{model.schema_version}.json"] = model.model_json_schema()
    return out


def committed_schemas(directory: Path = SCHEMA_DIR) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for name, schema in current_schemas().items():
        (directory / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        names.append(name)
    return names


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root.get("$defs", {})[name]
    return schema


def _types(schema: dict[str, Any], root: dict[str, Any]) -> set[str]:
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        return set().union(*(_types(s, root) for s in schema["anyOf"]))
    if "const" in schema:
        return {type(schema["const"]).__name__}
    t = schema.get("type")
    if t is None:
        return {"any"}
    return set(t) if isinstance(t, list) else {t}


def _members(schema: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        return [m for s in schema["anyOf"] for m in _members(s, root)]
    return [schema]


def incompatibilities(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What a reader of ``old`` data, or a writer of it, would break on under ``new``."""
    problems: list[str] = []

    def walk(o: dict[str, Any], n: dict[str, Any], path: str) -> None:
        o_types, n_types = _types(o, old), _types(n, new)
        if "any" not in n_types and not o_types <= n_types:
            problems.append(f"{path or '(root)'}: type changed from {sorted(o_types)} to {sorted(n_types)}")
            return
        o_res, n_res = _resolve(o, old), _resolve(n, new)
        if "enum" in o_res and "enum" in n_res:
            removed = set(map(str, o_res["enum"])) - set(map(str, n_res["enum"]))
            if removed:
                problems.append(f"{path}: enum values removed {sorted(removed)}")
        o_objs = [m for m in _members(o, old) if m.get("type") == "object" and "properties" in m]
        n_objs = [m for m in _members(n, new) if m.get("type") == "object" and "properties" in m]
        if o_objs and n_objs:
            oo, nn = o_objs[0], n_objs[0]
            for prop, sub in oo["properties"].items():
                if prop not in nn["properties"]:
                    problems.append(f"{path}.{prop}".lstrip(".") + ": field removed")
                else:
                    walk(sub, nn["properties"][prop], f"{path}.{prop}".lstrip("."))
            for prop in set(nn.get("required", [])) - set(oo.get("required", [])):
                problems.append(f"{path}.{prop}".lstrip(".") + ": new required field")
        o_arr = [m for m in _members(o, old) if m.get("type") == "array" and "items" in m]
        n_arr = [m for m in _members(n, new) if m.get("type") == "array" and "items" in m]
        if o_arr and n_arr:
            walk(o_arr[0]["items"], n_arr[0]["items"], f"{path}[]")

    walk(old, new, "")
    return problems


if __name__ == "__main__":
    for written in write_schemas():
        print(written)
