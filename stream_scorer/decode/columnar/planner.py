"""The planner: schemas and requested fields → a tree of vectorised nodes, and its decode call.

In: a writer schema, a reader schema and the fields a model binds. Out: a
:class:`ColumnarDecoder` whose :meth:`~ColumnarDecoder.decode` turns a batch of Avro bodies into
a :class:`~.columns.ColumnBatch`. Planning declares one output column per requested leaf,
compiles each writer field into a node (:mod:`.nodes`): vectorised where it can, the per-record
fallback (:mod:`.fallback`) for requested arrays, maps, general unions and recursive records,
skips for fields nobody asked for and constants for reader fields the writer lacks.
Incompatible schemas are a ``ValueError`` at construction; bad bytes are rejects, never raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_scorer.decode.columnar.columns import (
    _INT_LOGICAL,
    _LONG_LOGICAL,
    BytesColumn,
    Column,
    ColumnBatch,
    DecimalColumn,
    EnumColumn,
    NumericColumn,
    ObjectColumn,
)
from stream_scorer.decode.columnar.fallback import _PyCompiler
from stream_scorer.decode.columnar.nodes import (
    PAD_BYTES,
    _BlockNode,
    _BoolNode,
    _BytesNode,
    _ConstNode,
    _EnumNode,
    _ErrorNode,
    _FallbackNode,
    _FixedNode,
    _FloatNode,
    _IntNode,
    _Node,
    _NullNode,
    _RecordNode,
    _Sink,
    _Spec,
    _State,
    _UnionNode,
)
from stream_scorer.decode.columnar.schema import (
    _describe,
    _enum_table,
    _join,
    _json_default,
    _kind,
    _matches,
    _min_size,
    _parse_schema,
    _reader_field_map,
    _reader_paths,
    _select_branch,
)
from stream_scorer.decode.limits import (
    MAX_BATCH_ITEMS,
    MAX_INT_VARINT_BYTES,
    MAX_LONG_VARINT_BYTES,
    check_schema,
)

__all__ = ["ColumnarDecoder"]


class ColumnarDecoder:
    """Decodes batches of Avro binary bodies into numpy columns, one field at a time.

    Schema resolution follows the Avro specification: a reader field absent from the writer
    takes its default (a constant column); writer fields absent from the reader are skipped;
    int->long/float/double, long->float/double, float->double and string<->bytes are promoted;
    enum symbols resolve by name (a writer symbol unknown to the reader becomes the reader enum's
    default, else that record fails); unions resolve branch by branch (a writer branch with no
    reader match fails only the records that use it).

    Args:
        writer_schema: Writer record schema as Avro JSON (a dict).
        reader_schema: Reader record schema; None reads with the writer schema.
        fields: Reader top-level fields to materialise (None: all). Nested record fields can be
            named as ``"outer.inner"``; naming a record field materialises all of its leaves as
            ``"outer.<leaf>"`` columns.

    Raises:
        ValueError: The schemas are invalid, not records, incompatible, or ``fields`` names a
            field the reader schema lacks.
    """

    def __init__(
        self,
        writer_schema: Mapping[str, Any],
        reader_schema: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> None:
        """Compile the read plan; see the class docstring."""
        # Before any recursive walk: a schema deeper than the limit would overflow the stack.
        check_schema(writer_schema, "writer schema")
        if reader_schema is not None:
            check_schema(reader_schema, "reader schema")
        w = _parse_schema(writer_schema)
        r = _parse_schema(reader_schema) if reader_schema is not None else w
        if _kind(w) != "record" or _kind(r) != "record":
            msg = "writer and reader schemas must be records"
            raise ValueError(msg)
        if isinstance(fields, str):
            fields = [fields]
        self._requested: frozenset[str] | None = None if fields is None else frozenset(fields)
        if self._requested is not None:
            known = _reader_paths(r, "", frozenset())
            unknown = sorted(self._requested - known)
            if unknown:
                msg = f"reader schema has no field(s) {unknown}"
                raise ValueError(msg)
        self._specs: list[_Spec] = []
        self._slots: dict[str, int] = {}
        self._const_blob = bytearray()
        self._py = _PyCompiler()
        root_want = self._want("")
        self._declare(r, "", root_want, nullable=False, stack=frozenset())
        if not _matches(w, r):
            msg = f"writer record {w['name']} cannot be read as {r['name']}"
            raise ValueError(msg)
        _min_size(w)  # a record containing itself with nothing between: no finite value
        self._root = self._compile(w, r, "", root_want, frozenset())

    @property
    def walks_items(self) -> bool:
        """Whether the plan reads arrays, maps or recursive types: what a per-item or
        per-level decoder such as fastavro could be made to spend unbounded time or stack on."""
        stack: list[_Node] = [self._root]
        while stack:
            node = stack.pop()
            if isinstance(node, _BlockNode | _FallbackNode):
                return True
            if isinstance(node, _RecordNode):
                stack.extend(node.fields)
            elif isinstance(node, _UnionNode):
                stack.extend(node.branches)
        return False

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the columns :meth:`decode` returns, in reader-schema order."""
        return tuple(s.name for s in self._specs)

    # -- planning -------------------------------------------------------------------------

    def _want(self, path: str) -> int:
        """2: materialise everything under ``path``; 1: only some descendants; 0: skip."""
        req = self._requested
        if req is None:
            return 2
        if not path:
            return 1
        parts = path.split(".")
        if any(".".join(parts[:i]) in req for i in range(1, len(parts) + 1)):
            return 2
        prefix = path + "."
        return 1 if any(q.startswith(prefix) for q in req) else 0

    def _declare(
        self, r: Any, path: str, want: int, *, nullable: bool, stack: frozenset[int]
    ) -> None:
        if want == 0:
            return
        if isinstance(r, list):
            non_null = [b for b in r if _kind(b) != "null"]
            has_null = len(non_null) < len(r)
            if len(non_null) == 1:
                self._declare(non_null[0], path, want, nullable=nullable or has_null, stack=stack)
            else:
                self._add_spec(_Spec(path, "obj", np.dtype(object), nullable=True))
            return
        k = r["type"]
        if k == "record" and id(r) not in stack and path:
            for f in r["fields"]:
                child = _join(path, f["name"])
                self._declare(
                    f["type"], child, self._want(child), nullable=nullable, stack=stack | {id(r)}
                )
        elif k == "record" and not path:
            for f in r["fields"]:
                self._declare(
                    f["type"],
                    f["name"],
                    self._want(f["name"]),
                    nullable=False,
                    stack=stack | {id(r)},
                )
        else:
            self._add_spec(_leaf_spec(r, path, nullable))

    def _add_spec(self, spec: _Spec) -> None:
        self._slots[spec.name] = len(self._specs)
        self._specs.append(spec)

    def _slot(self, path: str, want: int) -> int | None:
        return self._slots.get(path) if want == 2 else None

    def _compile(self, w: Any, r: Any, path: str, want: int, stack: frozenset[int]) -> _Node:  # noqa: PLR0912
        if want == 0:
            return self._skip(w, path, frozenset())
        slot = self._slot(path, want)
        if slot is not None and self._specs[slot].kind == "obj":
            return _FallbackNode(self._py.reader(w, r), slot, path)
        where = path or "record"
        if isinstance(w, list):
            branches: list[_Node] = []
            for i, wb in enumerate(w):
                try:
                    branches.append(self._compile(wb, r, path, want, stack))
                except ValueError as exc:
                    branches.append(
                        _ErrorNode(f"writer union branch {i} unreadable at {where}: {exc}")
                    )
            if all(isinstance(b, _ErrorNode) for b in branches):
                msg = f"no writer union branch resolves against the reader at {where}"
                raise ValueError(msg)
            return _UnionNode(branches, where)
        if isinstance(r, list):
            rb = _select_branch(w, r)
            if rb is None:
                msg = f"writer type {w['type']} matches no reader union branch at {where}"
                raise ValueError(msg)
            return self._compile(w, rb, path, want, stack)
        if not _matches(w, r):
            msg = f"writer type {_describe(w)} cannot be read as {_describe(r)} at {where}"
            raise ValueError(msg)
        k = w["type"]
        if k == "null":
            return _NullNode()
        if k == "boolean":
            return _BoolNode(slot, where)
        if k in ("int", "long"):
            return _IntNode(
                MAX_INT_VARINT_BYTES if k == "int" else MAX_LONG_VARINT_BYTES, slot, where
            )
        if k in ("float", "double"):
            return _FloatNode(4 if k == "float" else 8, slot, where)
        if k in ("bytes", "string"):
            return _BytesNode(slot, where)
        if k == "fixed":
            return _FixedNode(int(w["size"]), slot, where)
        if k == "enum":
            return _EnumNode(_enum_table(w, r), w["symbols"], slot, where)
        if k in ("array", "map"):
            # Only reached when skipped inside a materialised-by-leaf path: skip it.
            return self._skip(w, path, frozenset())
        return self._compile_record(w, r, path, want, stack)

    def _compile_record(
        self,
        w: Mapping[str, Any],
        r: Mapping[str, Any],
        path: str,
        want: int,
        stack: frozenset[int],
    ) -> _Node:
        rfields = _reader_field_map(r)
        nodes: list[_Node] = []
        seen: set[str] = set()
        inner = stack | {id(r)}
        for wf in w["fields"]:
            rf = rfields.get(wf["name"])
            if rf is None:
                nodes.append(self._skip(wf["type"], _join(path, wf["name"]), frozenset()))
                continue
            seen.add(rf["name"])
            child = _join(path, rf["name"])
            nodes.append(self._compile(wf["type"], rf["type"], child, self._want(child), inner))
        for rf in r["fields"]:
            if rf["name"] in seen:
                continue
            if "default" not in rf:
                msg = f"reader field {_join(path, rf['name'])!r} missing from writer, no default"
                raise ValueError(msg)
            child = _join(path, rf["name"])
            puts: list[tuple[int, str, Any]] = []
            self._const_puts(rf["type"], rf["default"], child, self._want(child), puts)
            if puts:
                nodes.append(_ConstNode(puts))
        return _RecordNode(nodes)

    def _skip(self, w: Any, path: str, stack: frozenset[int]) -> _Node:
        where = path or "record"
        if isinstance(w, list):
            return _UnionNode([self._skip(b, path, stack) for b in w], where)
        k = w["type"]
        if k == "null":
            return _NullNode()
        if k == "boolean":
            return _BoolNode(None, where)
        if k in ("int", "long"):
            return _IntNode(
                MAX_INT_VARINT_BYTES if k == "int" else MAX_LONG_VARINT_BYTES, None, where
            )
        if k in ("float", "double"):
            return _FloatNode(4 if k == "float" else 8, None, where)
        if k in ("bytes", "string"):
            return _BytesNode(None, where)
        if k == "fixed":
            return _FixedNode(int(w["size"]), None, where)
        if k == "enum":
            return _EnumNode(
                np.arange(len(w["symbols"]), dtype=np.int64), w["symbols"], None, where
            )
        if k == "array":
            return _BlockNode(
                self._skip(w["items"], path, stack),
                _min_size(w["items"]),
                where,
                self._py.blocks(w, w),
            )
        if k == "map":
            item = _RecordNode([_BytesNode(None, where), self._skip(w["values"], path, stack)])
            return _BlockNode(item, 1 + _min_size(w["values"]), where, self._py.blocks(w, w))
        if id(w) in stack:
            return _FallbackNode(self._py.reader(w, w), None, where)
        inner = stack | {id(w)}
        return _RecordNode(
            [self._skip(f["type"], _join(path, f["name"]), inner) for f in w["fields"]]
        )

    def _const_puts(  # noqa: PLR0912
        self, r: Any, d: Any, path: str, want: int, out: list[tuple[int, str, Any]]
    ) -> None:
        if want == 0:
            return
        slot = self._slot(path, want)
        if slot is not None and self._specs[slot].kind == "obj":
            out.append((slot, "obj", _json_default(r, d)))
            return
        if isinstance(r, list):
            if _kind(r[0]) != "null":
                self._const_puts(r[0], d, path, want, out)
            return
        k = r["type"]
        if k == "record":
            for f in r["fields"]:
                child = _join(path, f["name"])
                if f["name"] in d:
                    v = d[f["name"]]
                elif "default" in f:
                    v = f["default"]
                else:
                    msg = f"default of {path!r} lacks field {f['name']!r}"
                    raise ValueError(msg)
                self._const_puts(f["type"], v, child, self._want(child), out)
            return
        if slot is None:
            return
        if k == "enum":
            syms = list(r["symbols"])
            if d not in syms:
                msg = f"default {d!r} of {path!r} is not a symbol"
                raise ValueError(msg)
            out.append((slot, "num", syms.index(d)))
        elif k in ("string", "bytes", "fixed"):
            data = str(d).encode("utf-8" if k == "string" else "latin-1")
            out.append((slot, "bytes", (len(self._const_blob), len(data))))
            self._const_blob += data
        elif k != "null":
            out.append((slot, "num", d))

    # -- decoding -------------------------------------------------------------------------

    def decode(
        self,
        payloads: Sequence[bytes | memoryview],
        skip: int = 0,
        item_budget: int = MAX_BATCH_ITEMS,
    ) -> ColumnBatch:
        """Decode a batch of Avro binary bodies.

        Args:
            payloads: One Avro-encoded record per element.
            skip: Bytes of framing header at the start of every payload, not decoded (the
                caller checked them), so payloads need not be sliced one by one.
            item_budget: Array/map items these records may declare in all (what is left of
                the batch's :data:`~stream_scorer.decode.limits.MAX_BATCH_ITEMS` when a batch
                is decoded in several calls, one per writer schema).

        Returns:
            The requested columns plus a per-record ok mask and error reasons. Never raises for
            malformed payloads.
        """
        n = len(payloads)
        # len() of a bytes object or a 1-D byte memoryview is its size in bytes.
        lens = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
        body = b"".join(payloads)
        const_base = len(body) + PAD_BYTES
        raw = body + bytes(PAD_BYTES) + bytes(self._const_blob) + bytes(PAD_BYTES)
        buf = np.frombuffer(raw, dtype=np.uint8)
        end = np.cumsum(lens)
        pos = end - lens + skip
        sinks = [_Sink(spec, n) for spec in self._specs]
        st = _State(raw, buf, pos, end, sinks, const_base)
        st.batch_left = item_budget
        idx = self._root.read(st, np.arange(n, dtype=np.int64))
        st.fail(idx[st.pos[idx] != st.end[idx]], "trailing bytes after record")
        for spec, sink in zip(self._specs, sinks, strict=True):
            if spec.is_string:
                _check_utf8(st, spec, sink)
        ok = st.ok
        bad = ~ok
        columns: dict[str, Column] = {}
        for spec, sink in zip(self._specs, sinks, strict=True):
            columns[spec.name] = _finish(spec, sink, buf, bad)
        return ColumnBatch(
            n=n,
            columns=columns,
            ok=ok,
            errors=dict(sorted(st.errors.items())),
            items=item_budget - st.batch_left,
        )


