"""Per-record fallback: a pure-Python reader for what has no vectorised path.

In: a writer and a reader type (normalised, :mod:`.schema`). Out: a reader function
``(buf, pos, end) -> (value, new_pos)`` that decodes one value of one record with schema
resolution, for requested arrays, maps, general unions and recursive records (object columns).
Bad bytes raise :class:`_DecodeError`, which the calling node (:class:`.nodes._FallbackNode`)
turns into a reject of that record; a writer that cannot be read as the reader is a
``ValueError`` at compile time.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable
from typing import Any

from stream_scorer.decode.columnar.schema import (
    _enum_table,
    _json_default,
    _matches,
    _min_size,
    _reader_field_map,
    _select_branch,
)
from stream_scorer.decode.limits import (
    MAX_BATCH_ITEMS,
    MAX_INT_VARINT_BYTES,
    MAX_LONG_VARINT_BYTES,
    MAX_RECORD_ITEMS,
)

__all__: list[str] = []

_PyRead = Callable[[bytes, int, int, "_Budget"], tuple[Any, int]]

#: Walks the blocks of one array or map from ``p``: ``(buf, p, end, budget, count, block_end,
#: out_list, out_map) -> new_p``, where ``count`` items of the current block (ending at
#: ``block_end``, -1 if unsized) are still to be read, 0 to start at a block header. Items
#: are appended to ``out_list`` (arrays) or set in ``out_map`` (maps); None skips them.
_PyBlocks = Callable[
    [bytes, int, int, "_Budget", int, int, list[Any] | None, dict[str, Any] | None], int
]


class _Budget:
    """Array and map items one record, and the batch it is in, may still declare.

    Handed down every per-record reader call (the readers are shared by all records and
    threads, so the count cannot live in them); see :mod:`stream_scorer.decode.limits`.
    """

    __slots__ = ("batch", "record")

    def __init__(self, record: int, batch: int) -> None:
        self.record = record
        self.batch = batch

    def spend(self, count: int) -> None:
        """Take ``count`` items from both budgets; raise when either is exceeded."""
        self.record -= count
        self.batch -= count
        if self.record < 0:
            msg = f"more than {MAX_RECORD_ITEMS} array/map items in one record (MAX_RECORD_ITEMS)"
            raise _DecodeError(msg)
        if self.batch < 0:
            msg = f"batch item budget of {MAX_BATCH_ITEMS} spent (MAX_BATCH_ITEMS)"
            raise _DecodeError(msg)


class _DecodeError(Exception):
    """A record cannot be decoded (raised by the per-record fallback reader)."""


def _py_varint(b: bytes, p: int, e: int, max_bytes: int) -> tuple[int, int]:
    result = 0
    shift = 0
    for _ in range(max_bytes):
        if p >= e:
            msg = "truncated"
            raise _DecodeError(msg)
        byte = b[p]
        p += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    else:
        msg = "varint too long"
        raise _DecodeError(msg)
    if result >> (7 * max_bytes - (3 if max_bytes == MAX_INT_VARINT_BYTES else 6)) != 0:
        msg = "varint overflow"
        raise _DecodeError(msg)
    return (result >> 1) ^ -(result & 1), p


def _py_take(p: int, e: int, n: int) -> int:
    if n < 0:
        msg = "negative length"
        raise _DecodeError(msg)
    if n > e - p:
        msg = "length beyond record end" if n else "truncated"
        raise _DecodeError(msg)
    return p + n


class _PyCompiler:
    """Builds per-record readers ``(buf, pos, end) -> (value, new_pos)`` with resolution."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, int], _PyRead] = {}

    def reader(self, w: Any, r: Any) -> _PyRead:
        key = (id(w), id(r))
        if key in self._memo:
            return self._memo[key]
        cell: list[_PyRead] = []

        def trampoline(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
            return cell[0](b, p, e, g)

        self._memo[key] = trampoline
        try:
            fn = self._build(w, r)
        except ValueError:
            del self._memo[key]
            raise
        cell.append(fn)
        self._memo[key] = fn
        return fn

    def blocks(self, w: Any, r: Any) -> _PyBlocks:
        """The block walker of an array or map type: see :data:`_PyBlocks`."""
        is_map = w["type"] == "map"
        part = "values" if is_map else "items"
        item = self.reader(w[part], r[part])
        key = self.reader({"type": "string"}, {"type": "string"})
        min_item = _min_size(w[part]) + (1 if is_map else 0)

        def run(  # noqa: PLR0912
            b: bytes,
            p: int,
            e: int,
            g: _Budget,
            count: int,
            block_end: int,
            out_l: list[Any] | None,
            out_m: dict[str, Any] | None,
        ) -> int:
            while True:
                if count and not min_item:
                    # Zero-byte items (arrays only: a map item has a key): nothing on the
                    # wire to walk per item; one value, read once and repeated if kept.
                    v, p = item(b, p, e, g)
                    if out_l is not None:
                        out_l.append(v)
                        out_l.extend(_clone(v) for _ in range(count - 1))
                elif count:
                    for _ in range(count):
                        if is_map:
                            k, p = key(b, p, e, g)
                            v, p = item(b, p, e, g)
                            if out_m is not None:
                                out_m[k] = v
                        else:
                            v, p = item(b, p, e, g)
                            if out_l is not None:
                                out_l.append(v)
                if count and block_end >= 0 and p != block_end:
                    msg = "block byte size mismatch"
                    raise _DecodeError(msg)
                count, p = _py_varint(b, p, e, MAX_LONG_VARINT_BYTES)
                block_end = -1
                if count < 0:
                    count = -count
                    size, p = _py_varint(b, p, e, MAX_LONG_VARINT_BYTES)
                    block_end = _py_take(p, e, size)
                if count == 0:
                    return p
                if min_item and count > (e - p) // min_item:
                    msg = "block item count beyond record end"
                    raise _DecodeError(msg)
                g.spend(count)

        return run

    def _build(self, w: Any, r: Any) -> _PyRead:  # noqa: PLR0912, PLR0915
        if isinstance(w, list):
            subs: list[_PyRead] = []
            for i, wb in enumerate(w):
                try:
                    subs.append(self.reader(wb, r))
                except ValueError:
                    subs.append(_py_error(f"writer union branch {i} does not resolve"))
            if all(getattr(s, "is_error", False) for s in subs):
                msg = "no writer union branch resolves against the reader type"
                raise ValueError(msg)

            def read_union(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
                br, p = _py_varint(b, p, e, MAX_LONG_VARINT_BYTES)
                if not 0 <= br < len(subs):
                    msg = "bad union branch index"
                    raise _DecodeError(msg)
                return subs[br](b, p, e, g)

            return read_union
        if isinstance(r, list):
            rb = _select_branch(w, r)
            if rb is None:
                msg = f"writer type {w['type']} matches no reader union branch"
                raise ValueError(msg)
            return self.reader(w, rb)
        if not _matches(w, r):
            msg = f"writer type {w['type']} cannot be read as {r['type']}"
            raise ValueError(msg)
        wk, rk = w["type"], r["type"]
        if wk == "null":
            return lambda b, p, e, g: (None, p)
        if wk == "boolean":

            def read_bool(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
                if p >= e:
                    msg = "truncated"
                    raise _DecodeError(msg)
                if b[p] > 1:
                    msg = "bad boolean byte"
                    raise _DecodeError(msg)
                return b[p] == 1, p + 1

            return read_bool
        if wk in ("int", "long"):
            nb = MAX_INT_VARINT_BYTES if wk == "int" else MAX_LONG_VARINT_BYTES
            as_float = rk in ("float", "double")

            def read_int(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
                v, p = _py_varint(b, p, e, nb)
                return (float(v) if as_float else v), p

            return read_int
        if wk in ("float", "double"):
            fmt = "<f" if wk == "float" else "<d"
            size = 4 if wk == "float" else 8

            def read_float(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
                q = _py_take(p, e, size)
                return struct.unpack_from(fmt, b, p)[0], q

            return read_float
        if wk in ("bytes", "string"):
            as_str = rk == "string"

            def read_bytes(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
                n, p = _py_varint(b, p, e, MAX_LONG_VARINT_BYTES)
                q = _py_take(p, e, n)
                raw = b[p:q]
                if as_str:
                    try:
                        return raw.decode("utf-8"), q
                    except UnicodeDecodeError:
                        msg = "invalid UTF-8"
                        raise _DecodeError(msg) from None
                return raw, q

            return read_bytes
        if wk == "fixed":
            size = int(w["size"])

            def read_fixed(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
                q = _py_take(p, e, size)
                return b[p:q], q

            return read_fixed
        if wk == "enum":
            table = _enum_table(w, r)
            rsyms = list(r["symbols"])
            wsyms = list(w["symbols"])

            def read_enum(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
                i, p = _py_varint(b, p, e, MAX_INT_VARINT_BYTES)
                if not 0 <= i < len(table):
                    msg = "bad enum index"
                    raise _DecodeError(msg)
                j = int(table[i])
                if j < 0:
                    msg = f"enum symbol {wsyms[i]!r} unknown to reader"
                    raise _DecodeError(msg)
                return rsyms[j], p

            return read_enum
        if wk in ("array", "map"):
            run = self.blocks(w, r)
            is_map = wk == "map"

            def read_blocks(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
                out_l: list[Any] = []
                out_m: dict[str, Any] = {}
                p = run(b, p, e, g, 0, -1, out_l, out_m)
                return (out_m if is_map else out_l), p

            return read_blocks
        # record
        if not _matches(w, r):
            msg = f"record {w['name']} cannot be read as {r['name']}"
            raise ValueError(msg)
        rfields = _reader_field_map(r)
        steps: list[tuple[str | None, _PyRead]] = []
        seen: set[str] = set()
        for wf in w["fields"]:
            rf = rfields.get(wf["name"])
            if rf is None:
                steps.append((None, self.reader(wf["type"], wf["type"])))
            else:
                seen.add(rf["name"])
                steps.append((rf["name"], self.reader(wf["type"], rf["type"])))
        defaults: dict[str, Any] = {}
        for rf in r["fields"]:
            if rf["name"] not in seen:
                if "default" not in rf:
                    msg = f"reader field {rf['name']!r} missing from writer and has no default"
                    raise ValueError(msg)
                defaults[rf["name"]] = _json_default(rf["type"], rf["default"])
        order = [f["name"] for f in r["fields"]]

        def read_record(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
            got: dict[str, Any] = {}
            for name, fn in steps:
                v, p = fn(b, p, e, g)
                if name is not None:
                    got[name] = v
            for name, v in defaults.items():
                got[name] = copy.deepcopy(v)
            return {name: got[name] for name in order}, p

        return read_record


def _clone(v: Any) -> Any:
    """A copy of a zero-byte value (None, b"", or records of those), faster than deepcopy."""
    return {k: _clone(x) for k, x in v.items()} if isinstance(v, dict) else v


def _py_error(reason: str) -> _PyRead:
    def fail(b: bytes, p: int, e: int, g: _Budget) -> tuple[Any, int]:
        raise _DecodeError(reason)

    fail.is_error = True  # type: ignore[attr-defined]
    return fail
