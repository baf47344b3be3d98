"""Multivariate drift: what no feature shows alone, such as a correlation that flips while every
marginal distribution stays the same.

**PCA reconstruction error** (the method of NannyML's data reconstruction drift). At baseline
build, the numeric features present in most reference rows and with spread are chosen, and the
rows complete on them are split in halves. One half is standardised (its mean and σ) and fits a
principal component analysis; the components that explain :data:`VARIANCE` of its variance are
kept (at most d − 1 of d features: all d would reconstruct every row exactly). A row's
reconstruction error is the squared distance between the standardised row and its projection
onto those components: small for rows shaped like the reference, large for rows that break its
correlations. The other half, never seen by the fit, gives the reference errors (at most
:data:`MAX_REFERENCE`).

A check computes the errors of the window's complete rows (a fixed random subset of at most a
fifth as many as the reference errors, :func:`rows_tested`) and asks whether they are larger
than the reference's: a one-sided Mann–Whitney U test (``scipy.stats.mannwhitneyu(current,
reference, alternative="greater")``, normal approximation with ties and continuity
correction). Under no drift the window's rows and the held-out rows come from one
distribution, so their errors are exchangeable and the test rejects ``alpha`` of the time on
average over baselines. A deployment keeps one set of reference errors, and its own rate
varies around that average the more the fewer they are against the rows tested: testing at
most a fifth as many keeps that spread small. The effect reported beside the p-value is the
ratio of the mean errors.

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=4000)
>>> reference = np.column_stack([x, x + 0.3 * rng.normal(size=4000)])  # two correlated features
>>> model = fit(reference, ["a", "b"], seed=0)
>>> model.components.shape
(1, 2)
>>> y = rng.normal(size=1000)
>>> flipped = np.column_stack([y, -y + 0.3 * rng.normal(size=1000)])  # the same marginals, the sign flipped
>>> found = check(model, flipped)
>>> found["p_value"] < 1e-10, found["error_ratio"] > 10
(True, True)
>>> check(model, reference[:1000])["p_value"] > 0.005
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlmon_middleware.columns import positions, varying

VARIANCE = 0.9  # the share of the reference's variance the kept components explain
MAX_REFERENCE = 5000  # held-out reference errors kept in the baseline
MIN_ROWS = 1000  # complete reference rows needed to fit (half of them fit, half are held out)
MAX_FIT = 2 * MAX_REFERENCE  # reference rows used at most: half to fit, half held out
MIN_PRESENT = 0.9  # a feature enters the model when present in this share of the reference rows
MAX_WINDOW = 1000  # window rows tested at most (a random subset of larger windows)
MIN_WINDOW = 50


@dataclasses.dataclass(frozen=True)
class PCAModel:
    """A fitted reconstruction: the numeric ``features`` it reads (in order), their reference
    ``mean`` and ``scale``, the kept ``components`` (rows, unit length) and the held-out
    ``reference_errors``."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    reference_errors: np.ndarray

    def errors(self, rows: np.ndarray) -> np.ndarray:
        """Squared reconstruction error of each row of ``rows`` (columns in ``features`` order)."""
        z = (rows - self.mean) / self.scale
        projected = z @ self.components.T  # the components are orthonormal: |z|² − |zCᵀ|² is the residual's |.|²
        out: np.ndarray = np.maximum(np.einsum("ij,ij->i", z, z) - np.einsum("ij,ij->i", projected, projected), 0.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        """As the baseline file keeps it."""
        return {"method": "pca", "features": list(self.features), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "components": self.components.tolist(),
                "reference_errors": self.reference_errors.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PCAModel:
        return cls(tuple(data["features"]), np.asarray(data["mean"], dtype=float), np.asarray(data["scale"], dtype=float),
                   np.asarray(data["components"], dtype=float).reshape(-1, len(data["features"])),
                   np.asarray(data["reference_errors"], dtype=float))


def fit(rows: np.ndarray, features: Sequence[str], seed: int = 0, variance: float = VARIANCE) -> PCAModel | None:
    """The reconstruction of ``rows`` (numeric columns named ``features``, missing values as
    NaN), or None when it cannot say anything. Features are chosen first, on a random sample of
    at most :data:`MAX_FIT` rows: those present in at least :data:`MIN_PRESENT` of them and with
    spread there (a feature mostly missing, or constant where present, would make the complete
    rows a subgroup of the traffic); then the rows complete on the chosen features are split
    in halves. None with fewer than 2 such features or fewer than :data:`MIN_ROWS` such rows."""
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2 or len(rows) < MIN_ROWS or rows.shape[1] < 2:
        return None
    rng = np.random.default_rng(seed)
    if len(rows) > MAX_FIT:  # pick the rows first: no copy of a large sample is made
        rows = rows[positions(len(rows), MAX_FIT, rng)]
    finite = np.isfinite(rows)
    present = finite.mean(axis=0) >= MIN_PRESENT
    spread = varying(rows, among=present)
    if spread.sum() < 2:
        return None
    rows = rows[finite[:, spread].all(axis=1)][:, spread]
    if len(rows) < MIN_ROWS:
        return None
    names = tuple(name for name, keep in zip(features, spread) if keep)
    order = rng.permutation(len(rows))
    half = len(order) // 2
    fitted, held = rows[order[:half]], rows[order[half:]]
    mean, scale = fitted.mean(axis=0), fitted.std(axis=0)
    scale[scale == 0] = 1.0
    _, singular, vt = np.linalg.svd((fitted - mean) / scale, full_matrices=False)
    explained = np.cumsum(singular ** 2) / np.sum(singular ** 2)
    kept = min(int(np.searchsorted(explained, variance) + 1), len(names) - 1)
    model = PCAModel(names, mean, scale, vt[:kept], np.empty(0))
    return dataclasses.replace(model, reference_errors=model.errors(held[:MAX_REFERENCE]))


def rows_tested(model: PCAModel) -> int:
    """The window rows a check tests at most: a fifth of the held-out errors (so that the level a
    deployment sees, with its one set of them, stays near ``alpha``), and no more than
    :data:`MAX_WINDOW`."""
    return max(MIN_WINDOW, min(MAX_WINDOW, len(model.reference_errors) // 5))


def check(model: PCAModel, rows: np.ndarray, columns: Sequence[int] | None = None) -> dict[str, Any]:
    """The window's reconstruction errors against the reference's: ``rows`` (complete rows
    tested: a fixed random subset of at most :func:`rows_tested`), ``p_value`` (one-sided
    Mann–Whitney U: larger than the reference's), and ``error_ratio`` (mean error over the
    reference's mean error). ``columns``: where ``model.features`` are in ``rows`` (default:
    in order); the subset is taken before they are, so a wide window is not copied whole."""
    rows = np.asarray(rows)
    limit = rows_tested(model)
    if len(rows) > limit:  # chosen by position, not value: the test's level is unchanged
        rows = rows[positions(len(rows), limit, np.random.default_rng(0))]
    rows = np.asarray(rows if columns is None else rows[:, list(columns)], dtype=float).reshape(-1, len(model.features))
    rows = rows[np.isfinite(rows).all(axis=1)]
    if not len(rows):
        return {"method": "pca", "rows": 0, "p_value": None, "error_ratio": None, "components": len(model.components)}
    from scipy.stats import mannwhitneyu  # scipy loads on the first check, not at import

    current = model.errors(rows)
    p_value = float(mannwhitneyu(current, model.reference_errors, alternative="greater", method="asymptotic").pvalue)
    reference_mean = float(model.reference_errors.mean())
    return {"method": "pca", "rows": int(len(rows)), "p_value": p_value,
            "error_ratio": float(current.mean() / reference_mean) if reference_mean > 0 else None,
            "components": int(len(model.components))}
