"""DriftPolicy: when a window's difference from the baseline is drift, and how severe.

A check asks two questions per feature, and a verdict needs both answers:

1. **Is there a difference at all, given the window's size?** One p-value per feature: the
   two-sample Kolmogorov–Smirnov test for numeric features (against the whole reference, through
   the baseline's quantile grid made cautious by its bound), chi² homogeneity for categorical
   ones (categories too rare for the approximation pooled). The p-values of a check's features are
   corrected together, Holm's step-down by default (family-wise error at most ``alpha`` whatever
   the features' dependence; at least as powerful as Bonferroni), or ``"bonferroni"``, or
   ``"bh"`` (Benjamini–Hochberg: false-discovery rate, more power when many features drift). At
   ``alpha`` = 0.005, a check of no-drift data flags any feature at most 0.5 % of the time, at
   every window size: the test's null distribution is what scales with the rows, so no threshold
   has to be tuned to a size.
2. **Is the difference big enough to matter?** The feature's ``effect``: Wasserstein distance
   over the baseline's standard deviation (numeric: a mean shift of 0.25 σ reads 0.25; variance ×
   1.5 reads about 0.2) or ``w`` of the category shares (categorical: 0.3 → 0.4 of one category
   of two reads 0.21, like the same binary number's Wasserstein/σ). With enough rows every
   difference is significant; the effect keeps a 0.02 σ shift at 200,000 rows from paging anyone.

Severity: not significant is *none*; significant with ``effect`` below ``thresholds.effect``
(0.05) is *info* (reported and exported, never alerted); otherwise *warning*, and *critical* when
``effect`` ≥ ``effect_critical`` (0.5) or PSI ≥ ``psi_critical`` (0.25, the usual "severe" PSI
level). Thresholds can be overridden per feature; ``adaptive_k`` raises a feature's effect and PSI
levels to the mean + k·std of its own history. The dataset drifts when the share of drifting
features reaches ``share``. Alerts fire after ``fire_after`` consecutive drifting checks and
resolve after ``resolve_after`` clean ones. ``forecast_*`` set the drift forecasts
(:mod:`~mlmon_middleware.drift.forecast`): the trend of each feature's effect over the last
``forecast_points`` checks whose windows share no row, and the ``DriftForecast`` alert when its
warning level may be reached within ``forecast_horizon`` seconds.

>>> policy = DriftPolicy(overrides={"income": {"effect": 0.2}})
>>> policy.thresholds_for("income").effect, policy.thresholds_for("age").effect
(0.2, 0.05)
>>> adjust_pvalues([0.01, 0.04, 0.03, 0.5], "holm").round(3).tolist()
[0.04, 0.09, 0.09, 0.5]
>>> policy.judge({"age": {"rows": 500, "p_value": 1e-6, "effect": 0.3, "psi": 0.08},
...               "income": {"rows": 500, "p_value": 1e-6, "effect": 0.1, "psi": 0.02},
...               "region": {"rows": 500, "p_value": 0.2, "effect": 0.1, "psi": 0.03}})
{'age': 'warning', 'income': 'info', 'region': 'none'}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from mlmon_middleware.config import ConfigError
from mlmon_middleware.reports import FeatureDrift, Severity

SEVERITIES = ("none", "info", "warning", "critical")
CORRECTIONS = ("holm", "bonferroni", "bh")
RANK = {severity: i for i, severity in enumerate(SEVERITIES)}


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Effect-size levels of one feature (see the module docstring)."""

    effect: float = 0.05  # below it a significant difference is only "info"
    effect_critical: float = 0.5
    psi_critical: float = 0.25


