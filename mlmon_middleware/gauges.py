"""The values of the observable instruments, read from the models' state at collection time.

Observable gauges and counters are not pushed: OpenTelemetry calls back when a reader collects
(a Prometheus scrape, an OTLP export). :func:`observe` answers such a callback for one
instrument across all models, from one table (:data:`READERS`) keyed by the names in
:mod:`~mlmon_middleware.instruments`; the drift report's keys come from the same module.

>>> from mlmon_middleware import Monitor, MonitorConfig
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> _ = mon.model("toy").record({"x": 1.0}, {"prediction": 1})
>>> mon.flush()
>>> observe(RESERVOIR_SIZE, list(mon.models.values()), mon.errors)
[(1, {'mlmon.model.name': 'toy', 'mlmon.model.version': 'unknown'})]
>>> mon.shutdown()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from mlmon_middleware.drift.policy import RANK
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.instruments import (
    ALERT_ACTIVE,
    ALERT_EVENTS,
    ANALYSIS_DURATION,
    ANALYSIS_LAST_RUN,
    BASELINE_AGE,
    BASELINE_BIN_RATIO,
    BASELINE_ROWS,
    DATASET_DRIFT_SHARE,
    DRIFT_FORECAST,
    FEATURE_ATTRIBUTION,
    FEATURE_BIN,
    FEATURE_COVERAGE,
    FEATURE_DRIFT_CRITICAL,
    FEATURE_DRIFT_DETECTED,
    FEATURE_DRIFT_SCORE,
    LABEL_COVERAGE,
    LIMIT_HITS,
    MONITOR_ERRORS,
    MULTIVARIATE_DRIFT,
    PERFORMANCE,
    PERFORMANCE_ESTIMATED,
    PREDICTION_DRIFT_SCORE,
    QUALITY_RATIOS,
    RESERVOIR_SIZE,
    SCORE_METHODS,
)
from mlmon_middleware.limits import LimitHits
from mlmon_middleware.model import ModelMonitor
from mlmon_middleware.reports import DriftReport, FeatureDrift

Observations = list[tuple[float, dict[str, Any]]]


def observe(name: str, models: Sequence[ModelMonitor], errors: ErrorLog, limits: LimitHits | None = None) -> Observations:
    """Values of the observable instrument ``name``: ``(value, attributes)`` pairs."""
    if name == MONITOR_ERRORS:
        return [(n, {"stage": stage}) for stage, n in errors.counts().items()]
    if name == LIMIT_HITS:
        return [] if limits is None else [(n, {"limit": limit}) for limit, n in limits.counts().items()]
    read = READERS.get(name)
    if read is None:
        return []
    return [obs for model in models for obs in read(model)]


def _reservoir_size(m: ModelMonitor) -> Observations:
    return [] if m.window is None else [(len(m.window), dict(m.attrs))]


def _baseline_age(m: ModelMonitor) -> Observations:
    return [] if m.baseline is None else [(m.baseline.age_seconds(), dict(m.attrs))]


def _coverage(m: ModelMonitor) -> Observations:
    coverage = m.coverage()
    return [] if coverage is None else [(coverage["ratio"], dict(m.attrs))]


def _baseline_bins(m: ModelMonitor) -> Observations:
    if m.baseline is None or m.schema is None or m.bins is None:
        return []
    numeric = [(float(share), {**m.attrs, "feature": feature, "bin": str(b)})
               for feature in m.schema.numeric_names
               for b, share in enumerate(m.baseline.features[feature].get("bin_proportions") or ())]
    return numeric + [(share, {**m.attrs, "feature": f, "bin": str(b)}) for f, b, share in m.bins.reference_shares()]


def _critical(m: ModelMonitor) -> Observations:
    return [] if m.bins is None else [(value, {**m.attrs, "feature": f}) for f, value in m.bins.critical.items()]


def _baseline_rows(m: ModelMonitor) -> Observations:
    return [] if m.bins is None else [(n, {**m.attrs, "feature": f}) for f, n in m.bins.reference_rows.items()]


def _bins(m: ModelMonitor) -> Observations:
    return [] if m.bins is None else [(n, {**m.attrs, "feature": f, "bin": str(b)}) for f, b, n in m.bins.items()]


def _performance(m: ModelMonitor) -> Observations:
    """Per window, metric and segment (``__all__`` overall; fairness under the protected attribute)."""
    out: Observations = []
    report = m.checker.performance.report or {}
    for window, result in (report.get("windows") or {}).items():
        for metric, value in (result.get("overall") or {}).items():
            if value is not None and metric != "count":
                out.append((value, {**m.attrs, "metric": metric, "window": window, "segment": "__all__"}))
        for feature, values in result.get("segments", {}).items():
            for segment, metrics in values.items():
                out += [(v, {**m.attrs, "metric": k, "window": window, "segment": f"{feature}={segment}"})
                        for k, v in metrics.items() if v is not None and k != "count"]
        fairness = result.get("fairness")
        if fairness:
            for key in ("demographic_parity_ratio", "tpr_gap", "fpr_gap"):
                value = fairness[key]
                if value is not None:
                    out.append((value, {**m.attrs, "metric": key, "window": window, "segment": fairness["attribute"]}))
    return out


def _attributions(m: ModelMonitor) -> Observations:
    features = (m.checker.attributions or {}).get("features", {})
    return [(v, {**m.attrs, "feature": name, "source": source}) for name, f in features.items()
            for source, v in (("current", f["current"]), ("baseline", f["baseline"]))]


def _analysis_duration(m: ModelMonitor) -> Observations:
    return [(m.checker.duration, dict(m.attrs))] if m.checker.report else []


def _analysis_last_run(m: ModelMonitor) -> Observations:
    return [(m.checker.last_run, dict(m.attrs))] if m.checker.report else []


def _label_coverage(m: ModelMonitor) -> Observations:
    coverage = (m.checker.report or {}).get("labels", {}).get("coverage", {})
    return [(c["share"], {**m.attrs, "window": w}) for w, c in coverage.items()]


def _alert_events(m: ModelMonitor) -> Observations:
    return [(n, {**m.attrs, "alertname": a, "state": state}) for (a, state), n in m.checker.alerts.events.items()]


def _alerts_active(m: ModelMonitor) -> Observations:
    return [(1, {**m.attrs, "alertname": a, "subject": s, "severity": sev}) for a, s, sev in m.checker.alerts.active()]


def _checked(m: ModelMonitor) -> DriftReport | None:
    """The last drift report, when it compared the window with a baseline."""
    report = m.checker.report
    return report if report and report.get("status") == "ok" else None


def _scores(m: ModelMonitor, entries: dict[str, FeatureDrift], subject: str) -> Observations:
    return [(s[method], {**m.attrs, subject: f, "method": exported})  # type: ignore[literal-required]
            for f, s in entries.items() for method, exported in SCORE_METHODS.items() if method in s]


def _feature_scores(m: ModelMonitor) -> Observations:
    report = _checked(m)
    return [] if report is None else _scores(m, report.get("features", {}), "feature")


def _prediction_scores(m: ModelMonitor) -> Observations:
    report = _checked(m)
    return [] if report is None else _scores(m, report.get("predictions", {}), "output")


def _drift_detected(m: ModelMonitor) -> Observations:
    report = _checked(m)
    if report is None:
        return []
    return [(int(RANK[s.get("severity", "none")] >= RANK["warning"]), {**m.attrs, "feature": f, "severity": s.get("severity")})
            for f, s in report.get("features", {}).items() if s.get("rows", 0) > 0]


def _drift_share(m: ModelMonitor) -> Observations:
    report = _checked(m)
    return [] if report is None else [(report.get("share", 0.0), dict(m.attrs))]


def _forecasts(m: ModelMonitor) -> Observations:
    """Per feature with a forecast, its seconds (``+Inf`` where the report says None), and the
    soonest as feature ``__all__``."""
    report = _checked(m)
    seconds = {f: math.inf if v["seconds"] is None else v["seconds"] for f, v in (report or {}).get("forecast", {}).items()}
    if not seconds:
        return []
    return [(v, {**m.attrs, "feature": f}) for f, v in seconds.items()] + [(min(seconds.values()),
                                                                            {**m.attrs, "feature": "__all__"})]


def _multivariate(m: ModelMonitor) -> Observations:
    """Per method: the PCA's error ratio, the classifier's held-out AUC."""
    found = (_checked(m) or {}).get("multivariate") or {}
    scores = {method: drift.get("error_ratio") if method == "pca" else drift.get("auc") for method, drift in found.items()}
    return [(score, {**m.attrs, "method": method}) for method, score in scores.items() if score is not None]


def _estimated(m: ModelMonitor) -> Observations:
    """Per metric: the estimate and its band's bounds."""
    metrics = ((_checked(m) or {}).get("performance_estimated") or {}).get("metrics", {})
    out: Observations = []
    for metric, found in metrics.items():
        for bound, value in (("estimate", found["value"]), ("low", found["low"]), ("high", found["high"])):
            if value is not None:
                out.append((value, {**m.attrs, "metric": metric, "bound": bound}))
    return out


