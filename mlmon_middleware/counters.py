"""A model's running counts: written by the pipeline, read by health, checks and gauges.

:class:`Counters` holds what the pipeline has seen so far (predictions by outcome, capture
errors by reason and per feature, labels by outcome, input fields that are not features) behind
one lock, and hands out copies. :class:`BinCounter` counts rows per baseline bin of each feature
(quantile bins, or categories) since start: summed across replicas, these give fleet-wide PSI in PromQL.

>>> c = Counters()
>>> c.add_batch({"ok": 2}, {"invalid_json": 1}, {"invalid_json": "Expecting value"})
>>> c.counts().predictions, c.counts().capture_errors
({'ok': 2, 'error': 0}, {'invalid_json': 1})
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping

import numpy as np

from mlmon_middleware.analyzer import Counts
from mlmon_middleware.baseline import Baseline
from mlmon_middleware.drift.stats import OTHER, bin_counts, reference_rows
from mlmon_middleware.reports import Coverage

MAX_UNMONITORED_FIELDS = 1000  # distinct unmonitored field names kept per model (inputs may carry anything)


class Counters:
    """See the module docstring; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._predictions: collections.Counter[str] = collections.Counter()
        self._capture_errors: collections.Counter[str] = collections.Counter()
        self._feature_errors: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._last_capture_error: dict[str, str] = {}
        self._labels: collections.Counter[str] = collections.Counter()
        self._unmonitored: collections.Counter[str] = collections.Counter()  # fields received but not features

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held by one of its threads)."""
        self._lock = threading.Lock()

    def add_batch(self, predictions: Mapping[str, int], capture: Mapping[str, int], messages: Mapping[str, str]) -> None:
        """One pipeline batch: predictions by outcome, capture errors by reason, last message per reason."""
        with self._lock:
            self._predictions.update(predictions)
            self._capture_errors.update(capture)
            self._last_capture_error.update(messages)

    def add_encoding(self, feature_errors: Mapping[str, Mapping[str, int]], unexpected_fields: Mapping[str, int]) -> None:
        """Per-feature problems and unmonitored fields found while encoding rows."""
        if not feature_errors and not unexpected_fields:
            return
        with self._lock:
            for feature, counts in feature_errors.items():
                self._feature_errors[feature].update(counts)
            for field, n in unexpected_fields.items():
                if field in self._unmonitored or len(self._unmonitored) < MAX_UNMONITORED_FIELDS:
                    self._unmonitored[field] += n

    def add_labels(self, outcomes: Mapping[str, int]) -> None:
        with self._lock:
            self._labels.update(outcomes)

    def counts(self) -> Counts:
        """A copy of the counts the checks read."""
        with self._lock:
            return Counts({"ok": self._predictions["ok"], "error": self._predictions["error"]}, dict(self._capture_errors),
                          {feature: dict(counts) for feature, counts in self._feature_errors.items()})

    def last_capture_errors(self) -> dict[str, str]:
        with self._lock:
            return dict(self._last_capture_error)

    def labels(self) -> dict[str, int]:
        with self._lock:
            return dict(self._labels)

    def coverage(self, features: int) -> Coverage:
        """``features`` monitored against the fields received: those plus every unmonitored
        field seen in input rows (with the rows carrying it); ratio 1.0 means all are watched."""
        with self._lock:
            unmonitored = dict(self._unmonitored.most_common())
        received = features + len(unmonitored)
        return {"monitored": features, "received": received, "ratio": features / received if received else 1.0,
                "unmonitored_fields": unmonitored}


class BinCounter:
    """Rows per baseline bin of each feature, since start (see the module docstring), and the
    chi² value above which a fleet's summed counts of a feature differ from the baseline's
    shares at level ``alpha`` (Bonferroni over the features): what the rendered fleet rules
    compare with, since PromQL has no chi² distribution.

    A numeric feature's bins are the baseline's quantile bins; a categorical feature's are its
    baseline categories in the baseline's order, then one bin for every category the baseline
    never saw (unless the baseline pooled its rare categories as ``__other__``, where those go,
    as in the in-process check). Bins are exported by index: no category value leaves.

    >>> from mlmon_middleware.baseline import Baseline
    >>> b = BinCounter(Baseline.from_data([{"c": "a"}, {"c": "a"}, {"c": "b"}]), alpha=0.05)
    >>> b.add(np.empty((3, 0)), np.array([["a"], ["z"], [None]], dtype=object))
    >>> b.items(), b.reference_shares()
    ([('c', 0, 1), ('c', 1, 0), ('c', 2, 1)], [('c', 0, 0.6666666666666666), ('c', 1, 0.3333333333333333), ('c', 2, 0.0)])
    """

    def __init__(self, baseline: Baseline, alpha: float) -> None:
        from scipy.stats import chi2

        schema = baseline.schema
        self.names = schema.numeric_names
        # per numeric feature: the baseline's interior bin edges
        self.cuts = [np.asarray(baseline.features[n].get("bin_edges") or [np.nan, np.nan], dtype=float)[1:-1]
                     for n in self.names]
        self.counts = np.zeros((len(self.cuts), max((len(c) + 1 for c in self.cuts), default=1)), dtype=np.int64)
        # per categorical feature: the baseline's shares by category, and where each category counts
        self.categorical = schema.categorical_names
        frequencies = [dict(baseline.features.get(n, {}).get("frequencies") or {}) for n in self.categorical]
        self.shares = [_shares(f) for f in frequencies]
        self.index = [{c: i for i, c in enumerate(f)} for f in frequencies]
        self.unlisted = [f_index.get(OTHER, len(f_index)) for f_index in self.index]  # the bin of unseen categories
        self.category_counts = [np.zeros(len(shares), dtype=np.int64) for shares in self.shares]
        dofs = {name: len(c) for name, c in zip(self.names, self.cuts) if len(c)}
        # a categorical feature's test has the baseline's categories less one degree of freedom, as
        # the in-process test has when no new category appears (the unseen bin is empty then)
        dofs.update({name: len(f) - 1 for name, f in zip(self.categorical, frequencies) if f})
        tested = max(len(dofs), 1)
        self.critical = {name: float(chi2.isf(alpha / tested, dof)) for name, dof in dofs.items() if dof > 0}
        # the reference's size for the fleet's two-sample test: the rows the bin shares come from
        self.reference_rows = {name: reference_rows(baseline.features[name]) for name in self.critical}

    def add(self, numeric: np.ndarray, categorical: np.ndarray | None = None) -> None:
        """Count a batch of encoded rows (n × numeric and n × categorical features); the pipeline thread only."""
        for j, cuts in enumerate(self.cuts):
            self.counts[j, :len(cuts) + 1] += bin_counts(numeric[:, j], cuts)
        if categorical is None:
            return
        for j, index in enumerate(self.index):
            if not index:
                continue
            seen = collections.Counter(categorical[:, j].tolist())
            seen.pop(None, None)
            counts, unlisted = self.category_counts[j], self.unlisted[j]
            for value, n in seen.items():
                counts[index.get(value, unlisted)] += n

    def items(self) -> list[tuple[str, int, int]]:
        """``(feature, bin, rows)`` of every bin."""
        numeric = [(name, b, int(self.counts[j, b])) for j, name in enumerate(self.names) for b in range(len(self.cuts[j]) + 1)]
        return numeric + [(name, b, int(n)) for name, counts, index in zip(self.categorical, self.category_counts, self.index)
                          if index for b, n in enumerate(counts)]

    def reference_shares(self) -> list[tuple[str, int, float]]:
        """``(feature, bin, baseline share)`` of every categorical bin (numeric bins' shares are
        the baseline's ``bin_proportions``)."""
        return [(name, b, float(share)) for name, shares in zip(self.categorical, self.shares) for b, share in enumerate(shares)]


def _shares(frequencies: Mapping[str, float]) -> np.ndarray:
    """A baseline's category shares, normalised, and a last bin (share 0) for unseen categories
    unless the baseline pools them as ``__other__``."""
    shares = np.fromiter(frequencies.values(), float, len(frequencies))
    shares = shares / shares.sum() if shares.sum() > 0 else shares
    return shares if OTHER in frequencies or not len(shares) else np.append(shares, 0.0)
