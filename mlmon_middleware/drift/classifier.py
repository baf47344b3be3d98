"""Multivariate drift by a domain classifier: can a small model tell the window's rows from the
reference's? (Alibi Detect's ``ClassifierDrift``, with a test whose level is known.)

The PCA reconstruction (:mod:`~mlmon_middleware.drift.multivariate`) sees linear structure; a
classifier sees any difference in the joint distribution it can learn: a correlation that flips,
a dependence that is not linear, a change in which features are missing together.

**At baseline build** the baseline keeps a random sample of reference rows over the numeric
features with at least two distinct values (missing values as NaN): at most
:data:`MAX_REFERENCE` rows and :data:`MAX_CELLS` values. Fewer than :data:`MIN_REFERENCE` rows or
2 features and there is none.

**At each check** a fixed random subset of the window's rows (at most :data:`MAX_WINDOW`, and at
most half as many as the reference rows) is split in halves. A histogram gradient-boosting
classifier (scikit-learn's ``HistGradientBoostingClassifier``: 50 trees of 15 leaves, missing
values handled natively, one thread) learns to tell one half from as many reference rows. It
then scores the rows it never saw: the window's other half and the remaining reference rows.
If the two sets come from one distribution, those scores are exchangeable, whatever the
classifier learned, so the one-sided Mann–Whitney U test of "the window's scores are larger"
(``scipy.stats.mannwhitneyu``, normal approximation with tie and continuity correction) has
its nominal level. Its U over the pairs is the held-out **AUC**, reported as the effect (0.5: the
classifier cannot tell them apart; 1: it always can). The reference rows are the baseline's one
sample, so a deployment's own rate varies around the level on average over baselines; there
are at least three held-out reference rows for each window row to keep that spread small.

scikit-learn is an extra (``pip install 'mlmon-middleware[sklearn]'``), imported at the first
check; without it the check reports why it did not run.

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=2000)
>>> reference = fit(np.column_stack([x, x + 0.3 * rng.normal(size=2000)]), ["a", "b"], seed=0)
>>> reference.rows.shape
(2000, 2)
>>> y = rng.normal(size=1000)
>>> found = check(reference, np.column_stack([y, -y + 0.3 * rng.normal(size=1000)]))  # the sign flipped
>>> found["p_value"] < 1e-10, found["auc"] > 0.9
(True, True)
>>> z = rng.normal(size=1000)
>>> check(reference, np.column_stack([z, z + 0.3 * rng.normal(size=1000)]))["p_value"] > 0.005
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlmon_middleware.columns import positions, varying

MAX_REFERENCE = 2000  # reference rows the baseline keeps at most
MAX_CELLS = 100_000  # and values (rows × features): about 2 MB of JSON
MIN_REFERENCE = 400  # fewer (or too wide a table for that many): no classifier
MAX_WINDOW = 1000  # window rows tested at most (a fixed random subset of larger windows)
MIN_WINDOW = 100  # fewer: not tested (50 rows to learn from, 50 to score)
TREES = 50
LEAVES = 15
INSTALL = "scikit-learn is not installed: pip install 'mlmon-middleware[sklearn]' for the domain classifier"


@dataclasses.dataclass(frozen=True)
class ClassifierReference:
    """The reference rows a check's classifier learns from and scores: the numeric ``features``
    (in order) and ``rows`` over them, NaN where a value is missing."""

    features: tuple[str, ...]
    rows: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """As the baseline keeps it: the rows as an array (its JSON writes a missing value as null)."""
        return {"method": "classifier", "features": list(self.features), "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierReference:
        features = tuple(data["features"])
        return cls(features, np.ascontiguousarray(data["rows"], dtype=float).reshape(-1, len(features)))


def fit(rows: np.ndarray, features: Sequence[str], seed: int = 0) -> ClassifierReference | None:
    """The reference sample of ``rows`` (numeric columns named ``features``, NaN where missing),
    or None when there are too few rows or fewer than 2 features that vary."""
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2 or rows.shape[1] < 2:
        return None
    varies = varying(rows)
    if varies.sum() < 2:
        return None
    kept = min(MAX_REFERENCE, MAX_CELLS // int(varies.sum()), len(rows))
    if kept < MIN_REFERENCE:
        return None
    picked = positions(len(rows), kept, np.random.default_rng(seed))
    sample = np.ascontiguousarray(rows[picked][:, varies])
    sample[~np.isfinite(sample)] = np.nan
    return ClassifierReference(tuple(n for n, keep in zip(features, varies) if keep), sample)


def rows_tested(reference: ClassifierReference) -> int:
    """The window rows a check tests at most: half as many as the reference rows (three held-out
    reference rows per held-out window row), and no more than :data:`MAX_WINDOW`."""
    return min(MAX_WINDOW, len(reference.rows) // 2)


def check(reference: ClassifierReference, rows: np.ndarray, columns: Sequence[int] | None = None,
          seed: int = 0) -> dict[str, Any]:
    """The window's rows against the reference's: ``rows`` tested (window rows, both halves),
    ``p_value`` (one-sided Mann–Whitney U on the held-out scores) and ``auc`` (the held-out AUC).
    ``columns``: where ``reference.features`` are in ``rows`` (default: in order)."""
    window = window_rows(reference, rows, columns, seed)
    empty = {"method": "classifier", "rows": int(len(window)), "p_value": None, "auc": None}
    if len(window) < MIN_WINDOW:
        return empty
    try:
        current, baseline = held_out_scores(reference, window, seed)
    except ImportError:
        return {**empty, "rows": 0, "note": INSTALL}
    from scipy.stats import mannwhitneyu

    test = mannwhitneyu(current, baseline, alternative="greater", method="asymptotic")
    return {**empty, "p_value": float(test.pvalue), "auc": float(test.statistic / (len(current) * len(baseline)))}


def window_rows(reference: ClassifierReference, rows: np.ndarray, columns: Sequence[int] | None = None,
                seed: int = 0) -> np.ndarray:
    """The window rows a check tests, over ``reference.features``: a fixed random subset of at
    most :func:`rows_tested` (taken before the columns, so a wide window is not copied whole),
    anything not finite as missing."""
    rows = np.asarray(rows)
    limit = rows_tested(reference)
    if len(rows) > limit:  # chosen by position, not value: the test's level is unchanged
        rows = rows[positions(len(rows), limit, np.random.default_rng(seed))]
    rows = np.array(rows if columns is None else rows[:, list(columns)], dtype=float).reshape(-1, len(reference.features))
    rows[~np.isfinite(rows)] = np.nan
    return rows


def held_out_scores(reference: ClassifierReference, window: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's scores (probability of "window") for the rows it did not learn from: the
    window's second half, then the reference rows past the first ``len(window) // 2`` (both
    in a fixed random order). Raises ImportError without scikit-learn."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    window = window[np.random.default_rng(seed + 1).permutation(len(window))]
    ref = reference.rows[np.random.default_rng(seed + 2).permutation(len(reference.rows))]
    half = len(window) // 2
    model = HistGradientBoostingClassifier(max_iter=TREES, max_leaf_nodes=LEAVES, early_stopping=False, random_state=seed)
    with threadpool_limits(1, user_api="openmp"):  # one core: the service keeps the others
        model.fit(np.vstack([ref[:half], window[:half]]), np.r_[np.zeros(half), np.ones(half)])
        return model.predict_proba(window[half:])[:, 1], model.predict_proba(ref[half:])[:, 1]
