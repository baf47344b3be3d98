"""Exact SHAP values of the demo's model for its numeric features, as an mlmon explainer callable.

The demo's model is a logistic regression on standardised numeric columns and one-hot encoded
region and channel. For a linear model with independent features, feature j's SHAP value in
log-odds is ``w_j * (x_j - E[x_j])`` (Lundberg & Lee 2017), so no shap run is needed. mlmon hands
an explainer callable the numeric features only (in the baseline's order), so region and channel
are left out of the contributions; ``base`` is the model's mean log-odds over the training rows
(numeric features at their means, categories at their training shares).

>>> import numpy as np
>>> f = NumericLinearShap(weights=np.array([2.0, -1.0]), means=np.array([1.0, 0.0]), base=-0.5)
>>> base, contributions = f(np.array([[3.0, 1.0]]))
>>> base.tolist(), contributions.tolist()
([-0.5], [[4.0, -1.0]])
"""

from __future__ import annotations

import numpy as np


class NumericLinearShap:
    """``f(rows) -> (base values, contributions)`` for an (n × numeric features) array. A plain
    class (not a closure) so that it pickles into mlmon's explanation worker processes."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, base: float) -> None:
        self.weights = np.asarray(weights, dtype=float)
        self.means = np.asarray(means, dtype=float)
        self.base = float(base)

    @classmethod
    def of_pipeline(cls, pipeline, frame, numeric: tuple[str, ...]) -> NumericLinearShap:
        """From the fitted ``ColumnTransformer -> LogisticRegression`` pipeline and its training frame."""
        scaler = pipeline[0].named_transformers_["num"]
        coef = pipeline[-1].coef_[0]
        base = float(np.mean(pipeline[-1].decision_function(pipeline[0].transform(frame))))
        # the scaler's mean is E[x]; standardisation divides the weight by the scale
        return cls(coef[:len(numeric)] / scaler.scale_, scaler.mean_, base)

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=float)
        return np.full(len(rows), self.base), (rows - self.means) * self.weights
