"""A check's label-free performance estimate and its verdict (``EstimatedPerformanceDrop``).

The analyzer hands the window to :func:`estimated_performance`: the baseline's estimator (a
classifier's CBPE, :mod:`~mlmon_middleware.estimation`, from the model's probabilities; a
regressor's DLE, :mod:`~mlmon_middleware.direct_loss`, from its features and predictions)
estimates each metric with its band, and a
metric is judged dropped when its estimate fell by the model's ``degradation`` levels (relative
to the reference's realized value, as for realized performance) *and* by more than chance: the
drop is at least ``z`` standard errors of a window drawn like this one (the labels' chance and
the rows' own, :class:`~mlmon_middleware.estimation.Estimate`), ``z`` the normal quantile of
``PERFORMANCE_ALPHA`` (0.005) Bonferroni-divided over the metrics, as realized drops are judged.

>>> import numpy as np
>>> from mlmon_middleware.schema import FeatureSchema
>>> from mlmon_middleware import estimation
>>> rng = np.random.default_rng(0)
>>> scores = rng.random(4000)
>>> model = estimation.fit((rng.random(4000) < scores).astype(int), scores[:, None], classes=["0", "1"], positive="1")
>>> window = {"time": np.zeros(500), "numeric": np.full((500, 1), 0.5), "categorical": np.empty((500, 0), dtype=object)}
>>> schema = FeatureSchema(["prediction"], ["numeric"])
>>> report, conditions = estimated_performance(model, {}, schema, window, schema, (0.05, 0.1))
>>> round(report["metrics"]["accuracy"]["value"], 1), report["metrics"]["accuracy"]["severity"], conditions["accuracy"]
(0.5, 'critical', 'critical')
"""

from __future__ import annotations

import numpy as np

from mlmon_middleware.direct_loss import DLE
from mlmon_middleware.estimation import CBPE, Estimate
from mlmon_middleware.metrics import HIGHER_IS_BETTER
from mlmon_middleware.performance import PERFORMANCE_ALPHA
from mlmon_middleware.reports import EstimatedMetric, EstimatedPerformance, Severity
from mlmon_middleware.reservoir import WindowSnapshot, row_for_row
from mlmon_middleware.schema import FeatureSchema

MIN_ROWS = 30  # rows a window needs before its estimate can be judged (as for realized performance)


def estimated_performance(estimator: CBPE | DLE, features: WindowSnapshot, schema: FeatureSchema, outputs: WindowSnapshot,
                          output_schema: FeatureSchema, degradation: tuple[float, float],
                          ) -> tuple[EstimatedPerformance, dict[str, Severity]]:
    """The window's estimated metrics and, per metric, the severity of its drop (the conditions
    of ``EstimatedPerformanceDrop``). ``outputs`` (the model's outputs, under ``output_schema``)
    give a classifier's probabilities; a regressor's estimator also reads ``features`` (under
    ``schema``), row by row beside its predictions."""
    method = "dle" if isinstance(estimator, DLE) else "cbpe"
    report: EstimatedPerformance = {"method": method, "task": estimator.task, "rows": 0, "metrics": {}}
    missing = [o for o in estimator.outputs if o not in output_schema.numeric_names]
    if missing:
        report["note"] = (f"the service's outputs have no numeric {', '.join(map(repr, missing))}: the estimator reads "
                          f"{', '.join(map(repr, estimator.outputs))}, as the baseline's predictions were named")
        return report, {}
    columns = [output_schema.numeric_names.index(o) for o in estimator.outputs]
    values = np.asarray(outputs["numeric"], dtype=float)[:, columns]
    try:
        if isinstance(estimator, DLE):
            if not row_for_row(features, outputs):
                report["note"] = ("the window's features and predictions are not row for row (some requests had no "
                                  "prediction): the loss estimate needs both")
                return report, {}
            known = [schema.numeric_names.index(f) if f in schema.numeric_names else -1 for f in estimator.features]
            numeric = np.asarray(features["numeric"], dtype=float)
            x = np.column_stack([numeric[:, j] if j >= 0 else np.full(len(numeric), np.nan) for j in known] or
                                [np.empty((len(numeric), 0))])
            usable = np.isfinite(values[:, 0])
            report["rows"] = int(usable.sum())
            found = estimator.estimate(x[usable], values[usable, 0])
        else:
            values = values[np.isfinite(values).all(axis=1)]
            report["rows"] = int(len(values))
            found = estimator.estimate(values)
    except ImportError:
        report["note"] = "scikit-learn is not installed: pip install 'mlmon-middleware[sklearn]' for the loss estimate"
        return report, {}
    from scipy.stats import norm  # scipy loads on the first check, not at import

    conditions: dict[str, Severity] = {}
    z_critical = float(norm.isf(PERFORMANCE_ALPHA / max(len(found), 1)))
    for metric, estimate in found.items():
        judged = _judged(estimate, estimator.reference.get(metric), metric, degradation, report["rows"], z_critical)
        report["metrics"][metric] = judged
        if judged["severity"] != "none":
            conditions[metric] = judged["severity"]
    return report, conditions


def _judged(found: Estimate, reference: float | None, metric: str, degradation: tuple[float, float], rows: int,
            z_critical: float) -> EstimatedMetric:
    """The estimate against the reference: its relative change, the drop in standard errors, and
    the drop's severity."""
    value, low, high = found["value"], found["low"], found["high"]
    out: EstimatedMetric = {"value": value, "low": low, "high": high, "reference": reference, "relative_change": None,
                            "severity": "none"}
    error = found.get("standard_error")
    if value is None or not reference or error is None:
        return out
    change = (value - reference) / abs(reference)
    drop = -change if metric in HIGHER_IS_BETTER else change
    z = drop * abs(reference) / max(error, abs(reference) / max(rows, 1))  # at least one row's worth
    severity: Severity = "none"
    if z >= z_critical and rows >= MIN_ROWS:
        severity = "critical" if drop >= degradation[1] else "warning" if drop >= degradation[0] else "none"
    return {**out, "relative_change": change, "standard_error": error, "z": float(min(z, 1e9)), "severity": severity}
