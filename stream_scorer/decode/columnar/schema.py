"""Schema handling: Avro JSON → normalised type trees, and the resolution rules between them.

In: writer and reader schemas as Avro JSON. Out: a normalised tree (every type a dict, unions
lists, named references resolved to the same dict) from :func:`_parse_schema`, and the
predicates and tables the compilers (:mod:`.fallback`, :mod:`.planner`) resolve a writer type
against a reader type with: promotion, branch selection, enum symbol mapping, field matching by
name and alias, defaults, and the fewest bytes a value can occupy. A schema that is not valid
Avro is a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["check_finite"]

# Avro primitive type names.
_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
# Avro named complex types.
_NAMED: Final = frozenset({"record", "enum", "fixed"})
# Writer type -> reader type pairs the specification allows besides identity.
_PROMOTIONS: Final = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parse_schema(schema: Any) -> Any:
    """Normalise a schema: every type a dict (unions lists), named references resolved in place."""
    names: dict[str, dict[str, Any]] = {}

    def full_name(name: str, ns: str) -> str:
        return name if "." in name or not ns else f"{ns}.{name}"

    def parse(s: Any, ns: str) -> Any:  # noqa: PLR0912
        if isinstance(s, str):
            if s in _PRIMITIVES:
                return {"type": s}
            for cand in (full_name(s, ns), s):
                if cand in names:
                    return names[cand]
            msg = f"unknown Avro type {s!r}"
            raise ValueError(msg)
        if isinstance(s, list):
            return [parse(b, ns) for b in s]
        if not isinstance(s, Mapping) or "type" not in s:
            msg = f"invalid Avro schema: {s!r}"
            raise ValueError(msg)
        t = s["type"]
        if isinstance(t, (list, Mapping)) or (
            isinstance(t, str)
            and t not in _PRIMITIVES
            and t not in _NAMED | {"error", "array", "map"}
        ):
            return parse(t, ns)
        node: dict[str, Any] = dict(s)
        if t in _NAMED or t == "error":
            node["type"] = "record" if t == "error" else t
            full = full_name(str(s["name"]), str(s.get("namespace", ns) or ""))
            node["name"] = full
            names[full] = node
            inner_ns = full.rpartition(".")[0]
            if node["type"] == "record":
                node["fields"] = [
                    {**f, "type": parse(f["type"], inner_ns)} for f in s.get("fields", [])
                ]
            elif node["type"] == "fixed":
                size = s.get("size")
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    msg = f"fixed {full} has no valid size"
                    raise ValueError(msg)
                node["size"] = size
        elif t == "array":
            node["items"] = parse(s["items"], ns)
        elif t == "map":
            node["values"] = parse(s["values"], ns)
        return node

    return parse(schema, "")


def _kind(s: Any) -> str:
    return "union" if isinstance(s, list) else str(s["type"])


def _names_match(w: Mapping[str, Any], r: Mapping[str, Any]) -> bool:
    aliases = {_short(a) for a in r.get("aliases", [])}
    return _short(w["name"]) == _short(r["name"]) or _short(w["name"]) in aliases


def _compatible(w: Any, r: Any) -> bool:
    """Whether some value of writer type ``w`` can be read as reader type ``r``."""
    if isinstance(w, list):
        return any(_compatible(b, r) for b in w)
    if isinstance(r, list):
        return _select_branch(w, r) is not None
    return _matches(w, r)


def _matches(w: Mapping[str, Any], r: Mapping[str, Any]) -> bool:
    wk, rk = w["type"], r["type"]
    if wk == rk:
        if wk in _NAMED:
            return _names_match(w, r) and (wk != "fixed" or w["size"] == r["size"])
        if wk == "array":
            return _compatible(w["items"], r["items"])
        if wk == "map":
            return _compatible(w["values"], r["values"])
        return True
    return (wk, rk) in _PROMOTIONS


def _select_branch(w: Mapping[str, Any], r: list[Any]) -> Any | None:
    """The reader union branch a non-union writer type resolves to (exact first, then promoted)."""
    for rb in r:
        if not isinstance(rb, list) and rb["type"] == w["type"] and _matches(w, rb):
            return rb
    for rb in r:
        if not isinstance(rb, list) and _matches(w, rb):
            return rb
    return None


def _min_size(s: Any, stack: frozenset[int] = frozenset()) -> int:
    """Fewest bytes one value of writer type ``s`` occupies."""
    if isinstance(s, list):
        return 1
    k = s["type"]
    if k == "null":
        return 0
    if k == "float":
        return 4
    if k == "double":
        return 8
    if k == "fixed":
        return int(s["size"])
    if k == "record":
        if id(s) in stack:
            # Reached itself through record fields alone (no union, array or map between):
            # no value is finite, and reading one would recurse for ever.
            msg = f"record {s['name']} contains itself with no union, array or map between"
            raise ValueError(msg)
        inner = stack | {id(s)}
        return sum(_min_size(f["type"], inner) for f in s["fields"])
    return 1


def _json_default(r: Any, d: Any) -> Any:
    """Convert a JSON default to the raw Python value this module produces for reader type ``r``."""
    if isinstance(r, list):
        return _json_default(r[0], d)
    k = r["type"]
    if k in ("bytes", "fixed"):
        return str(d).encode("latin-1")
    if k in ("float", "double"):
        return float(d)
    if k == "array":
        return [_json_default(r["items"], x) for x in d]
    if k == "map":
        return {key: _json_default(r["values"], v) for key, v in d.items()}
    if k == "record":
        out = {}
        for f in r["fields"]:
            if f["name"] in d:
                out[f["name"]] = _json_default(f["type"], d[f["name"]])
            elif "default" in f:
                out[f["name"]] = _json_default(f["type"], f["default"])
            else:
                msg = f"record default lacks field {f['name']!r}"
                raise ValueError(msg)
        return out
    return d


def _reader_field_map(r: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for f in r["fields"]:
        out.setdefault(f["name"], f)
    for f in r["fields"]:
        for alias in f.get("aliases", []):
            out.setdefault(alias, f)
    return out


def _enum_table(w: Mapping[str, Any], r: Mapping[str, Any]) -> NDArray[np.int64]:
    """Writer symbol index -> reader symbol index (-1: unknown to the reader, no default)."""
    # A dict, not list.index: linear in the symbols, not quadratic.
    position = {s: i for i, s in reversed(list(enumerate(r["symbols"])))}
    default = r.get("default")
    fallback = position.get(default, -1) if isinstance(default, str) else -1
    return np.array([position.get(s, fallback) for s in w["symbols"]], dtype=np.int64)


def _describe(s: Any) -> str:
    return str(s.get("name", s["type"])) if isinstance(s, Mapping) else "union"


def _reader_paths(r: Mapping[str, Any], prefix: str, stack: frozenset[int]) -> set[str]:
    out: set[str] = set()
    for f in r["fields"]:
        path = _join(prefix, f["name"])
        out.add(path)
        t = f["type"]
        if isinstance(t, list):
            non_null = [b for b in t if _kind(b) != "null"]
            t = non_null[0] if len(non_null) == 1 else None
        if (
            t is not None
            and not isinstance(t, list)
            and t["type"] == "record"
            and id(t) not in stack
        ):
            out |= _reader_paths(t, path, stack | {id(r)})
    return out


def check_finite(schema: Any) -> None:
    """Check that every record of a schema has finite values.

    A record that contains itself through record fields alone (no union, array or map on the
    way) has no finite value; fastavro recurses in C reading one until the process dies
    (a segmentation fault, not an exception), so such a writer must never reach it.

    Raises:
        ValueError: The schema is not valid Avro, or a record contains itself.
    """
    root = _parse_schema(schema)
    sizes: dict[int, int] = {}
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, list):
            stack.extend(node)
            continue
        k = node["type"]
        if k == "record":
            _finite_size(node, sizes, frozenset())
            stack.extend(f["type"] for f in node["fields"])
        elif k == "array":
            stack.append(node["items"])
        elif k == "map":
            stack.append(node["values"])


def _finite_size(s: Any, sizes: dict[int, int], stack: frozenset[int]) -> int:
    """:func:`_min_size` with a memo, for :func:`check_finite`."""
    if isinstance(s, list) or s["type"] != "record":
        return _min_size(s) if not isinstance(s, list) else 1
    known = sizes.get(id(s))
    if known is not None:
        return known
    if id(s) in stack:
        msg = f"record {s['name']} contains itself with no union, array or map between"
        raise ValueError(msg)
    inner = stack | {id(s)}
    size = sum(_finite_size(f["type"], sizes, inner) for f in s["fields"])
    sizes[id(s)] = size
    return size
