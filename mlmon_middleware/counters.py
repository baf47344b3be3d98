"""A model's running counts: written by the pipeline, read by health, checks and gauges.

:class:`Counters` holds what the pipeline has seen so far (predictions by outcome, capture
errors by reason and per feature, labels by outcome, input fields that are not features) behind
one lock, and hands out copies. :class:`BinCounter` counts rows per baseline quantile bin of each
numeric feature since start: summed across replicas, these give fleet-wide PSI in PromQL.

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
from mlmon_middleware.drift.stats import bin_counts, reference_rows
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
    """Rows per baseline quantile bin of each numeric feature, since start (see the module docstring),
    and the chi² value above which a fleet's summed counts of a feature differ from the baseline's
    shares at level ``alpha`` (Bonferroni over the numeric features): what the rendered fleet rules
    compare with, since PromQL has no chi² distribution."""

    def __init__(self, baseline: Baseline, alpha: float) -> None:
        from scipy.stats import chi2

        self.names = baseline.schema.numeric_names
        # per numeric feature: the baseline's interior bin edges
        self.cuts = [np.asarray(baseline.features[n].get("bin_edges") or [np.nan, np.nan], dtype=float)[1:-1]
                     for n in self.names]
        self.counts = np.zeros((len(self.cuts), max((len(c) + 1 for c in self.cuts), default=1)), dtype=np.int64)
        tested = max(sum(len(c) > 0 for c in self.cuts), 1)
        self.critical = {name: float(chi2.isf(alpha / tested, len(c))) for name, c in zip(self.names, self.cuts) if len(c)}
        # the reference's size for the fleet's two-sample test: the rows the bin shares come from
        self.reference_rows = {name: reference_rows(baseline.features[name]) for name in self.critical}

    def add(self, numeric: np.ndarray) -> None:
        """Count a batch of encoded rows (n × numeric features); the pipeline thread only."""
        for j, cuts in enumerate(self.cuts):
            self.counts[j, :len(cuts) + 1] += bin_counts(numeric[:, j], cuts)

    def items(self) -> list[tuple[str, int, int]]:
        """``(feature, bin, rows)`` of every bin."""
        return [(name, b, int(self.counts[j, b])) for j, name in enumerate(self.names) for b in range(len(self.cuts[j]) + 1)]