def _quality(key: str) -> Callable[[ModelMonitor], Observations]:
    def read(m: ModelMonitor) -> Observations:
        report = _checked(m)
        return [] if report is None else [(s[key], {**m.attrs, "feature": f})  # type: ignore[literal-required]
                                          for f, s in report.get("features", {}).items() if key in s]
    return read


#: instrument name -> the function that reads one model's values of it
READERS: dict[str, Callable[[ModelMonitor], Observations]] = {
    RESERVOIR_SIZE: _reservoir_size,
    BASELINE_AGE: _baseline_age,
    FEATURE_COVERAGE: _coverage,
    PERFORMANCE: _performance,
    FEATURE_ATTRIBUTION: _attributions,
    BASELINE_BIN_RATIO: _baseline_bins,
    FEATURE_BIN: _bins,
    FEATURE_DRIFT_CRITICAL: _critical,
    BASELINE_ROWS: _baseline_rows,
    ANALYSIS_DURATION: _analysis_duration,
    ANALYSIS_LAST_RUN: _analysis_last_run,
    DRIFT_FORECAST: _forecasts,
    MULTIVARIATE_DRIFT: _multivariate,
    PERFORMANCE_ESTIMATED: _estimated,
    LABEL_COVERAGE: _label_coverage,
    ALERT_EVENTS: _alert_events,
    ALERT_ACTIVE: _alerts_active,
    FEATURE_DRIFT_SCORE: _feature_scores,
    PREDICTION_DRIFT_SCORE: _prediction_scores,
    FEATURE_DRIFT_DETECTED: _drift_detected,
    DATASET_DRIFT_SHARE: _drift_share,
    **{name: _quality(key) for name, key in QUALITY_RATIOS.items()},
}
