"""The reference a model is watched against: frozen bins per input and for the score.

Computed once, from the training data, by :func:`build_reference` (``models/train_fraud.py``
calls it) and stored in ``model.json`` under ``reference``; read back by
:meth:`Reference.from_card`. The stream never recomputes bins: a window is counted into the
card's bins, so a PSI today and a PSI last month compare the same thing (the opposite of
re-binning per run, Evidently #506).

- A **numeric** input (numbers, booleans, timestamps) has ``edges``: the distinct deciles of
  its non-null training values, or its distinct values when it has at most :data:`N_BINS`.
  Bin ``i`` holds ``edges[i-1] <= x < edges[i]``; the first and last bins are open, so a
  value outside the training range still lands somewhere.
- A **categorical** input (strings, enum symbols) has ``categories``, the most frequent
  training values (at most :data:`MAX_CATEGORIES`), and one more ``other`` bucket for every
  value not listed: a category never seen in training is counted there, and its share is the
  window's unseen-category rate.
- Every input has ``null_rate``, the share of nulls; ``freq`` is over the non-null values.
- ``chunk_psi`` is the mean and standard deviation of the PSI of consecutive
  ``chunk_size``-event chunks of the training data against the whole: the spread of the metric
  when nothing has changed, from which learned thresholds are set (NannyML's mean ± 3σ).

The distribution compared is the bins plus one null bin, so a change in the null rate moves
the PSI too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from stream_scorer.errors import ConfigurationError
from stream_scorer.monitoring.codes import ByteCategories

__all__ = [
    "CHUNK_SIZE",
    "EPS",
    "MAX_CATEGORIES",
    "N_BINS",
    "SCORE",
    "FeatureReference",
    "Reference",
    "build_reference",
    "feature_reference",
    "js_distance",
    "psi",
]

#: Quantile bins per numeric input (fewer when values repeat).
N_BINS = 10
#: Most categories kept per categorical input; the rest share the ``other`` bucket.
MAX_CATEGORIES = 50
#: Events per reference chunk for the spread of the metric when nothing changed.
CHUNK_SIZE = 5000
#: Smallest share a bin is given in PSI: an empty bin would make the logarithm infinite.
EPS = 1e-4
#: The pseudo-input the score's drift is reported under (gauge label ``input``).
SCORE = "_score"

Kind = Literal["numeric", "categorical"]


def psi(expected: NDArray[np.float64], actual: NDArray[np.float64]) -> float:
    """Population stability index of two distributions over the same bins.

    Both are shares (they are renormalised); shares below :data:`EPS` are raised to it so an
    empty bin counts as rare, not impossible.
    """
    p = np.maximum(expected / max(expected.sum(), 1e-300), EPS)
    q = np.maximum(actual / max(actual.sum(), 1e-300), EPS)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(expected: NDArray[np.float64], actual: NDArray[np.float64]) -> float:
    """Jensen–Shannon distance (base 2, in [0, 1]) of two distributions over the same bins."""
    p = expected / max(expected.sum(), 1e-300)
    q = actual / max(actual.sum(), 1e-300)
    m = (p + q) / 2

    def kl(a: NDArray[np.float64]) -> float:
        nz = a > 0  # 0 · log 0 = 0; m > 0 wherever a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


@dataclass(frozen=True, slots=True)
class FeatureReference:
    """The frozen bins of one input (or of the score) and their training shares."""

    kind: Kind
    #: Numeric: inner bin edges, ascending (``len(edges) + 1`` bins).
    edges: NDArray[np.float32]
    #: Categorical: the listed categories (bin ``i``); ``other`` is bin ``len(categories)``.
    categories: tuple[str, ...]
    #: Shares of the non-null values per bin (sum 1).
    freq: NDArray[np.float64]
    null_rate: float
    #: Mean and standard deviation of chunk PSI on the reference (None when not recorded).
    chunk_psi: tuple[float, float] | None
    chunk_size: int
    #: Category to bin, built once (the stream looks up each batch's distinct values in it).
    lookup: Mapping[str, int] = field(init=False, repr=False, compare=False)
    #: The categories as hashed words, to bin the columnar decoder's string columns by bytes.
    by_bytes: ByteCategories = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Index the categories."""
        object.__setattr__(self, "lookup", {c: i for i, c in enumerate(self.categories)})
        object.__setattr__(self, "by_bytes", ByteCategories(self.categories))

    @property
    def n_bins(self) -> int:
        """Bins over non-null values (the null bin not counted)."""
        return len(self.freq)

    def expected(self) -> NDArray[np.float64]:
        """Reference shares over the bins and the null bin (sum 1)."""
        return np.append(self.freq * (1.0 - self.null_rate), self.null_rate)

    def counts(self, values: NDArray[Any], null: NDArray[np.bool_] | None) -> NDArray[np.int64]:
        """Counts per bin, then nulls: one ``searchsorted``/``bincount`` pass, no Python loop
        over events (categorical values go through a lookup of the batch's distinct values)."""
        if null is not None and null.any():
            present = values[~null]
            nulls = int(null.sum())
        else:
            present, nulls = values, 0
        if self.kind == "numeric":
            x = np.asarray(present, dtype=np.float32)
            nan = np.isnan(x)
            if nan.any():  # a NaN in a float field is a missing value to the model: a null
                nulls += int(nan.sum())
                x = x[~nan]
            idx = np.searchsorted(self.edges, x, side="right")
        else:
            distinct, inverse = np.unique(_as_text(present), return_inverse=True)
            idx = self.bins_of(distinct.tolist())[inverse.reshape(-1)]
        out = np.bincount(idx, minlength=self.n_bins + 1)
        out[-1] = nulls  # bincount never reaches the last slot: it is the null bin
        return out.astype(np.int64)

    def bins_of(self, distinct: list[str]) -> NDArray[np.intp]:
        """The bin of each distinct category (``other`` for any the card does not list)."""
        other = len(self.categories)
        index = self.lookup
        return np.fromiter(
            (index.get(v, other) for v in distinct), dtype=np.intp, count=len(distinct)
        )

    def counts_coded(
        self, codes: NDArray[np.intp], distinct: list[str], null: NDArray[np.bool_] | None
    ) -> NDArray[np.int64]:
        """Categorical counts from dictionary codes: row ``i`` holds ``distinct[codes[i]]``.

        The lookup runs once per distinct value of the batch, the rest is one gather and one
        ``bincount``.
        """
        return self.counts_binned(self.bins_of(distinct)[codes], null)

    def counts_binned(
        self, idx: NDArray[np.intp], null: NDArray[np.bool_] | None
    ) -> NDArray[np.int64]:
        """Counts from each row's bin (null rows, whatever their bin, count as null)."""
        if null is not None and null.any():
            idx = idx[~null]
            nulls = int(null.sum())
        else:
            nulls = 0
        out = np.bincount(idx, minlength=self.n_bins + 1)
        out[-1] = nulls
        return out.astype(np.int64)

    def to_json(self) -> dict[str, Any]:
        """The card's ``reference`` entry for this input."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "numeric":
            out["edges"] = [float(e) for e in self.edges]
        else:
            out["categories"] = list(self.categories)
        out["freq"] = [round(float(f), 6) for f in self.freq]
        out["null_rate"] = round(self.null_rate, 6)
        if self.chunk_psi is not None:
            out["chunk_psi"] = {
                "mean": round(self.chunk_psi[0], 6),
                "std": round(self.chunk_psi[1], 6),
            }
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str, chunk_size: int) -> FeatureReference:
        """Parse one entry; raises ``ConfigurationError`` naming ``where``."""
        try:
            if not isinstance(raw, Mapping):
                msg = "expected an object"
                raise TypeError(msg)
            kind = raw["kind"]
            freq = np.asarray(raw["freq"], dtype=np.float64)
            edges = np.asarray(raw.get("edges", []), dtype=np.float32)
            categories = tuple(str(c) for c in raw.get("categories", []))
            if kind == "numeric":
                expected_bins = len(edges) + 1
                if np.any(np.diff(edges) <= 0):
                    msg = "edges must be strictly ascending"
                    raise ValueError(msg)
            elif kind == "categorical":
                expected_bins = len(categories) + 1
            else:
                msg = f"kind must be 'numeric' or 'categorical', got {kind!r}"
                raise ValueError(msg)
            if freq.shape != (expected_bins,) or np.any(freq < 0) or freq.sum() <= 0:
                msg = f"freq must be {expected_bins} non-negative shares"
                raise ValueError(msg)
            null_rate = float(raw.get("null_rate", 0.0))
            if not 0.0 <= null_rate <= 1.0:
                msg = f"null_rate must be in [0, 1], got {null_rate}"
                raise ValueError(msg)
            spread = raw.get("chunk_psi")
            chunk = None if spread is None else (float(spread["mean"]), float(spread["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"model card reference {where}: {exc}"
            raise ConfigurationError(msg) from exc
        return cls(kind, edges, categories, freq / freq.sum(), null_rate, chunk, chunk_size)


def _chunk_spread(
    ref: FeatureReference, values: NDArray[Any], chunk_size: int
) -> tuple[float, float] | None:
    n_chunks = len(values) // chunk_size
    if n_chunks < 2:
        return None
    expected = ref.expected()
    psis = []
    for i in range(n_chunks):
        chunk = values[i * chunk_size : (i + 1) * chunk_size]
        psis.append(psi(expected, ref.counts(chunk, _nulls(chunk)).astype(np.float64)))
    return float(np.mean(psis)), float(np.std(psis, ddof=1))


def _as_text(values: NDArray[Any]) -> NDArray[np.object_]:
    """Values as an object array of ``str`` (not numpy's fixed-width strings, which drop
    trailing NUL characters and would merge ``"a"`` with ``"a\\x00"``)."""
    out = np.empty(len(values), dtype=object)
    out[:] = [v if isinstance(v, str) else str(v) for v in values.tolist()]
    return out


def _nulls(values: NDArray[Any]) -> NDArray[np.bool_] | None:
    if values.dtype == object:
        return np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    return None  # float columns carry nulls as NaN, which counts() treats as null


def feature_reference(
    values: NDArray[Any], kind: Kind, chunk_size: int = CHUNK_SIZE
) -> FeatureReference:
    """Freeze the bins of one input from its training values.

    Args:
        values: One value per training event: float (NaN for null) for numeric inputs,
            objects (``None`` for null) for categorical ones.
        kind: ``numeric`` or ``categorical``.
        chunk_size: Events per chunk for the spread of PSI when nothing changed.
    """
    null = _nulls(values)
    present = values if null is None else values[~null]
    if kind == "numeric":
        x = np.asarray(present, dtype=np.float32)
        x = x[~np.isnan(x)]
        distinct = np.unique(x)
        if len(distinct) <= N_BINS:
            # Few values (booleans, small counts): one bin each, as deciles would merge a rare
            # value into its common neighbour and hide a shift between them.
            edges = distinct
        else:
            quantiles = np.quantile(x, np.linspace(0, 1, N_BINS + 1)[1:-1])
            edges = np.unique(quantiles.astype(np.float32))
        ref = FeatureReference(kind, edges, (), np.ones(len(edges) + 1), 0.0, None, chunk_size)
    else:
        distinct, counts = np.unique(_as_text(present), return_counts=True)
        order = np.argsort(-counts, kind="stable")[:MAX_CATEGORIES]
        categories = tuple(str(c) for c in distinct[order])
        ref = FeatureReference(
            kind,
            np.array([], dtype=np.float32),
            categories,
            np.ones(len(categories) + 1),
            0.0,
            None,
            chunk_size,
        )
    counts_all = ref.counts(values, null).astype(np.float64)
    n = counts_all.sum()
    present_n = n - counts_all[-1]
    freq = counts_all[:-1] / present_n if present_n else np.full(ref.n_bins, 1.0 / ref.n_bins)
    ref = FeatureReference(
        kind, ref.edges, ref.categories, freq, float(counts_all[-1] / n), None, chunk_size
    )
    spread = _chunk_spread(ref, values, chunk_size)
    return FeatureReference(
        kind, ref.edges, ref.categories, freq, ref.null_rate, spread, chunk_size
    )


@dataclass(frozen=True, slots=True)
class Reference:
    """A model version's reference: one :class:`FeatureReference` per field and the score."""

    #: By event field name (what the stream decodes), in card order.
    inputs: Mapping[str, FeatureReference]
    score: FeatureReference | None
    chunk_size: int

    @classmethod
    def from_card(cls, raw_card: Mapping[str, Any]) -> Reference | None:
        """The card's ``reference`` section parsed, or None when the card has none.

        Raises:
            ConfigurationError: The section is malformed (the message names the entry).
        """
        raw = raw_card.get("reference")
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or not isinstance(raw.get("inputs"), Mapping):
            msg = "model card reference: expected an object with 'inputs'"
            raise ConfigurationError(msg)
        chunk_size = raw.get("chunk_size", CHUNK_SIZE)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            msg = (
                f"model card reference chunk_size: expected a positive integer, got {chunk_size!r}"
            )
            raise ConfigurationError(msg)
        inputs = {
            str(name): FeatureReference.from_json(entry, f"inputs.{name}", chunk_size)
            for name, entry in raw["inputs"].items()
        }
        score_raw = raw.get("score")
        score = (
            None
            if score_raw is None
            else FeatureReference.from_json(score_raw, "score", chunk_size)
        )
        return cls(inputs, score, chunk_size)


def build_reference(
    columns: Mapping[str, NDArray[Any]],
    kinds: Mapping[str, Kind],
    scores: NDArray[np.float64] | None,
    chunk_size: int = CHUNK_SIZE,
    source: str = "",
) -> dict[str, Any]:
    """The card's ``reference`` section from training columns and (holdout) scores.

    Args:
        columns: Field name to one value per training event (see :func:`feature_reference`).
        kinds: Field name to ``numeric`` or ``categorical``.
        scores: The model's scores on held-out events, or None.
        chunk_size: Events per reference chunk.
        source: Where the data came from, for people reading the card.
    """
    out: dict[str, Any] = {
        "source": source,
        "chunk_size": chunk_size,
        "n_bins": N_BINS,
        "max_categories": MAX_CATEGORIES,
        "inputs": {
            name: feature_reference(
                np.asarray(values).reshape(-1), kinds[name], chunk_size
            ).to_json()
            for name, values in columns.items()
        },
    }
    if scores is not None:
        out["score"] = feature_reference(
            np.asarray(scores, dtype=np.float64), "numeric", chunk_size
        ).to_json()
    return out
