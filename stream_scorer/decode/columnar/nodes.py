"""Vectorised nodes: one writer type read for every active record of a batch at once.

In: a :class:`_State` (the batch's concatenated buffer, a read position and an end per record,
the output sinks) and the indexes of the records still being decoded. Out: the indexes of the
records that survived; values are scattered into the sinks by record index, and a record that
fails is marked in ``_State.ok`` with a reason and dropped from the active set. Every read is
checked against the record's own end, never the buffer's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from stream_scorer.decode.columnar.fallback import _Budget, _DecodeError, _PyBlocks, _PyRead
from stream_scorer.decode.limits import (
    MAX_BATCH_ITEMS,
    MAX_INT_VARINT_BYTES,
    MAX_LONG_VARINT_BYTES,
    MAX_RECORD_ITEMS,
)

__all__ = ["PAD_BYTES", "SCALAR_RECORDS"]

# Zero bytes appended after the concatenated payloads so that fixed-width gathers (at most 10
# bytes from any in-record position) stay inside the array; bytes at or after a record's end are
# still rejected by the per-record end check.
PAD_BYTES: Final = 16

_I64 = NDArray[np.int64]

_AR: Final = np.arange(MAX_LONG_VARINT_BYTES, dtype=np.int64)
_SHIFTS: Final = (7 * _AR).astype(np.uint64)


@dataclass(frozen=True, slots=True)
class _Spec:
    """How to build one output column."""

    name: str
    kind: str  # "num" | "bytes" | "enum" | "obj"
    dtype: np.dtype[Any]
    nullable: bool
    logical: str | None = None
    is_string: bool = False
    symbols: tuple[str, ...] = ()
    decimal: bool = False
    precision: int = 0
    scale: int = 0


def _rows(array: NDArray[Any], idx: _I64) -> NDArray[Any]:
    """``array[idx]`` for a per-record array; a plain copy when ``idx`` is every record.

    ``idx`` is always an ascending subset of the batch's records, so when it is as long as the
    batch it is all of them, in order: the usual case, where a copy is several times cheaper
    than a gather.
    """
    return array.copy() if len(idx) == len(array) else array[idx]


def _put(array: NDArray[Any], idx: _I64, values: NDArray[Any] | float) -> None:
    """``array[idx] = values``, by slice when ``idx`` is every record (see :func:`_rows`)."""
    if len(idx) == len(array):
        array[:] = values
    else:
        array[idx] = values


class _Sink:
    """Per-decode output arrays of one column, filled by scatter on record index."""

    __slots__ = ("data", "length", "objects", "present")

    def __init__(self, spec: _Spec, n: int) -> None:
        self.data: NDArray[Any] = np.zeros(n, dtype=spec.dtype)
        self.length: NDArray[np.int64] | None = (
            np.zeros(n, dtype=np.int64) if spec.kind == "bytes" else None
        )
        self.objects: NDArray[np.object_] | None = (
            np.full(n, None, dtype=object) if spec.kind == "obj" else None
        )
        self.present: NDArray[np.bool_] | None = np.zeros(n, dtype=bool) if spec.nullable else None

    def put(self, idx: _I64, values: NDArray[Any] | float) -> None:
        _put(self.data, idx, values)
        if self.present is not None:
            _put(self.present, idx, True)

    def put_bytes(self, idx: _I64, start: _I64 | int, length: _I64 | int) -> None:
        _put(self.data, idx, start)
        assert self.length is not None  # noqa: S101
        _put(self.length, idx, length)
        if self.present is not None:
            _put(self.present, idx, True)


class _State:
    """Buffers and per-record cursors of one decode call."""

    __slots__ = (
        "batch_left",
        "buf",
        "const_base",
        "end",
        "errors",
        "items",
        "ok",
        "pos",
        "raw",
        "sinks",
    )

    def __init__(
        self,
        raw: bytes,
        buf: NDArray[np.uint8],
        pos: _I64,
        end: _I64,
        sinks: list[_Sink],
        const_base: int,
    ) -> None:
        self.raw = raw
        self.buf = buf
        self.pos = pos
        self.end = end
        self.ok: NDArray[np.bool_] = np.ones(len(pos), dtype=bool)
        self.errors: dict[int, str] = {}
        self.sinks = sinks
        self.const_base = const_base
        #: Array/map items each record has declared so far (see ``limits.MAX_RECORD_ITEMS``).
        self.items: _I64 = np.zeros(len(pos), dtype=np.int64)
        #: Items the rest of the batch may still declare (``limits.MAX_BATCH_ITEMS``).
        self.batch_left = MAX_BATCH_ITEMS

    def spend(self, idx: _I64, count: _I64, where: str) -> NDArray[np.bool_] | None:
        """Charge ``count`` items to each record of ``idx`` and to the batch; fail the excess.

        Returns the keep-mask, or None when nothing failed.
        """
        items = self.items[idx] + count
        self.items[idx] = items
        over = items > MAX_RECORD_ITEMS
        # Records in batch order draw on the batch budget until it is spent.
        spent = self.batch_left - np.cumsum(np.where(over, 0, count)) < 0
        spent &= ~over
        if not (over.any() or spent.any()):
            self.batch_left -= int(count.sum())
            return None
        self.fail(
            idx[over],
            f"more than {MAX_RECORD_ITEMS} array/map items in one record at {where}"
            " (MAX_RECORD_ITEMS)",
        )
        self.fail(
            idx[spent],
            f"batch item budget of {MAX_BATCH_ITEMS} spent at {where} (MAX_BATCH_ITEMS)",
        )
        keep = ~(over | spent)
        self.batch_left -= int(count[keep].sum())
        return keep

    def budget(self, rec: int) -> _Budget:
        """What record ``rec`` and the batch may still declare, for a per-record reader."""
        return _Budget(MAX_RECORD_ITEMS - int(self.items[rec]), self.batch_left)

    def settle(self, rec: int, budget: _Budget) -> None:
        """Take back what a per-record reader spent of :meth:`budget`."""
        self.items[rec] = MAX_RECORD_ITEMS - budget.record
        self.batch_left = budget.batch

    def fail(self, recs: _I64, reason: str) -> None:
        if recs.size == 0:
            return
        self.ok[recs] = False
        for rec in recs.tolist():
            self.errors.setdefault(rec, reason)

    def split(self, idx: _I64, bad: NDArray[np.bool_], reason: str) -> NDArray[np.bool_] | None:
        """Fail ``idx[bad]``; return the keep-mask, or None when nothing failed."""
        if not bad.any():
            return None
        self.fail(idx[bad], reason)
        return ~bad


def _varint(st: _State, idx: _I64, max_bytes: int, where: str) -> tuple[_I64, _I64]:
    """Decode one zigzag varint for each record in ``idx``; return survivors and their values."""
    p = _rows(st.pos, idx)
    end = _rows(st.end, idx)
    b0 = st.buf[p]
    if not (b0 >= 0x80).any():
        u0 = b0.astype(np.int64)
        vals = (u0 >> 1) ^ -(u0 & 1)
        keep = st.split(idx, p >= end, f"truncated at {where}")
        if keep is not None:
            idx, p, vals = idx[keep], p[keep], vals[keep]
        _put(st.pos, idx, p + 1)
        return idx, vals
    ar = _AR[:max_bytes]
    win = st.buf[p[:, None] + ar]
    term = win < 0x80
    has = term.any(axis=1)
    nb = term.argmax(axis=1) + 1
    parts = np.where(ar < nb[:, None], (win & 0x7F).astype(np.uint64) << _SHIFTS[:max_bytes], 0)
    u = np.bitwise_or.reduce(parts, axis=1)
    last = win[np.arange(len(p)), nb - 1]
    limit = 0x0F if max_bytes == MAX_INT_VARINT_BYTES else 0x01
    trunc = np.where(has, p + nb > end, p + max_bytes > end)
    too_long = ~has & ~trunc
    overflow = has & ~trunc & (nb == max_bytes) & (last > limit)
    bad = trunc | too_long | overflow
    if bad.any():
        st.fail(idx[trunc], f"truncated at {where}")
        st.fail(idx[too_long], f"varint too long at {where}")
        st.fail(idx[overflow], f"varint overflow at {where}")
        keep = ~bad
        idx, p, nb, u = idx[keep], p[keep], nb[keep], u[keep]
    _put(st.pos, idx, p + nb)
    vals = (u >> np.uint64(1)).astype(np.int64) ^ -((u & np.uint64(1)).astype(np.int64))
    return idx, vals


def _take(st: _State, idx: _I64, size: int, where: str) -> tuple[_I64, _I64]:
    """Advance each record by ``size`` bytes; return survivors and their start offsets."""
    p = _rows(st.pos, idx)
    keep = st.split(idx, p + size > _rows(st.end, idx), f"truncated at {where}")
    if keep is not None:
        idx, p = idx[keep], p[keep]
    _put(st.pos, idx, p + size)
    return idx, p


class _Node:
    """A vectorised reader of one writer type; ``read`` returns the surviving records."""

    __slots__ = ()

    def read(self, st: _State, idx: _I64) -> _I64:
        raise NotImplementedError


class _NullNode(_Node):
    __slots__ = ()

    def read(self, st: _State, idx: _I64) -> _I64:
        return idx


class _ErrorNode(_Node):
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def read(self, st: _State, idx: _I64) -> _I64:
        st.fail(idx, self.reason)
        return idx[:0]


class _BoolNode(_Node):
    __slots__ = ("slot", "where")

    def __init__(self, slot: int | None, where: str) -> None:
        self.slot, self.where = slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, p = _take(st, idx, 1, self.where)
        v = st.buf[p]
        keep = st.split(idx, v > 1, f"bad boolean byte at {self.where}")
        if keep is not None:
            idx, v = idx[keep], v[keep]
        if self.slot is not None:
            st.sinks[self.slot].put(idx, v.astype(bool))
        return idx


class _IntNode(_Node):
    __slots__ = ("max_bytes", "slot", "where")

    def __init__(self, max_bytes: int, slot: int | None, where: str) -> None:
        self.max_bytes, self.slot, self.where = max_bytes, slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, v = _varint(st, idx, self.max_bytes, self.where)
        if self.slot is not None:
            st.sinks[self.slot].put(idx, v)
        return idx


class _FloatNode(_Node):
    __slots__ = ("dtype", "size", "slot", "where")

    def __init__(self, size: int, slot: int | None, where: str) -> None:
        self.size, self.slot, self.where = size, slot, where
        self.dtype = "<f4" if size == 4 else "<f8"

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, p = _take(st, idx, self.size, self.where)
        if self.slot is not None:
            raw = st.buf[p[:, None] + _AR[: self.size]]
            st.sinks[self.slot].put(idx, raw.view(self.dtype).reshape(-1))
        return idx


class _BytesNode(_Node):
    __slots__ = ("slot", "where")

    def __init__(self, slot: int | None, where: str) -> None:
        self.slot, self.where = slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, n = _varint(st, idx, MAX_LONG_VARINT_BYTES, self.where)
        p = _rows(st.pos, idx)
        neg = n < 0
        beyond = ~neg & (n > _rows(st.end, idx) - p)
        if neg.any() or beyond.any():
            st.fail(idx[neg], f"negative length at {self.where}")
            st.fail(idx[beyond], f"length beyond record end at {self.where}")
            keep = ~(neg | beyond)
            idx, n, p = idx[keep], n[keep], p[keep]
        _put(st.pos, idx, p + n)
        if self.slot is not None:
            st.sinks[self.slot].put_bytes(idx, p, n)
        return idx


class _FixedNode(_Node):
    __slots__ = ("size", "slot", "where")

    def __init__(self, size: int, slot: int | None, where: str) -> None:
        self.size, self.slot, self.where = size, slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, p = _take(st, idx, self.size, self.where)
        if self.slot is not None:
            st.sinks[self.slot].put_bytes(idx, p, self.size)
        return idx


class _EnumNode(_Node):
    __slots__ = ("slot", "table", "where", "wsyms")

    def __init__(
        self, table: NDArray[np.int64], wsyms: Sequence[str], slot: int | None, where: str
    ) -> None:
        self.table, self.wsyms, self.slot, self.where = table, list(wsyms), slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, v = _varint(st, idx, MAX_INT_VARINT_BYTES, self.where)
        keep = st.split(idx, (v < 0) | (v >= len(self.table)), f"bad enum index at {self.where}")
        if keep is not None:
            idx, v = idx[keep], v[keep]
        mapped = self.table[v]
        unknown = mapped < 0
        if unknown.any():
            for rec, wi in zip(idx[unknown].tolist(), v[unknown].tolist(), strict=True):
                st.fail(
                    np.array([rec], dtype=np.int64),
                    f"enum symbol {self.wsyms[wi]!r} unknown to reader at {self.where}",
                )
            idx, mapped = idx[~unknown], mapped[~unknown]
        if self.slot is not None:
            st.sinks[self.slot].put(idx, mapped)
        return idx


class _UnionNode(_Node):
    __slots__ = ("branches", "where")

    def __init__(self, branches: list[_Node], where: str) -> None:
        self.branches, self.where = branches, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, br = _varint(st, idx, MAX_LONG_VARINT_BYTES, self.where)
        keep = st.split(
            idx, (br < 0) | (br >= len(self.branches)), f"bad union branch index at {self.where}"
        )
        if keep is not None:
            idx, br = idx[keep], br[keep]
        for i, node in enumerate(self.branches):
            sub = idx[br == i]
            if sub.size:
                node.read(st, sub)
        return idx[st.ok[idx]]


class _RecordNode(_Node):
    __slots__ = ("fields",)

    def __init__(self, fields: list[_Node]) -> None:
        self.fields = fields

    def read(self, st: _State, idx: _I64) -> _I64:
        for node in self.fields:
            if not idx.size:
                break
            idx = node.read(st, idx)
        return idx


#: At most this many records left in one array or map: finish them one by one in Python
#: (about 1 µs per item) rather than one numpy pass per item across them (about 20 µs).
#: A record with a long array among short ones would otherwise cost 20 µs per byte.
SCALAR_RECORDS: Final = 4


class _BlockNode(_Node):
    """Skips an array or map: one item of every unfinished record per vectorised pass.

    Items of a zero-byte type are skipped a whole block at a time. When few records are left
    (:data:`SCALAR_RECORDS`), the per-record walker ``blocks`` finishes them.
    """

    __slots__ = ("blocks", "item", "min_item", "where")

    def __init__(self, item: _Node, min_item: int, where: str, blocks: _PyBlocks) -> None:
        self.item, self.min_item, self.where, self.blocks = item, min_item, where, blocks

    def read(self, st: _State, idx: _I64) -> _I64:
        n = len(st.pos)
        rem = np.zeros(n, dtype=np.int64)
        bend = np.full(n, -1, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        cur = idx
        w = self.where
        while cur.size:
            hdr = cur[rem[cur] == 0]
            if hdr.size:
                self._header(st, hdr, rem, bend, done, w)
                cur = cur[st.ok[cur] & ~done[cur]]
                if not cur.size:
                    break
            if cur.size <= SCALAR_RECORDS:
                self._finish(st, cur, rem, bend)
                break
            if not self.min_item:
                # Nothing on the wire per item: the whole block is read.
                rem[cur] = 0
                continue
            survivors = self.item.read(st, cur)
            rem[survivors] -= 1
            cur = survivors
        return idx[st.ok[idx]]

    def _finish(self, st: _State, cur: _I64, rem: _I64, bend: _I64) -> None:
        """Walk the rest of each record's blocks in Python (see :data:`SCALAR_RECORDS`)."""
        raw, blocks = st.raw, self.blocks
        for rec in cur.tolist():
            budget = st.budget(rec)
            try:
                st.pos[rec] = blocks(
                    raw, int(st.pos[rec]), int(st.end[rec]), budget, int(rem[rec]),
                    int(bend[rec]), None, None,
                )  # fmt: skip
            except _DecodeError as exc:
                st.fail(np.array([rec], dtype=np.int64), f"{exc} at {self.where}")
            except RecursionError:
                st.fail(np.array([rec], dtype=np.int64), f"nesting too deep at {self.where}")
            st.settle(rec, budget)

    def _header(
        self, st: _State, hdr: _I64, rem: _I64, bend: _I64, done: NDArray[np.bool_], w: str
    ) -> None:
        hb = bend[hdr]
        keep = st.split(hdr, (hb >= 0) & (st.pos[hdr] != hb), f"block byte size mismatch at {w}")
        if keep is not None:
            hdr = hdr[keep]
        hdr, cnt = _varint(st, hdr, MAX_LONG_VARINT_BYTES, w)
        bend[hdr] = -1
        neg = cnt < 0
        if neg.any():
            cnt_all = np.zeros(len(st.pos), dtype=np.int64)
            cnt_all[hdr] = cnt
            ng, size = _varint(st, hdr[neg], MAX_LONG_VARINT_BYTES, w)
            p = st.pos[ng]
            bad_size = (size < 0) | (size > st.end[ng] - p)
            keep = st.split(ng, bad_size, f"bad block byte size at {w}")
            if keep is not None:
                ng, size, p = ng[keep], size[keep], p[keep]
            bend[ng] = p + size
            cnt_all[ng] = -cnt_all[ng]
            hdr = hdr[st.ok[hdr]]
            cnt = cnt_all[hdr]
        if self.min_item:
            room = st.end[hdr] - st.pos[hdr]
            too_many = (cnt < 0) | (cnt > room // self.min_item)
        else:
            # Zero-byte items: the item budget below bounds them, not the bytes.
            too_many = cnt < 0
        keep = st.split(hdr, too_many, f"block item count beyond record end at {w}")
        if keep is not None:
            hdr, cnt = hdr[keep], cnt[keep]
        keep = st.spend(hdr, cnt, w)
        if keep is not None:
            hdr, cnt = hdr[keep], cnt[keep]
        rem[hdr] = cnt
        done[hdr[cnt == 0]] = True


class _FallbackNode(_Node):
    """Per-record pure-Python reader for types with no vectorised path."""

    __slots__ = ("fn", "slot", "where")

    def __init__(self, fn: _PyRead, slot: int | None, where: str) -> None:
        self.fn, self.slot, self.where = fn, slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        sink = st.sinks[self.slot] if self.slot is not None else None
        good: list[int] = []
        newpos: list[int] = []
        values: list[Any] = []
        raw, fn = st.raw, self.fn
        for rec, p, e in zip(idx.tolist(), st.pos[idx].tolist(), st.end[idx].tolist(), strict=True):
            budget = st.budget(rec)
            try:
                v, q = fn(raw, p, e, budget)
            except _DecodeError as exc:
                st.fail(np.array([rec], dtype=np.int64), f"{exc} at {self.where}")
                continue
            except RecursionError:
                st.fail(np.array([rec], dtype=np.int64), f"nesting too deep at {self.where}")
                continue
            finally:
                st.settle(rec, budget)
            good.append(rec)
            newpos.append(q)
            values.append(v)
        gidx = np.array(good, dtype=np.int64)
        st.pos[gidx] = np.array(newpos, dtype=np.int64)
        if sink is not None and sink.objects is not None and good:
            obj = np.empty(len(values), dtype=object)
            obj[:] = values
            sink.objects[gidx] = obj
            if sink.present is not None:
                sink.present[gidx] = True
        return gidx


class _ConstNode(_Node):
    """Fills the columns of a reader field the writer lacks with its default."""

    __slots__ = ("puts",)

    def __init__(self, puts: list[tuple[int, str, Any]]) -> None:
        self.puts = puts

    def read(self, st: _State, idx: _I64) -> _I64:
        for slot, kind, value in self.puts:
            sink = st.sinks[slot]
            if kind == "bytes":
                off, length = value
                sink.put_bytes(idx, st.const_base + off, length)
            elif kind == "obj":
                assert sink.objects is not None  # noqa: S101
                for rec in idx.tolist():
                    sink.objects[rec] = copy.deepcopy(value)
                if sink.present is not None:
                    sink.present[idx] = value is not None
            else:
                sink.put(idx, value)
        return idx
