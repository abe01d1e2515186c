"""Categorical bins straight from the decoder's columns, without a Python step per event.

Drift counts a categorical input into the card's categories plus ``other``. For the columnar
decoder's columns that needs no ``str`` per row:

- an enum column carries each row's symbol index: the symbols are looked up once and the
  rows gathered (:func:`category_codes`);
- a string column is a byte buffer with offsets: each row's bytes are read as 64-bit words
  (one gather per word), folded into one hash and looked up with ``np.searchsorted`` among the
  hashes of the card's categories, and a match is confirmed word by word, so a hash collision
  counts as ``other`` instead of as another category (:class:`ByteCategories`).

Any other column (the fastavro reference decoder's, offline input) goes through its Python
values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_scorer.decode.columnar import BytesColumn, EnumColumn
from stream_scorer.records import FieldColumn

__all__ = ["ByteCategories", "category_codes"]

#: Odd 64-bit multiplier (splitmix64's) folding the words of a value into one hash.
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
#: ``_MASKS[k]`` keeps the low ``k`` bytes of a little-endian word.
_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], dtype=np.uint64)
#: Byte offsets of word k within a value.
_OFFSETS = [np.arange(8 * k, 8 * k + 8, dtype=np.int64) for k in range(64)]


def _fold(length: NDArray[np.uint64], words: list[NDArray[np.uint64]]) -> NDArray[np.uint64]:
    hashed = length.copy()
    for word in words:
        hashed = (hashed * _HASH_MULTIPLIER) ^ word
    return hashed


class ByteCategories:
    """The card's categories as hashed 64-bit words, to bin string columns by bytes."""

    def __init__(self, categories: Sequence[str]) -> None:
        """Encode ``categories`` (bin ``i`` is ``categories[i]``; ``other`` is the next)."""
        raw = [c.encode("utf-8") for c in categories]
        self.other = len(raw)
        self.words = max(1, -(-max((len(r) for r in raw), default=0) // 8))
        width = 8 * self.words
        padded = np.zeros((len(raw), width), dtype=np.uint8)
        for i, r in enumerate(raw):
            padded[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
        self._length = np.array([len(r) for r in raw], dtype=np.uint64)
        self._word = [np.ascontiguousarray(padded[:, 8 * k : 8 * k + 8]).view("<u8").reshape(-1)
                      for k in range(self.words)]  # fmt: skip
        # _masks[k][n]: the bytes of word k that belong to a value of n bytes (np.clip is
        # a slow Python wrapper; one gather from a small table is not).
        n_bytes = np.arange(width + 1)
        self._masks = [_MASKS[np.minimum(np.maximum(n_bytes - 8 * k, 0), 8)]
                       for k in range(self.words)]  # fmt: skip
        hashed = _fold(self._length, self._word)
        self._order = np.argsort(hashed, kind="stable")
        self._sorted = hashed[self._order]

    def bins(self, column: BytesColumn) -> NDArray[np.intp]:
        """The bin of every row of ``column`` (null rows get an arbitrary bin: mask them)."""
        n = len(column.start)
        if not n or not len(self._sorted):
            return np.full(n, self.other, dtype=np.intp)
        buffer = column.buffer
        last = len(buffer) - 1
        length = column.length
        capped = np.minimum(length, 8 * self.words)
        words = []
        for k in range(self.words):
            # The 8 bytes of word k of every row, in one gather; an index past the buffer's end
            # is clamped and its byte masked off below (it is past the value's length).
            index = np.minimum(column.start[:, None] + _OFFSETS[k], last)
            word = buffer[index].view("<u8").reshape(-1)
            words.append(word & self._masks[k][capped])
        hashed = _fold(length.astype(np.uint64), words)
        at = np.minimum(np.searchsorted(self._sorted, hashed), len(self._sorted) - 1)
        candidate = self._order[at]
        match = (self._sorted[at] == hashed) & (self._length[candidate] == length)
        for k, word in enumerate(words):
            match &= self._word[k][candidate] == word
        # Longer than every category: only its first words were compared, so no match.
        match &= length <= 8 * self.words
        return np.where(match, candidate, self.other).astype(np.intp)


def category_codes(column: FieldColumn) -> tuple[NDArray[np.intp], list[str]]:
    """``(codes, distinct)`` with ``distinct[codes[i]]`` the value of row ``i`` (null rows
    hold an arbitrary code: mask them with ``column.null``)."""
    if isinstance(column, EnumColumn):
        return column.index.astype(np.intp), list(column.symbols)
    values: NDArray[Any] = column.to_objects()
    # An object array of str: numpy's fixed-width strings would drop trailing NULs.
    text = np.empty(len(values), dtype=object)
    text[:] = ["" if v is None else str(v) for v in values.tolist()]
    distinct, inverse = np.unique(text, return_inverse=True)
    return inverse.reshape(-1).astype(np.intp), [str(v) for v in distinct.tolist()]
