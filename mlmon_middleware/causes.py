"""Root causes: when the dataset drifts or performance (realized or estimated) drops, the likely
causes, ranked.

Three kinds of cause, each scored in [0, 1] so that they rank together:

* **a feature that drifted**, scored by how far it moved times how much the model leans on it:
  ``min(1, effect / effect_critical) × importance share``. The importance is the feature's
  share of the mean |SHAP| in the window when explanations run; else a permutation importance
  on the window (a small gradient-boosting surrogate learns the model's first output from the
  features on half the window's rows; a feature's importance is the share of the surrogate's fit,
  its R² on the other half, lost when the feature's column is shuffled there; computed for the
  candidate causes only); else, without scikit-learn or with features and predictions not row
  for row, an equal share each.
* **a segment** (a value of a segment feature) whose labelled accuracy fell below the rest of
  its window's rows (a two-proportion z test against the rest, one-sided, Bonferroni over the
  segments at :data:`ALPHA`), scored by its part of the window's drop against the reference:
  the predictions it got wrong beyond the rest's rate, over the drop's (rows × the accuracy
  lost). A segment that only shares the window's drop (a feature unrelated to it) does not
  count. Accuracy, whichever metric degraded: a proportion of rows, the test needs it.
* **a data-quality change**: a feature whose share of missing values rose by at least
  :data:`QUALITY_RISE` against the reference, scored by that rise times its importance share.

The report keeps the :data:`TOP` first; the alert events of the check (dataset drift and the
performance drops) carry the first two as a sentence ("most likely: …").

>>> causes = rank_causes({"features": {"income": {"severity": "warning", "effect": 0.6, "psi": 0.22},
...                                    "age": {"severity": "warning", "effect": 0.6, "psi": 0.21}}},
...                      {"income": 0.7, "age": 0.1}, None, effect_critical=0.5)
>>> [c["name"] for c in causes], causes[0]["text"]
(['income', 'age'], 'income drifted (PSI 0.22, 70 % of attribution)')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlmon_middleware.reports import Cause, DriftReport, FeatureDrift, PerformanceReport
from mlmon_middleware.reservoir import WindowSnapshot, row_for_row
from mlmon_middleware.schema import FeatureSchema

TOP = 5
ALPHA = 0.05  # a segment's drop must be significant at this level (Bonferroni over the segments)
QUALITY_RISE = 0.05  # a rise of the missing share (absolute) that counts as a data-quality cause
MAX_ROWS = 2000  # window rows the surrogate learns from and is scored on
#: the alerts whose events name the likely causes
EXPLAINED = ("DatasetDrift", "PerformanceDegradation", "EstimatedPerformanceDrop")


def rank_causes(report: DriftReport, importance: Mapping[str, float] | None, performance: PerformanceReport | None,
                effect_critical: float, reference_missing: Mapping[str, float] | None = None,
                source: str = "attribution") -> list[Cause]:
    """The likely causes of this check's findings, best first (at most :data:`TOP`);
    ``reference_missing``: each feature's share of missing values in the baseline; ``source``:
    what the importance shares are, in the words of the causes ("attribution": mean |SHAP|;
    "importance": permutation importance)."""
    features = report.get("features", {})
    shares = dict(importance) if importance else {name: 1.0 / max(len(features), 1) for name in features}
    source = source if importance else "equal shares"
    causes: list[Cause] = []
    for name, found in features.items():
        share = shares.get(name, 0.0)
        if _drifted(found):
            moved = min(1.0, found.get("effect", 0.0) / effect_critical)
            psi = f"PSI {found['psi']:.2f}, " if "psi" in found else ""
            causes.append({"kind": "feature", "name": name, "score": moved * share,
                           "text": f"{name} drifted ({psi}{share * 100:.0f} % of {source})",
                           "evidence": {"effect": found.get("effect"), "psi": found.get("psi"), "importance": share}})
        rise = _missing_rise(name, found, reference_missing)
        if rise >= QUALITY_RISE:
            causes.append({"kind": "quality", "name": name, "score": rise * max(share, 1e-3),
                           "text": f"{name}: {found.get('missing_ratio', 0.0) * 100:.0f} % of its values missing",
                           "evidence": {"missing_ratio": found.get("missing_ratio"), "rise": rise, "importance": share}})
    causes += _segments(performance)
    causes.sort(key=lambda c: -c["score"])
    return causes[:TOP]


def candidates(report: DriftReport, reference_missing: Mapping[str, float] | None = None) -> list[str]:
    """The features that may be causes (drifted, or missing values risen): those whose
    importance :func:`importance_on_window` needs."""
    return [name for name, found in report.get("features", {}).items()
            if _drifted(found) or _missing_rise(name, found, reference_missing) >= QUALITY_RISE]


def _drifted(found: FeatureDrift) -> bool:
    return found.get("severity", "none") not in ("none", "info")


def _missing_rise(name: str, found: FeatureDrift, reference_missing: Mapping[str, float] | None) -> float:
    return found.get("missing_ratio", 0.0) - (reference_missing or {}).get(name, 0.0)


def _segments(performance: PerformanceReport | None) -> list[Cause]:
    """Segments whose accuracy fell significantly below the rest of their window's rows, scored
    by their part of the window's drop against the reference (one cause per segment: its best
    window)."""
    from scipy.stats import norm

    best: dict[str, Cause] = {}
    if not performance:
        return []
    found_reference = performance.get("reference")
    reference = ((found_reference["metrics"] if found_reference else None) or {}).get("accuracy")
    for window, found in (performance.get("windows") or {}).items():
        overall = (found.get("overall") or {}).get("accuracy")
        degraded = any(d["severity"] != "none" for d in (found.get("degradation") or {}).values())
        if not degraded or reference is None or overall is None or reference <= overall:
            continue
        segments = found.get("segments") or {}
        z_critical = float(norm.isf(ALPHA / max(sum(len(v) for v in segments.values()), 1)))
        for feature, values in segments.items():
            rows = {value: float(m.get("count") or 0.0) for value, m in values.items() if m.get("accuracy") is not None}
            total = sum(rows.values())
            for value, n in rows.items():
                accuracy, rest = float(values[value]["accuracy"] or 0.0), total - n
                if n <= 0 or rest <= 0:
                    continue
                rest_accuracy = (overall * total - accuracy * n) / rest  # the feature's values cover the window
                error = np.sqrt(max(overall * (1 - overall), 1e-12) * (1 / n + 1 / rest))
                if (rest_accuracy - accuracy) / error < z_critical:
                    continue
                share = n * (rest_accuracy - accuracy) / (total * (reference - overall))  # its part of the drop
                name = f"{feature}={value}"
                if name not in best or share > best[name]["score"]:
                    best[name] = {"kind": "segment", "name": name, "score": float(min(1.0, share)),
                                  "text": f"segment {name} accuracy {100 * (accuracy - reference):+.0f} points",
                                  "evidence": {"metric": "accuracy", "window": window, "rows": int(n), "value": accuracy,
                                               "rest": rest_accuracy, "reference": reference, "share_of_drop": share}}
    return list(best.values())


def sentence(causes: list[Cause]) -> str:
    """The alert events' words: "most likely: <first>; <second>" ("" without causes)."""
    return "most likely: " + "; ".join(c["text"] for c in causes[:2]) if causes else ""


