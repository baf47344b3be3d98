"""Root causes: when the dataset drifts or performance (realized or estimated) drops, the likely
causes, ranked.

Three kinds of cause, each scored in [0, 1] so that they rank together:

* **a feature that drifted**, scored by how far it moved times how much the model leans on it:
  ``min(1, effect / effect_critical) × importance share``. The importance is the feature's
  share of the mean |SHAP| in the window when explanations run; else a permutation importance
  on the window (a small gradient-boosting surrogate learns the model's first output from the
  features on half the window's rows; each feature's importance is how much shuffling it spoils
  the surrogate on the other half: scikit-learn's ``permutation_importance``); else, without
  scikit-learn or with features and predictions not row for row, an equal share each.
* **a segment** (a value of a segment feature) whose labelled performance fell, scored by its
  contribution to the overall drop: the overall drop of a metric against the reference is the
  sum over segments of (rows share) × (reference − the segment's value), so each segment's term
  over the drop is its share of it. Only segments whose own drop is significant count (one-sided
  z of a proportion, Bonferroni over the segments at :data:`ALPHA`); a metric that is not a
  proportion (AUC, F1, errors) is read through the window's accuracy when it has one.
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

from collections.abc import Mapping

import numpy as np

from mlmon_middleware.reports import Cause, DriftReport, PerformanceReport
from mlmon_middleware.reservoir import WindowSnapshot, row_for_row
from mlmon_middleware.schema import FeatureSchema

TOP = 5
ALPHA = 0.05  # a segment's drop must be significant at this level (Bonferroni over the segments)
QUALITY_RISE = 0.05  # a rise of the missing share (absolute) that counts as a data-quality cause
MAX_ROWS = 2000  # window rows the surrogate learns from and is scored on
PROPORTIONS = ("accuracy", "precision", "recall")  # metrics whose standard error a rows count gives
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
        if found.get("severity", "none") not in ("none", "info"):
            moved = min(1.0, found.get("effect", 0.0) / effect_critical)
            psi = f"PSI {found['psi']:.2f}, " if "psi" in found else ""
            causes.append({"kind": "feature", "name": name, "score": moved * share,
                           "text": f"{name} drifted ({psi}{share * 100:.0f} % of {source})",
                           "evidence": {"effect": found.get("effect"), "psi": found.get("psi"), "importance": share}})
        rise = found.get("missing_ratio", 0.0) - (reference_missing or {}).get(name, 0.0)
        if rise >= QUALITY_RISE:
            causes.append({"kind": "quality", "name": name, "score": rise * max(share, 1e-3),
                           "text": f"{name}: {found.get('missing_ratio', 0.0) * 100:.0f} % of its values missing",
                           "evidence": {"missing_ratio": found.get("missing_ratio"), "rise": rise, "importance": share}})
    causes += _segments(performance)
    causes.sort(key=lambda c: -c["score"])
    return causes[:TOP]


def _segments(performance: PerformanceReport | None) -> list[Cause]:
    """Segments whose significant drop makes up a share of a degraded window's drop."""
    from scipy.stats import norm

    out: list[Cause] = []
    if not performance:
        return out
    found_reference = performance.get("reference")
    reference: Mapping[str, float] = (found_reference["metrics"] if found_reference else None) or {}
    for window, found in (performance.get("windows") or {}).items():
        degraded = [m for m, d in (found.get("degradation") or {}).items() if d["severity"] != "none"]
        if not degraded:
            continue
        metric = next((m for m in degraded if m in PROPORTIONS), "accuracy")
        overall_metrics: Mapping[str, float | None] = found.get("overall") or {}
        ref, overall = reference.get(metric), overall_metrics.get(metric)
        if ref is None or overall is None or ref <= overall:
            continue
        segments = [(f, v, m) for f, values in (found.get("segments") or {}).items() for v, m in values.items()
                    if m.get(metric) is not None and m.get("count")]
        total = sum(m["count"] or 0.0 for _, _, m in segments) or 1.0
        z_critical = float(norm.isf(ALPHA / max(len(segments), 1)))
        for feature, value, m in segments:
            rows, current = float(m["count"] or 0.0), float(m[metric] or 0.0)
            error = np.sqrt(max(ref * (1 - ref), 1e-12) / rows)
            if (ref - current) / error < z_critical:
                continue
            share = rows / total * (ref - current) / (ref - overall)
            out.append({"kind": "segment", "name": f"{feature}={value}", "score": float(min(1.0, share)),
                        "text": f"segment {feature}={value} {metric} {100 * (current - ref):+.0f} points",
                        "evidence": {"metric": metric, "window": window, "rows": int(rows), "value": current,
                                     "reference": ref, "share_of_drop": share}})
    return out


def sentence(causes: list[Cause]) -> str:
    """The alert events' words: "most likely: <first>; <second>" ("" without causes)."""
    return "most likely: " + "; ".join(c["text"] for c in causes[:2]) if causes else ""


def importance_on_window(features: WindowSnapshot, schema: FeatureSchema, outputs: WindowSnapshot,
                         output_schema: FeatureSchema | None, seed: int = 0) -> dict[str, float] | None:
    """Each feature's share of a permutation importance on the window (see the module
    docstring), or None when it cannot be had (no numeric output, features and predictions not
    row for row, too few rows, no scikit-learn)."""
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
    half = len(picked) // 2
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.inspection import permutation_importance
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with threadpool_limits(1, user_api="openmp"):
        model = HistGradientBoostingRegressor(max_iter=50, max_leaf_nodes=15, random_state=seed)
        model.fit(x[picked[:half]], target[picked[:half]])
        found = permutation_importance(model, x[picked[half:]], target[picked[half:]], n_repeats=3, random_state=seed)
    raw = np.maximum(found.importances_mean, 0.0)
    names = [*schema.numeric_names, *schema.categorical_names]
    total = raw.sum()
    return {n: float(v / total) for n, v in zip(names, raw)} if total > 0 else None
