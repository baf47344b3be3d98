"""Multivariate drift: what no feature shows alone, such as a correlation that flips while every
marginal distribution stays the same.

**PCA reconstruction error** (the method of NannyML's data reconstruction drift). At baseline
build, the numeric features of complete reference rows are standardised (the reference's mean
and σ) and half of those rows fit a principal component analysis; the components that explain
:data:`VARIANCE` of their variance are kept (at most d − 1 of d features: all d would
reconstruct every row exactly). A row's reconstruction error is the squared distance between
the row and its projection onto those components: small for rows shaped like the reference,
large for rows that break its correlations. The other half of the rows, never seen by the fit,
give the reference errors (at most :data:`MAX_REFERENCE` of them).

A check computes the errors of the window's complete rows (a random subset of
:data:`MAX_WINDOW` of them in a larger window) and asks whether they are larger than the
reference's: a one-sided Mann–Whitney U test (``scipy.stats.mannwhitneyu(current,
reference, alternative="greater")``, normal approximation with ties and continuity
correction). Under no drift the window's rows and the held-out rows come from one
distribution, so their errors are exchangeable and the test rejects at most ``alpha`` of the
time, at every window size; the effect reported beside it is the ratio of the mean errors.

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

VARIANCE = 0.9  # the share of the reference's variance the kept components explain
MAX_REFERENCE = 2000  # held-out reference errors kept in the baseline
MIN_ROWS = 200  # complete reference rows needed to fit (half of them fit, half are held out)
MAX_FIT = 2 * 10_000  # reference rows used at most: 10,000 to fit, the rest held out
MAX_WINDOW = 2000  # window rows tested at most (a random subset of larger windows)


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
    """The reconstruction of the complete ``rows`` (numeric columns named ``features``), or
    None when it cannot say anything: fewer than 2 features with spread, or fewer than
    :data:`MIN_ROWS` complete rows."""
    rows = np.asarray(rows, dtype=float)
    rows = rows[np.isfinite(rows).all(axis=1)] if rows.size else rows
    if rows.ndim != 2 or len(rows) < MIN_ROWS:
        return None
    spread = rows.std(axis=0) > 0
    if spread.sum() < 2:
        return None
    names = tuple(name for name, keep in zip(features, spread) if keep)
    rows = rows[:, spread]
    order = np.random.default_rng(seed).permutation(len(rows))[:MAX_FIT]
    fitted, held = rows[order[: len(rows) // 2]], rows[order[len(rows) // 2:]]
    mean, scale = fitted.mean(axis=0), fitted.std(axis=0)
    scale[scale == 0] = 1.0
    _, singular, vt = np.linalg.svd((fitted - mean) / scale, full_matrices=False)
    explained = np.cumsum(singular ** 2) / np.sum(singular ** 2)
    kept = min(int(np.searchsorted(explained, variance) + 1), len(names) - 1)
    model = PCAModel(names, mean, scale, vt[:kept], np.empty(0))
    return dataclasses.replace(model, reference_errors=model.errors(held[:MAX_REFERENCE]))


def check(model: PCAModel, rows: np.ndarray) -> dict[str, Any]:
    """The window's reconstruction errors against the reference's: ``rows`` (complete rows
    tested, at most :data:`MAX_WINDOW`), ``p_value`` (one-sided Mann–Whitney U: larger than the reference's), and
    ``error_ratio`` (mean error over the reference's mean error)."""
    rows = np.asarray(rows, dtype=float).reshape(-1, len(model.features))
    if len(rows) > MAX_WINDOW:  # a fixed random subset: the test's cost stays bounded, its level unchanged
        rows = rows[np.sort(np.random.default_rng(0).choice(len(rows), MAX_WINDOW, replace=False))]
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