def _leaf_spec(r: Mapping[str, Any], path: str, nullable: bool) -> _Spec:
    k = r["type"]
    lt = r.get("logicalType")
    if k == "boolean":
        return _Spec(path, "num", np.dtype(bool), nullable)
    if k == "int":
        return _Spec(path, "num", np.dtype(np.int32), nullable, lt if lt in _INT_LOGICAL else None)
    if k == "long":
        return _Spec(path, "num", np.dtype(np.int64), nullable, lt if lt in _LONG_LOGICAL else None)
    if k in ("float", "double"):
        return _Spec(path, "num", np.dtype(np.float32 if k == "float" else np.float64), nullable)
    if k == "string":
        return _Spec(path, "bytes", np.dtype(np.int64), nullable, is_string=True)
    if k in ("bytes", "fixed"):
        prec = r.get("precision")
        if lt == "decimal" and isinstance(prec, int) and prec > 0:
            return _Spec(
                path,
                "bytes",
                np.dtype(np.int64),
                nullable,
                logical="decimal",
                decimal=True,
                precision=prec,
                scale=int(r.get("scale", 0)),
            )
        return _Spec(path, "bytes", np.dtype(np.int64), nullable)
    if k == "enum":
        return _Spec(path, "enum", np.dtype(np.int32), nullable, symbols=tuple(r["symbols"]))
    return _Spec(path, "obj", np.dtype(object), nullable=True)


