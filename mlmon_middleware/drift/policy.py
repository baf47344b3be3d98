"""DriftPolicy: when a statistic means drift, and how severe.

A p-value answers "is there *any* difference?", and with enough rows the answer is always yes:
KS p-values fire on trivial shifts from about 10,000 rows on. An effect size answers "how big is
the difference?", but on a few hundred rows its estimate is mostly noise. So:

* **Small windows** (fewer than ``large_window`` rows): hypothesis tests. KS for numeric
  features, chi² for categorical ones, their p-values corrected across the features of the check
  (Benjamini–Hochberg by default, or Bonferroni) at family level ``alpha`` (0.005: under no drift
  that keeps the share of checks with any alarm near 0.5 %, measured, half the 1 % budget, since
  BH's family-wise rate under no drift equals ``alpha``). A significant feature
  is a *warning*, *critical* when its PSI also reaches ``psi_critical``. From ``effect_window``
  rows on (1,000: the effect sizes' noise under no drift is then a fraction of their thresholds)
  a feature whose effect size passes its threshold drifts too, significant or not: KS has little
  power against a change of spread (variance × 1.5 at 5,000 rows: p between 1e-5 and 1e-3),
  which the normalised Wasserstein distance sees plainly (0.14 to 0.19).
* **Large windows**: effect sizes only. Numeric: PSI ≥ ``psi_warning``, JS ≥ ``js``, or Wasserstein
  divided by the baseline's standard deviation ≥ ``wasserstein``; categorical: PSI or JS. Any is
  a *warning*; PSI ≥ ``psi_critical`` is *critical*.

A PSI between ``psi_info`` (0.05) and the warning level is *info*: reported and exported, but
not drift (logged and exported, no notification). Every threshold can be overridden per
feature. The dataset drifts when the share of drifting
features reaches ``share``. Alerts fire after ``fire_after`` consecutive drifting checks and
resolve after ``resolve_after`` clean ones; ``adaptive_k`` turns on adaptive PSI thresholds.

>>> policy = DriftPolicy(overrides={"income": {"psi_warning": 0.2}})
>>> policy.thresholds_for("income").psi_warning, policy.thresholds_for("age").psi_warning
(0.2, 0.1)
>>> adjust_pvalues([0.01, 0.04, 0.03, 0.5], "bh").round(3).tolist()
[0.04, 0.053, 0.053, 0.5]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from mlmon_middleware.reports import FeatureDrift, Severity

SEVERITIES = ("none", "info", "warning", "critical")
RANK = {severity: i for i, severity in enumerate(SEVERITIES)}


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Effect-size thresholds of one feature (defaults: PSI 0.1 moderate, 0.25 severe, the usual levels)."""

    psi_info: float = 0.05
    psi_warning: float = 0.1
    psi_critical: float = 0.25
    js: float = 0.1
    wasserstein: float = 0.1  # in units of the baseline's standard deviation


@dataclasses.dataclass(frozen=True)
class DriftPolicy:
    """How feature statistics become verdicts; see the module docstring."""

    thresholds: Thresholds = Thresholds()
    overrides: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    alpha: float = 0.005
    correction: str = "bh"
    large_window: int = 10_000
    effect_window: int = 1_000
    share: float = 0.5
    fire_after: int = 2
    resolve_after: int = 2
    adaptive_k: float | None = None
    adaptive_min_history: int = 30

    def __post_init__(self) -> None:
        from mlmon_middleware.config import ConfigError

        if self.correction not in ("bh", "bonferroni"):
            raise ConfigError(f"correction must be 'bh' or 'bonferroni', got {self.correction!r}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 < self.share <= 1:
            raise ConfigError(f"share must be in (0, 1], got {self.share!r}")
        if self.fire_after < 1 or self.resolve_after < 1:
            raise ConfigError("fire_after and resolve_after must be >= 1 checks")
        fields = {f.name for f in dataclasses.fields(Thresholds)}
        for feature, values in self.overrides.items():
            unknown = set(values) - fields
            if unknown:
                raise ConfigError(f"overrides[{feature!r}]: unknown thresholds {sorted(unknown)}; "
                                  f"allowed: {sorted(fields)}")

    def adapted(self, psi_history: Mapping[str, Sequence[float]]) -> DriftPolicy:
        """With ``adaptive_k`` set: this policy with each feature's PSI warning threshold raised to
        the mean + k·std of its own PSI history, once ``adaptive_min_history`` checks exist (an
        adaptive threshold: a feature that is always a little noisy stops crying wolf)."""
        if self.adaptive_k is None:
            return self
        overrides = {name: dict(values) for name, values in self.overrides.items()}
        for name, history in psi_history.items():
            if len(history) >= self.adaptive_min_history:
                values = np.asarray(history, dtype=float)
                adaptive = float(values.mean() + self.adaptive_k * values.std())
                base = self.thresholds_for(name).psi_warning
                overrides.setdefault(name, {})["psi_warning"] = max(base, adaptive)
        return dataclasses.replace(self, overrides=overrides)

    def thresholds_for(self, feature: str) -> Thresholds:
        values = self.overrides.get(feature)
        return dataclasses.replace(self.thresholds, **values) if values else self.thresholds

    def judge(self, features: Mapping[str, FeatureDrift], n_rows: int) -> dict[str, Severity]:
        """Severity per feature from its statistics (``psi``, ``js``, ``wasserstein_norm``,
        ``p_value``): see the module docstring for the rules. Drift means ``warning`` or worse."""
        names = [name for name, s in features.items() if s.get("rows", 0) > 0]
        verdicts: dict[str, Severity] = {name: "none" for name in features}
        if not names:
            return verdicts
        if n_rows < self.large_window:
            adjusted = adjust_pvalues(np.array([features[n].get("p_value") for n in names], dtype=float), self.correction)
            for name, p in zip(names, adjusted):
                features[name]["p_adjusted"] = float(p)
                if p < self.alpha:
                    critical = features[name].get("psi", 0.0) >= self.thresholds_for(name).psi_critical
                    verdicts[name] = "critical" if critical else "warning"
            if n_rows < self.effect_window:
                return verdicts
        for name in names:
            by_effect = self._by_effect(features[name], self.thresholds_for(name))
            if RANK[by_effect] > RANK[verdicts[name]]:
                verdicts[name] = by_effect
        return verdicts

    @staticmethod
    def _by_effect(s: FeatureDrift, t: Thresholds) -> Severity:
        psi = s.get("psi", 0.0)
        if psi >= t.psi_critical:
            return "critical"
        if psi >= t.psi_warning or s.get("js", 0.0) >= t.js or s.get("wasserstein_norm", 0.0) >= t.wasserstein:
            return "warning"
        return "info" if psi >= t.psi_info else "none"


def adjust_pvalues(pvalues: list[float] | np.ndarray, method: str) -> np.ndarray:
    """p-values adjusted for multiple tests: Benjamini–Hochberg (``bh``) step-up, or Bonferroni."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return p
    if method == "bonferroni":
        return np.asarray(np.minimum(p * m, 1.0))
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(ranked, 1.0)
    return adjusted
