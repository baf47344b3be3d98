"""Profiler: the statistics a baseline keeps, accumulated chunk by chunk in bounded memory.

Counts, missing rates, min, max, mean and standard deviation (Chan et al.'s pairwise update) and
category frequencies are exact over every row. Quantile bin edges (or, for a numeric feature
with at most ``MAX_DISCRETE`` distinct values, one bin per value), the bin proportions and the
KS/Wasserstein reference grid (:func:`reference_grid`) come from a uniform reservoir of
``sample_rows`` rows (Vitter's Algorithm R, vectorised per chunk): exact when the data has no
more rows than that, otherwise a uniform random sample (the bin shares then carry a standard
error below 0.001 at the default 200,000 rows), and the KS test then counts the reservoir's rows
as the reference's size. Memory is the reservoir plus one chunk, whatever the size of the data.

>>> import numpy as np
>>> from mlmon_middleware.schema import FeatureSchema
>>> p = Profiler(FeatureSchema(["x", "c"], ["numeric", "categorical"]), sample_rows=1000)
>>> rng = np.random.default_rng(0)
>>> for _ in range(5):
...     p.add(rng.normal(0, 1, (400, 1)), rng.choice(["a", "b"], (400, 1)).astype(object))
>>> profiles = p.profiles(bins=10, sample_size=200)
>>> profiles["x"]["count"], len(profiles["x"]["sample"]), sorted(profiles["c"]["frequencies"])
(2000, 200, ['a', 'b'])
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from mlmon_middleware.drift.stats import OTHER, bin_counts
from mlmon_middleware.schema import CATEGORICAL, NUMERIC, FeatureSchema

MAX_CATEGORIES = 1000  # categories beyond the most frequent ones are pooled as "__other__"
MAX_DISCRETE = 20  # a numeric feature with at most this many distinct values is binned by value


def reference_grid(values_sorted: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The reference's distribution as at most ``size`` sorted values, and how far the grid's
    empirical CDF can be from the reference's (0 when the grid is every value).

    Beyond ``size`` values the grid holds the order statistics at the probabilities
    ``(i + 1/2) / size``: its CDF is then within ``1 / (2 size)`` of the reference's everywhere,
    ties included, so a KS test against the grid, made that much more cautious, is a KS test
    against the whole reference (unlike a random sample, whose CDF error is of order
    ``1 / sqrt(size)``).

    >>> grid, error = reference_grid(np.arange(10_000.0), 100)
    >>> len(grid), grid[:3].tolist(), error
    (100, [50.0, 150.0, 250.0], 0.005)
    """
    n = len(values_sorted)
    if n <= size:
        return values_sorted, 0.0
    index = np.floor((np.arange(size) + 0.5) * n / size).astype(np.int64)
    return values_sorted[index], 0.5 / size