def _check_utf8(st: _State, spec: _Spec, sink: _Sink) -> None:
    """Fail records whose materialised string is not valid UTF-8 (ASCII is checked vectorised)."""
    assert sink.length is not None  # noqa: S101
    rows = np.flatnonzero(st.ok & (sink.length > 0))
    if not rows.size:
        return
    start = sink.data[rows]
    stop = start + sink.length[rows]
    bounds = np.empty(2 * rows.size, dtype=np.int64)
    bounds[0::2] = start
    bounds[1::2] = stop
    high = np.maximum.reduceat(st.buf, bounds)[0::2] >= 0x80
    for rec, s, e in zip(
        rows[high].tolist(), start[high].tolist(), stop[high].tolist(), strict=True
    ):
        try:
            st.raw[s:e].decode("utf-8")
        except UnicodeDecodeError:
            st.fail(np.array([rec], dtype=np.int64), f"invalid UTF-8 at {spec.name}")


def _finish(spec: _Spec, sink: _Sink, buf: NDArray[np.uint8], bad: NDArray[np.bool_]) -> Column:
    """Turn a filled sink into a Column, blanking rows of failed records."""
    null: NDArray[np.bool_] | None = None
    if sink.present is not None:
        null = ~sink.present
        null[bad] = True
    if spec.kind == "obj":
        assert sink.objects is not None  # noqa: S101
        sink.objects[bad] = None
        return ObjectColumn(name=spec.name, null=null, values=sink.objects)
    sink.data[bad] = 0
    if spec.kind == "num":
        return NumericColumn(name=spec.name, null=null, values=sink.data, logical=spec.logical)
    if spec.kind == "enum":
        return EnumColumn(name=spec.name, null=null, index=sink.data, symbols=spec.symbols)
    assert sink.length is not None  # noqa: S101
    sink.length[bad] = 0
    if spec.decimal:
        return DecimalColumn(
            name=spec.name,
            null=null,
            buffer=buf,
            start=sink.data,
            length=sink.length,
            is_string=False,
            precision=spec.precision,
            scale=spec.scale,
        )
    return BytesColumn(
        name=spec.name,
        null=null,
        buffer=buf,
        start=sink.data,
        length=sink.length,
        is_string=spec.is_string,
    )
