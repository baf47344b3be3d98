"""The rows as a whole: the baseline's multivariate detectors on a check's window, each judged.

Both detectors (the PCA reconstruction, :mod:`~mlmon_middleware.drift.multivariate`, and the
domain classifier, :mod:`~mlmon_middleware.drift.classifier`) give a one-sided p-value and an
effect; a method's verdict is ``warning`` when the p-value is below the policy's ``alpha`` and
the effect reaches the policy's floor for it (the PCA's error ratio ``multivariate_ratio``, the
classifier's AUC ``classifier_auc``), as a feature's is.

>>> verdict(0.001, True, DriftPolicy()), verdict(0.001, False, DriftPolicy()), verdict(None, True, DriftPolicy())
('warning', 'none', 'none')
"""

from __future__ import annotations

from mlmon_middleware.baseline import Baseline
from mlmon_middleware.drift import classifier, multivariate
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.reports import MultivariateDrift, Severity
from mlmon_middleware.reservoir import WindowSnapshot


def rows_as_a_whole(baseline: Baseline, features: WindowSnapshot, policy: DriftPolicy) -> dict[str, MultivariateDrift]:
    """The window's numeric rows as a whole against the baseline's models (its schema has every
    feature they read), each with its verdict: warning when its test rejects at ``alpha`` and its
    effect reaches the policy's floor (``multivariate_ratio`` times the reference's
    reconstruction error; a held-out AUC of ``classifier_auc``)."""
    numeric = baseline.schema.numeric_names
    out: dict[str, MultivariateDrift] = {}
    if baseline.pca is not None:
        found = multivariate.check(baseline.pca, features["numeric"], [numeric.index(f) for f in baseline.pca.features])
        effect = (found["error_ratio"] or 0) >= policy.multivariate_ratio
        out["pca"] = {**found, "severity": verdict(found["p_value"], effect, policy)}  # type: ignore[typeddict-item]
    if baseline.classifier is not None and policy.classifier:
        found = classifier.check(baseline.classifier, features["numeric"],
                                 [numeric.index(f) for f in baseline.classifier.features])
        effect = (found["auc"] or 0) >= policy.classifier_auc
        out["classifier"] = {**found, "severity": verdict(found["p_value"], effect, policy)}  # type: ignore[typeddict-item]
    return out


def verdict(p_value: float | None, effect: bool, policy: DriftPolicy) -> Severity:
    return "warning" if p_value is not None and p_value < policy.alpha and effect else "none"