class Profiler:
    """Accumulates a schema's numeric and categorical columns; see the module docstring."""

    def __init__(self, schema: FeatureSchema, sample_rows: int = 200_000, seed: int = 0) -> None:
        self.schema = schema
        self.sample_rows = sample_rows
        self._rng = np.random.default_rng(seed)
        k = len(schema.numeric_names)
        self.rows = 0
        self._present = np.zeros(k, dtype=np.int64)
        self._min = np.full(k, np.inf)
        self._max = np.full(k, -np.inf)
        self._mean = np.zeros(k)
        self._m2 = np.zeros(k)
        self._reservoir = np.empty((0, k))
        self._categories: list[collections.Counter[str]] = [collections.Counter() for _ in schema.categorical_names]
        self._cat_missing = np.zeros(len(schema.categorical_names), dtype=np.int64)

    def add(self, numeric: np.ndarray, categorical: np.ndarray) -> None:
        """Add a chunk: an (n × numeric features) float matrix with NaN for missing values and an
        (n × categorical features) object matrix with None for missing values."""
        numeric = np.asarray(numeric, dtype=np.float64)  # a float32 window's values: sums in float64
        n = numeric.shape[0] if numeric.ndim == 2 and numeric.shape[1] else categorical.shape[0]
        if n == 0:
            return
        if numeric.shape[1]:
            self._add_numeric(numeric)
        for j, counter in enumerate(self._categories):
            column = categorical[:, j].tolist()
            counter.update(v for v in column if v is not None)
            self._cat_missing[j] += sum(1 for v in column if v is None)
        self.rows += n

    def _add_numeric(self, numeric: np.ndarray) -> None:
        present = ~np.isnan(numeric)
        count = present.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            chunk_mean = np.where(count > 0, np.nansum(numeric, axis=0) / np.maximum(count, 1), 0.0)
            deviations = np.where(present, numeric - chunk_mean, 0.0)
        chunk_m2 = (deviations ** 2).sum(axis=0)
        total = self._present + count
        delta = chunk_mean - self._mean
        safe = np.maximum(total, 1)
        self._mean = self._mean + delta * count / safe
        self._m2 = self._m2 + chunk_m2 + delta ** 2 * self._present * count / safe
        self._present = total
        self._min = np.fmin(self._min, np.nanmin(np.where(present, numeric, np.inf), axis=0))
        self._max = np.fmax(self._max, np.nanmax(np.where(present, numeric, -np.inf), axis=0))
        self._sample(numeric)

    def _sample(self, numeric: np.ndarray) -> None:
        room = self.sample_rows - len(self._reservoir)
        if room > 0:
            self._reservoir = np.vstack([self._reservoir, numeric[:room]])
            numeric = numeric[room:]
        if len(numeric) == 0:
            return
        seen = self.rows + room if room > 0 else self.rows  # rows before this remainder
        index = seen + np.arange(len(numeric))
        slots = (self._rng.random(len(numeric)) * (index + 1)).astype(np.int64)  # uniform in [0, index]
        keep = slots < self.sample_rows
        self._reservoir[slots[keep]] = numeric[keep]  # later rows overwrite earlier ones, as in sequence

    def numeric_rows(self) -> np.ndarray:
        """The reservoir's numeric rows, missing values as NaN (what a multivariate model fits)."""
        return self._reservoir

    def background(self, rows: int, rng: np.random.Generator) -> list[list[float]]:
        """Up to ``rows`` whole numeric rows drawn from the reservoir (complete rows only): the
        background sample of explainers that need one."""
        reservoir = self._reservoir
        complete = reservoir[~np.isnan(reservoir).any(axis=1)] if len(reservoir) else reservoir
        if len(complete) > rows:
            complete = complete[rng.choice(len(complete), rows, replace=False)]
        rows_out: list[list[float]] = complete.tolist()
        return rows_out

    def profiles(self, bins: int, sample_size: int) -> dict[str, dict[str, Any]]:
        """The profile of every feature, in schema order (see :class:`~mlmon_middleware.Baseline`)."""
        out: dict[str, dict[str, Any]] = {}
        for j, name in enumerate(self.schema.numeric_names):
            out[name] = self._numeric_profile(j, bins, sample_size)
        for j, name in enumerate(self.schema.categorical_names):
            out[name] = self._categorical_profile(j)
        return {name: out[name] for name in self.schema.names}

    def _numeric_profile(self, j: int, bins: int, sample_size: int) -> dict[str, Any]:
        n, present = self.rows, int(self._present[j])
        if present == 0:
            return {"kind": NUMERIC, "count": n, "missing_rate": 1.0 if n else 0.0, "bin_edges": [],
                    "bin_proportions": [1.0], "sample": [], "min": None, "max": None, "mean": None, "std": None}
        values = np.sort(self._reservoir[:, j])
        values = values[~np.isnan(values)]
        distinct = np.unique(values)
        if len(distinct) <= MAX_DISCRETE:  # bins by value, cut halfway between neighbours
            edges = np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2, distinct[-1:]])
        else:
            edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
        cuts = edges[1:-1]  # interior edges; the outer bins are open to -inf and +inf
        counts = bin_counts(values, cuts)
        grid, error = reference_grid(values, sample_size)
        return {
            "kind": NUMERIC, "count": n, "missing_rate": float(1 - present / n),
            "bin_edges": edges.tolist(), "bin_proportions": (counts / len(values)).tolist(),
            "discrete": bool(len(distinct) <= MAX_DISCRETE),
            "sample": grid.tolist(), "reference_rows": len(values), "grid_error": error,
            "min": float(self._min[j]), "max": float(self._max[j]), "mean": float(self._mean[j]),
            "std": float(np.sqrt(self._m2[j] / (present - 1))) if present > 1 else 0.0,
        }

    def _categorical_profile(self, j: int) -> dict[str, Any]:
        counter, n = self._categories[j], self.rows
        present = sum(counter.values())
        ranked = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))
        freqs = {str(cat): count / present for cat, count in ranked[:MAX_CATEGORIES]}
        if len(ranked) > MAX_CATEGORIES:
            freqs[OTHER] = sum(count for _, count in ranked[MAX_CATEGORIES:]) / present
        return {"kind": CATEGORICAL, "count": n, "missing_rate": float(self._cat_missing[j] / n) if n else 0.0,
                "frequencies": freqs}
