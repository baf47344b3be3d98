"""A check's label-free performance estimate and its verdict (``EstimatedPerformanceDrop``).

The analyzer hands the window's model outputs to :func:`estimated_performance`: the baseline's
estimator (:mod:`~mlmon_middleware.estimation`) estimates each metric with its band, and a
metric is judged dropped when its estimate fell by the model's ``degradation`` levels (relative
to the reference's realized value, as for realized performance) *and* the whole band lies below
the reference: a drop the label draws alone could explain never pages anyone.

>>> import numpy as np
>>> from mlmon_middleware.schema import FeatureSchema
>>> from mlmon_middleware import estimation
>>> rng = np.random.default_rng(0)
>>> scores = rng.random(4000)
>>> model = estimation.fit((rng.random(4000) < scores).astype(int), scores[:, None], classes=["0", "1"], positive="1")
>>> window = {"time": np.zeros(500), "numeric": np.full((500, 1), 0.5), "categorical": np.empty((500, 0), dtype=object)}
>>> report, conditions = estimated_performance(model, window, FeatureSchema(["prediction"], ["numeric"]), (0.05, 0.1))
>>> round(report["metrics"]["accuracy"]["value"], 1), report["metrics"]["accuracy"]["severity"], conditions["accuracy"]
(0.5, 'critical', 'critical')
"""

from __future__ import annotations

import numpy as np

from mlmon_middleware.estimation import CBPE
from mlmon_middleware.metrics import HIGHER_IS_BETTER
from mlmon_middleware.reports import EstimatedMetric, EstimatedPerformance, Severity
from mlmon_middleware.reservoir import WindowSnapshot
from mlmon_middleware.schema import FeatureSchema

MIN_ROWS = 30  # rows a window needs before its estimate can be judged (as for realized performance)


def estimated_performance(estimator: CBPE, outputs: WindowSnapshot, schema: FeatureSchema,
                          degradation: tuple[float, float]) -> tuple[EstimatedPerformance, dict[str, Severity]]:
    """The window's estimated metrics (``outputs``: its model outputs, under ``schema``) and, per
    metric, the severity of its drop (the conditions of ``EstimatedPerformanceDrop``)."""
    report: EstimatedPerformance = {"method": "cbpe", "task": estimator.task, "rows": 0, "metrics": {}}
    missing = [o for o in estimator.outputs if o not in schema.numeric_names]
    if missing:
        report["note"] = (f"the service's outputs have no numeric {', '.join(map(repr, missing))}: the estimator reads "
                          f"{', '.join(map(repr, estimator.outputs))}, as the baseline's probability columns were named")
        return report, {}
    columns = [schema.numeric_names.index(o) for o in estimator.outputs]
    proba = np.asarray(outputs["numeric"], dtype=float)[:, columns]
    proba = proba[np.isfinite(proba).all(axis=1)]
    report["rows"] = int(len(proba))
    conditions: dict[str, Severity] = {}
    for metric, found in estimator.estimate(proba).items():
        judged = _judged(found["value"], found["low"], found["high"], estimator.reference.get(metric), metric,
                         degradation, len(proba))
        report["metrics"][metric] = judged
        if judged["severity"] != "none":
            conditions[metric] = judged["severity"]
    return report, conditions


def _judged(value: float | None, low: float | None, high: float | None, reference: float | None, metric: str,
            degradation: tuple[float, float], rows: int) -> EstimatedMetric:
    """The estimate against the reference: its relative change and the drop's severity."""
    out: EstimatedMetric = {"value": value, "low": low, "high": high, "reference": reference, "relative_change": None,
                            "severity": "none"}
    if value is None or low is None or high is None or not reference:
        return out
    change = (value - reference) / abs(reference)
    higher = metric in HIGHER_IS_BETTER
    drop = -change if higher else change
    beyond = high < reference if higher else low > reference  # the whole band on the wrong side
    severity: Severity = "none"
    if beyond and rows >= MIN_ROWS:
        severity = "critical" if drop >= degradation[1] else "warning" if drop >= degradation[0] else "none"
    return {**out, "relative_change": change, "severity": severity}
