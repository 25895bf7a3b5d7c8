"""A JSONPatch builder that mutates a document and records the RFC 6902 ops as it goes.

Why not ``jsonpatch.make_patch(before, after)``: diffing is quadratic-ish in list
sizes and is what made Istio's injector take seconds on pods with thousands of env
vars. The injector knows exactly what it adds, so the ops are emitted alongside the
mutation: absent maps and lists are created (a map or list with the first item),
present ones get members added or items appended with ``/-``. Keys are escaped per
RFC 6901 (``~`` -> ``~0``, ``/`` -> ``~1``), which matters for annotation keys.

Values handed to the builder become part of both the document and the op; callers
build each value completely before handing it over and never mutate it afterwards.
"""

from __future__ import annotations

from webhook._types import Json, JsonObject, PatchOp, PatchOpName


def escape(token: str) -> str:
    """One JSON-pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


class PatchBuilder:
    """Mutates documents in place and records the equivalent JSONPatch in `ops`."""

    def __init__(self) -> None:
        self.ops: list[PatchOp] = []

    def set(self, parent: JsonObject, path: str, key: str, value: Json) -> None:
        """``parent[key] = value`` where `parent` lives at pointer `path`."""
        op: PatchOpName = "replace" if key in parent else "add"
        parent[key] = value
        self.ops.append({"op": op, "path": f"{path}/{escape(key)}", "value": value})

    def set_in_map(
        self, parent: JsonObject, path: str, map_key: str, key: str, value: Json
    ) -> None:
        """``parent[map_key][key] = value``, creating the map when absent (or null)."""
        current = parent.get(map_key)
        if isinstance(current, dict):
            self.set(current, f"{path}/{escape(map_key)}", key, value)
        else:
            self._create(parent, path, map_key, {key: value}, {key: value})

    def append(self, parent: JsonObject, path: str, key: str, value: Json) -> None:
        """``parent[key].append(value)``, creating the list when absent (or null)."""
        current = parent.get(key)
        if isinstance(current, list):
            current.append(value)
            self.ops.append({"op": "add", "path": f"{path}/{escape(key)}/-", "value": value})
        else:
            self._create(parent, path, key, [value], [value])

    def prepend(self, parent: JsonObject, path: str, key: str, value: Json) -> None:
        """``parent[key].insert(0, value)``, creating the list when absent (or null)."""
        current = parent.get(key)
        if isinstance(current, list):
            current.insert(0, value)
            self.ops.append({"op": "add", "path": f"{path}/{escape(key)}/0", "value": value})
        else:
            self._create(parent, path, key, [value], [value])

    def _create(self, parent: JsonObject, path: str, key: str, doc: Json, op: Json) -> None:
        """A new map or list: two distinct containers, so later additions to the
        document's one (recorded as their own ops) never leak into this op's value."""
        existed = key in parent
        parent[key] = doc
        self.ops.append(
            {"op": "replace" if existed else "add", "path": f"{path}/{escape(key)}", "value": op}
        )