def importance_on_window(features: WindowSnapshot, schema: FeatureSchema, outputs: WindowSnapshot,
                         output_schema: FeatureSchema | None, candidates: Sequence[str] | None = None,
                         seed: int = 0) -> dict[str, float] | None:
    """Each of the ``candidates``' permutation importance on the window (default: every
    feature): the share of the surrogate's fit (its R² on the held-out half) lost when the
    feature's column is shuffled, in [0, 1] (see the module docstring); None when it cannot be
    had (no numeric output, features and predictions not row for row, too few rows, a surrogate
    that explains nothing, no scikit-learn)."""
    if output_schema is None or not output_schema.numeric_names or not row_for_row(features, outputs):
        return None
    target = np.asarray(outputs["numeric"], dtype=float)[:, 0]
    columns = [np.asarray(features["numeric"], dtype=float)]
    for j in range(len(schema.categorical_names)):  # categories as codes: trees split them well enough here
        values = np.asarray(features["categorical"])[:, j].astype(str)
        columns.append(np.unique(values, return_inverse=True)[1].astype(float)[:, None])
    x = np.hstack(columns)
    usable = np.isfinite(target)
    x, target = x[usable], target[usable]
    if len(target) < 100 or np.ptp(target) == 0:
        return None
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(target))[:MAX_ROWS]
    learn, held = picked[: len(picked) // 2], picked[len(picked) // 2:]
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    names = [*schema.numeric_names, *schema.categorical_names]
    out: dict[str, float] = {}
    with threadpool_limits(1, user_api="openmp"):
        model = HistGradientBoostingRegressor(max_iter=50, max_leaf_nodes=15, random_state=seed)
        model.fit(x[learn], target[learn])
        fit = _r2(target[held], model.predict(x[held]))
        if fit <= 0:
            return None
        for name in candidates if candidates is not None else names:
            if name not in names:
                continue
            shuffled = x[held].copy()
            j = names.index(name)
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            out[name] = float(np.clip((fit - _r2(target[held], model.predict(shuffled))) / fit, 0.0, 1.0))
    return out


def _r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((truth - truth.mean()) ** 2))
    return 1.0 - float(np.sum((truth - predicted) ** 2)) / total if total > 0 else 0.0
