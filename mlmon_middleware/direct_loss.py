"""Performance before the labels arrive, for regressors: direct loss estimation (DLE).

A regressor gives no probability to calibrate, but its errors are not the same everywhere: some
regions of the inputs (and of its own predictions) are harder than others. DLE (NannyML's
method) learns on the labelled reference where the errors are large, and averages what it
expects over a window:

1. **At baseline build** the baseline keeps a random sample of labelled reference rows: the
   numeric features with at least two distinct values, the model's prediction and the label
   (at most :data:`MAX_ROWS` rows and :data:`MAX_CELLS` values).
2. **At the first check** (scikit-learn's ``HistGradientBoostingRegressor``, one thread, cached
   for the baseline's life): on one half of the sample, two small models learn |y − ŷ| and
   (y − ŷ)² from the features and ŷ; the other half, which they never saw, gives the spread of
   their misses (σ of the loss minus its estimate).
3. **Per window**: the estimated MAE is the mean estimated |y − ŷ| of its rows, the RMSE the root
   of the mean estimated (y − ŷ)² (over at most :data:`MAX_PREDICTED` random rows of a larger
   window, whose sampling error joins the band); the band is ± 1.96 σ / √n around the mean (for
   RMSE, its root's bounds): how far the window's realized loss may be from the estimate by the
   rows' own noise.
   The standard error a verdict needs adds the spread of the rows' estimated losses (a window
   drawn like this one may hold harder rows by chance): √((σ² + var) / n), through the root's
   derivative for RMSE. Like CBPE it assumes that p(y | x) did not change.

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(3000, 1))
>>> y = x[:, 0] + rng.normal(scale=np.where(x[:, 0] > 0, 2.0, 0.5))  # larger errors where x > 0
>>> model = fit(x, ["x"], np.zeros(3000) + x[:, 0], y)
>>> easy, hard = model.estimate(-np.abs(x[:500]), -np.abs(x[:500, 0])), model.estimate(np.abs(x[:500]), np.abs(x[:500, 0]))
>>> easy["mae"]["value"] < 0.6 < 1.2 < hard["mae"]["value"]
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlmon_middleware.columns import positions, varying
from mlmon_middleware.estimation import Estimate
from mlmon_middleware.metrics import regression_metrics

MAX_ROWS = 5000
MAX_CELLS = 200_000
MAX_PREDICTED = 2000  # window rows the loss models score at most (a random subset of larger windows)
MIN_ROWS = 200  # labelled rows needed (half to learn, half to measure the misses)
METRICS = ("mae", "rmse")
Z = 1.959963984540054  # the normal's 97.5 % quantile: a 95 % band


@dataclasses.dataclass
class DLE:
    """A direct loss estimator: the numeric ``features`` it reads, its labelled reference
    ``rows`` (those features, the prediction, the label), the ``reference`` metrics. The loss
    models are fitted at the first estimate."""

    features: tuple[str, ...]
    rows: np.ndarray
    reference: Mapping[str, float]
    outputs: tuple[str, ...] = ("prediction",)
    task: str = "regression"
    _fitted: tuple[Any, Any, float, float] | None = dataclasses.field(default=None, repr=False, compare=False)

    def _models(self) -> tuple[Any, Any, float, float]:
        """The two loss models and the spread of their misses on the held-out half, fitted at the
        first call. Without a lock: a model's checks run one at a time (the checker's lock), and
        two threads that did fit at once would fit the same models, the last one kept."""
        if self._fitted is None:
            from sklearn.ensemble import HistGradientBoostingRegressor
            from threadpoolctl import threadpool_limits

            order = np.random.default_rng(0).permutation(len(self.rows))
            learn, held = self.rows[order[: len(order) // 2]], self.rows[order[len(order) // 2:]]
            fitted = []
            with threadpool_limits(1, user_api="openmp"):
                for power in (1, 2):
                    model = HistGradientBoostingRegressor(max_iter=100, max_leaf_nodes=15, random_state=0)
                    model.fit(learn[:, :-1], np.abs(learn[:, -1] - learn[:, -2]) ** power)
                    miss = np.abs(held[:, -1] - held[:, -2]) ** power - model.predict(held[:, :-1])
                    fitted.append((model, float(np.std(miss))))
            self._fitted = (fitted[0][0], fitted[1][0], fitted[0][1], fitted[1][1])
        return self._fitted

    def estimate(self, features: np.ndarray, predictions: np.ndarray) -> dict[str, Estimate]:
        """MAE and RMSE estimated for rows of ``features`` (columns in ``self.features`` order)
        with the model's ``predictions``, each with its band. Raises ImportError without
        scikit-learn."""
        x = np.column_stack([np.asarray(features, dtype=float).reshape(len(predictions), len(self.features)), predictions])
        if not len(x):
            return {m: {"value": None, "low": None, "high": None} for m in METRICS}
        absolute, squared, spread_abs, spread_sq = self._models()
        from threadpoolctl import threadpool_limits

        n = len(x)
        if n > MAX_PREDICTED:  # the mean of a random subset: its own sampling error joins the band
            x = x[positions(n, MAX_PREDICTED, np.random.default_rng(0))]
        m = len(x)
        with threadpool_limits(1, user_api="openmp"):
            losses = np.maximum(absolute.predict(x), 0.0)
            squares = np.maximum(squared.predict(x), 0.0)
        mae, mse = float(losses.mean()), float(squares.mean())
        subset_abs, subset_sq = losses.var() * (1 / m - 1 / n), squares.var() * (1 / m - 1 / n)
        half_abs = Z * np.sqrt(spread_abs ** 2 / n + subset_abs)
        half_sq = Z * np.sqrt(spread_sq ** 2 / n + subset_sq)
        # a window drawn like this one: the rows' own spread of expected losses as well
        error_abs = float(np.sqrt(spread_abs ** 2 / n + losses.var() / m))
        error_sq = float(np.sqrt(spread_sq ** 2 / n + squares.var() / m))
        rmse = float(np.sqrt(mse))
        return {"mae": {"value": mae, "low": max(mae - half_abs, 0.0), "high": mae + half_abs, "standard_error": error_abs},
                "rmse": {"value": rmse, "low": float(np.sqrt(max(mse - half_sq, 0.0))), "high": float(np.sqrt(mse + half_sq)),
                         "standard_error": error_sq / (2 * rmse) if rmse > 0 else 0.0}}

    def to_dict(self) -> dict[str, Any]:
        """As the baseline keeps it: the rows as an array (a missing value written as null)."""
        return {"method": "dle", "task": "regression", "features": list(self.features), "outputs": list(self.outputs),
                "rows": self.rows, "reference": dict(self.reference)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DLE:
        features = tuple(data["features"])
        rows = np.ascontiguousarray(data["rows"], dtype=float).reshape(-1, len(features) + 2)
        return cls(features, rows, dict(data.get("reference") or {}), tuple(data.get("outputs") or ("prediction",)))


def fit(features: Any, names: Sequence[str], predictions: Any, labels: Any, seed: int = 0) -> DLE | None:
    """The estimator of a labelled reference (numeric ``features`` named ``names``, NaN where
    missing; the model's ``predictions``; the ``labels``), or None with fewer than
    :data:`MIN_ROWS` rows with a finite prediction and label."""
    features = np.asarray(features, dtype=float).reshape(len(labels), -1)
    predictions, labels = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    usable = np.isfinite(predictions) & np.isfinite(labels)
    features, predictions, labels = features[usable], predictions[usable], labels[usable]
    varies = varying(features)
    kept = min(MAX_ROWS, MAX_CELLS // (int(varies.sum()) + 2), len(labels))
    if kept < MIN_ROWS:
        return None
    reference = {m: float(v) for m, v in regression_metrics(labels, predictions).items() if m in METRICS and v is not None}
    picked = positions(len(labels), kept, np.random.default_rng(seed))
    rows = np.column_stack([features[picked][:, varies], predictions[picked], labels[picked]])
    rows[~np.isfinite(rows)] = np.nan
    return DLE(tuple(n for n, keep in zip(names, varies) if keep), np.ascontiguousarray(rows), reference)