@dataclasses.dataclass(frozen=True)
class DriftPolicy:
    """How feature statistics become verdicts; see the module docstring."""

    thresholds: Thresholds = Thresholds()
    overrides: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    alpha: float = 0.005
    correction: str = "holm"
    share: float = 0.5
    fire_after: int = 2
    resolve_after: int = 2
    adaptive_k: float | None = None
    adaptive_min_history: int = 30
    #: the DriftForecast alert: a feature whose drift trend may reach its warning level within
    #: this many seconds (0: no forecast alert; the forecasts are still reported and exported)
    forecast_horizon: float = 7 * 86400.0
    forecast_points: int = 20  # the latest checks with disjoint windows a trend is fitted to
    forecast_min_points: int = 8  # fewer: no forecast
    #: multivariate drift needs its test (p < alpha) and the window's mean reconstruction error at
    #: least this many times the reference's (a practical floor, as ``effect`` is for a feature)
    multivariate_ratio: float = 1.1
    #: the domain classifier needs its test (p < alpha) and a held-out AUC at least this (0.5 is
    #: chance). Off by default: it trains a small model at every check, about ten times the drift
    #: check's own time (docs/insight.md); ``classifier=True`` runs it
    classifier_auc: float = 0.55
    classifier: bool = False

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"correction must be one of {', '.join(map(repr, CORRECTIONS))}, got {self.correction!r}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 < self.share <= 1:
            raise ConfigError(f"share must be in (0, 1], got {self.share!r}")
        if self.fire_after < 1 or self.resolve_after < 1:
            raise ConfigError("fire_after and resolve_after must be >= 1 checks")
        if not self.multivariate_ratio >= 1:
            raise ConfigError(f"multivariate_ratio must be >= 1, got {self.multivariate_ratio!r}")
        if not 0.5 <= self.classifier_auc < 1:
            raise ConfigError(f"classifier_auc must be in [0.5, 1), got {self.classifier_auc!r}")
        if not self.forecast_horizon >= 0:
            raise ConfigError(f"forecast_horizon must be >= 0 seconds, got {self.forecast_horizon!r}")
        if not 3 <= self.forecast_min_points <= self.forecast_points:
            raise ConfigError("forecast_min_points must be >= 3 and at most forecast_points, got "
                              f"{self.forecast_min_points!r} and {self.forecast_points!r}")
        if self.adaptive_k is not None and not self.adaptive_k > 0:
            raise ConfigError(f"adaptive_k must be > 0 or None, got {self.adaptive_k!r}")
        fields = {f.name for f in dataclasses.fields(Thresholds)}
        for feature, values in self.overrides.items():
            unknown = set(values) - fields
            if unknown:
                raise ConfigError(f"overrides[{feature!r}]: unknown thresholds {sorted(unknown)}; "
                                  f"allowed: {sorted(fields)}")

    def adapted(self, history: Mapping[str, Sequence[tuple[float, float]]]) -> DriftPolicy:
        """With ``adaptive_k`` set: this policy with each feature's levels raised to the mean +
        k·std of its own history of ``(effect, psi)`` once ``adaptive_min_history`` checks exist:
        the effect floor and its critical level by the effect history, the PSI level by the PSI
        history (a feature that is always a little different stops crying wolf)."""
        if self.adaptive_k is None:
            return self
        overrides = {name: dict(values) for name, values in self.overrides.items()}
        for name, pairs in history.items():
            if len(pairs) >= self.adaptive_min_history:
                values = np.asarray(pairs, dtype=float)
                level = values.mean(axis=0) + self.adaptive_k * values.std(axis=0)
                base = self.thresholds_for(name)
                overrides[name] = {**overrides.get(name, {}), "effect": max(base.effect, float(level[0])),
                                   "effect_critical": max(base.effect_critical, float(level[0])),
                                   "psi_critical": max(base.psi_critical, float(level[1]))}
        return dataclasses.replace(self, overrides=overrides)

    def thresholds_for(self, feature: str) -> Thresholds:
        values = self.overrides.get(feature)
        return dataclasses.replace(self.thresholds, **values) if values else self.thresholds

    def judge(self, features: Mapping[str, FeatureDrift]) -> dict[str, Severity]:
        """Severity per feature from its ``p_value``, ``effect`` and ``psi`` (see the module
        docstring); writes each tested feature's ``p_adjusted``. Drift means ``warning`` or worse."""
        names = [name for name, s in features.items() if s.get("rows", 0) > 0 and s.get("p_value") is not None]
        verdicts: dict[str, Severity] = {name: "none" for name in features}
        if not names:
            return verdicts
        adjusted = adjust_pvalues(np.array([features[n].get("p_value") for n in names], dtype=float), self.correction)
        for name, p in zip(names, adjusted):
            stats = features[name]
            stats["p_adjusted"] = float(p)
            if not p < self.alpha:
                continue
            levels = self.thresholds_for(name)
            effect = stats.get("effect", 0.0)
            if effect < levels.effect:
                verdicts[name] = "info"
            elif effect >= levels.effect_critical or stats.get("psi", 0.0) >= levels.psi_critical:
                verdicts[name] = "critical"
            else:
                verdicts[name] = "warning"
        return verdicts


def adjust_pvalues(pvalues: list[float] | np.ndarray, method: str) -> np.ndarray:
    """p-values adjusted for multiple tests: Holm's step-down (``holm``), Bonferroni, or
    Benjamini–Hochberg's step-up (``bh``); NaN (no test) counts as 1."""
    p: np.ndarray = np.nan_to_num(np.asarray(pvalues, dtype=float), nan=1.0)
    m = len(p)
    if m == 0:
        return p
    if method == "bonferroni":
        return np.asarray(np.minimum(p * m, 1.0))
    if method == "holm":
        order = np.argsort(p, kind="stable")
        stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
        out = np.empty(m)
        out[order] = np.minimum(stepped, 1.0)
        return out
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(ranked, 1.0)
    return adjusted
