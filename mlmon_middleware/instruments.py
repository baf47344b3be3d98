"""The one table of mlmon's telemetry names: instruments, units, buckets, attribute keys.

Every metric name, unit and description lives here; the pipeline, the gauges, the analysis
report keys and :mod:`~mlmon_middleware.telemetry` (the only module that imports OpenTelemetry)
all read their names from this module, and ``docs/metrics.md`` documents the same list. OTel
names use dots and UCUM units; the Prometheus exporter turns ``mlmon.inference.duration``
(unit ``s``) into ``mlmon_inference_duration_seconds``, counters get ``_total``, and attribute
names such as ``mlmon.model.name`` become labels such as ``mlmon_model_name``.

>>> INSTRUMENTS[INFERENCE_DURATION].prometheus
'mlmon_inference_duration_seconds'
>>> QUALITY_RATIOS[FEATURE_MISSING_RATIO]
'missing_ratio'
"""

from __future__ import annotations

import dataclasses

# Instrument names (OTel).
PREDICTIONS = "mlmon.predictions"
INFERENCE_DURATION = "mlmon.inference.duration"
PREDICTION_VALUE = "mlmon.prediction.value"
CAPTURE_ERRORS = "mlmon.capture.errors"
MONITOR_ERRORS = "mlmon.monitor.errors"
LIMIT_HITS = "mlmon.limit.hits"
RESERVOIR_SIZE = "mlmon.reservoir.size"
FEATURE_DRIFT_SCORE = "mlmon.feature.drift.score"
FEATURE_DRIFT_DETECTED = "mlmon.feature.drift.detected"
DATASET_DRIFT_SHARE = "mlmon.dataset.drift.share"
PREDICTION_DRIFT_SCORE = "mlmon.prediction.drift.score"
FEATURE_MISSING_RATIO = "mlmon.feature.missing.ratio"
FEATURE_OUT_OF_RANGE_RATIO = "mlmon.feature.out_of_range.ratio"
FEATURE_NEW_CATEGORY_RATIO = "mlmon.feature.new_category.ratio"
FEATURE_BIN = "mlmon.feature.bin"
BASELINE_BIN_RATIO = "mlmon.baseline.bin.ratio"
FEATURE_DRIFT_CRITICAL = "mlmon.feature.drift.critical"
BASELINE_ROWS = "mlmon.baseline.rows"
ALERT_ACTIVE = "mlmon.alert.active"
ALERT_EVENTS = "mlmon.alert.events"
FEATURE_COVERAGE = "mlmon.feature.coverage"
ANALYSIS_DURATION = "mlmon.analysis.duration"
ANALYSIS_LAST_RUN = "mlmon.analysis.last_run"
PERFORMANCE = "mlmon.performance"
EXPLANATIONS = "mlmon.explanations"
EXPLANATION_DURATION = "mlmon.explanation.duration"
FEATURE_ATTRIBUTION = "mlmon.feature.attribution"
LABELS = "mlmon.labels"
LABEL_DELAY = "mlmon.label.delay"
LABEL_COVERAGE = "mlmon.label.coverage"
BASELINE_AGE = "mlmon.baseline.age"
DRIFT_FORECAST = "mlmon.drift.forecast"
MULTIVARIATE_DRIFT = "mlmon.multivariate.drift.score"
PERFORMANCE_ESTIMATED = "mlmon.performance.estimated"
MODEL_APPROVED = "mlmon.model.approved"

#: observable gauges whose values may be infinite (a forecast of "never" is +Inf): the OpenTelemetry
#: SDK drops non-finite measurements, so the Prometheus exposition adds them (OTLP carries none)
NON_FINITE = (DRIFT_FORECAST,)

# Semantic-conventions buckets for HTTP server durations (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Predictions are mostly probabilities or class indices; the tail covers small regressions.
PREDICTION_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0,
                      2.0, 5.0, 10.0, 100.0, 1000.0, 10000.0)

# Labels arrive after minutes (clicks) to weeks (fraud) or months (churn).
LABEL_DELAY_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0,
                       30 * 86400.0, 90 * 86400.0)

# Attribute keys (OTel names; Prometheus labels replace the dots with underscores).
MODEL_NAME = "mlmon.model.name"
MODEL_VERSION = "mlmon.model.version"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
PREDICTION_ID = "mlmon.prediction.id"

# The span of one monitored inference: its name ("mlmon.inference {model}") and attribute keys.
SPAN_NAME = "mlmon.inference"
BATCH_SIZE = "mlmon.batch.size"
PREDICTION = "mlmon.prediction"  # the prediction; "mlmon.prediction.{output}" when there are several
FEATURE = "mlmon.feature"  # "mlmon.feature.{name}": raw values, only for the trace_features allowed
EXPLANATION_TOP = "mlmon.explanation.top"  # "...{i}.feature" and "...{i}.contribution": the top contributions


@dataclasses.dataclass(frozen=True)
class InstrumentSpec:
    """One metric: OTel name, kind, UCUM unit, meaning, and the Prometheus name it exports as."""

    name: str
    kind: str  # counter | histogram | observable_counter | observable_gauge
    unit: str
    description: str
    prometheus: str
    buckets: tuple[float, ...] | None = None


INSTRUMENTS: dict[str, InstrumentSpec] = {spec.name: spec for spec in (
    InstrumentSpec(PREDICTIONS, "counter", "{prediction}",
                   "Monitored inference calls, by route and outcome (ok/error).",
                   "mlmon_predictions_total"),
    InstrumentSpec(INFERENCE_DURATION, "histogram", "s",
                   "Duration of monitored inference calls, by route, status code and error type.",
                   "mlmon_inference_duration_seconds", DURATION_BUCKETS),
    InstrumentSpec(PREDICTION_VALUE, "histogram", "1",
                   "Numeric prediction values, one observation per row and output.",
                   "mlmon_prediction_value", PREDICTION_BUCKETS),
    InstrumentSpec(CAPTURE_ERRORS, "counter", "{error}",
                   "Inputs or outputs that could not be captured, by reason; the response is unaffected.",
                   "mlmon_capture_errors_total"),
    InstrumentSpec(MONITOR_ERRORS, "observable_counter", "{error}",
                   "Failures inside monitoring itself, by stage; serving continued.",
                   "mlmon_monitor_errors_total"),
    InstrumentSpec(LIMIT_HITS, "observable_counter", "{hit}",
                   "Client-controlled inputs stopped by a bound (models, feedback body and items, label value, "
                   "on-demand check rate), by limit.",
                   "mlmon_limit_hits_total"),
    InstrumentSpec(RESERVOIR_SIZE, "observable_gauge", "{row}",
                   "Rows currently held in the model's analysis window.",
                   "mlmon_reservoir_size"),
    InstrumentSpec(FEATURE_DRIFT_SCORE, "observable_gauge", "1",
                   "Drift statistic of a feature at the last check, by method (psi, js, ks, wasserstein, chi2).",
                   "mlmon_feature_drift_score"),
    InstrumentSpec(FEATURE_DRIFT_DETECTED, "observable_gauge", "1",
                   "1 when the feature drifted at the last check, with the severity.",
                   "mlmon_feature_drift_detected"),
    InstrumentSpec(DATASET_DRIFT_SHARE, "observable_gauge", "1",
                   "Share of the features that drifted at the last check.",
                   "mlmon_dataset_drift_share"),
    InstrumentSpec(PREDICTION_DRIFT_SCORE, "observable_gauge", "1",
                   "Drift statistic of a prediction output at the last check, by method.",
                   "mlmon_prediction_drift_score"),
    InstrumentSpec(FEATURE_MISSING_RATIO, "observable_gauge", "1",
                   "Share of the window's rows missing the feature (NaN, null or absent).",
                   "mlmon_feature_missing_ratio"),
    InstrumentSpec(FEATURE_OUT_OF_RANGE_RATIO, "observable_gauge", "1",
                   "Share of the window's rows with a numeric value outside the baseline's [min, max].",
                   "mlmon_feature_out_of_range_ratio"),
    InstrumentSpec(FEATURE_NEW_CATEGORY_RATIO, "observable_gauge", "1",
                   "Share of the window's rows with a category the baseline never saw.",
                   "mlmon_feature_new_category_ratio"),
    InstrumentSpec(FEATURE_BIN, "observable_counter", "{row}",
                   "Rows per baseline bin (quantile bin, or category) of each feature, since start: sum across "
                   "replicas for fleet-wide PSI in PromQL.",
                   "mlmon_feature_bin_total"),
    InstrumentSpec(BASELINE_BIN_RATIO, "observable_gauge", "1",
                   "The baseline's share of rows in each bin (quantile bin, or category) of each feature (fleet PSI's reference).",
                   "mlmon_baseline_bin_ratio"),
    InstrumentSpec(FEATURE_DRIFT_CRITICAL, "observable_gauge", "1",
                   "Chi² value above which the fleet's summed bin counts of a feature differ from the baseline "
                   "at the policy's alpha (Bonferroni over the features): the fleet drift rule's threshold.",
                   "mlmon_feature_drift_critical"),
    InstrumentSpec(BASELINE_ROWS, "observable_gauge", "{row}",
                   "Rows of the baseline a feature's bins were computed from: the reference's size in the "
                   "fleet drift test.",
                   "mlmon_baseline_rows"),
    InstrumentSpec(ALERT_ACTIVE, "observable_gauge", "1",
                   "1 for every firing alert (sustained over the policy's checks), by alertname and severity.",
                   "mlmon_alert_active"),
    InstrumentSpec(ALERT_EVENTS, "observable_counter", "{event}",
                   "Alert events of mlmon's own policy, by alertname and state (firing, severity_changed, resolved).",
                   "mlmon_alert_events_total"),
    InstrumentSpec(FEATURE_COVERAGE, "observable_gauge", "1",
                   "Features monitored / fields the model receives (its features plus any other input field seen).",
                   "mlmon_feature_coverage"),
    InstrumentSpec(ANALYSIS_DURATION, "observable_gauge", "s",
                   "Duration of the model's last drift check.",
                   "mlmon_analysis_duration_seconds"),
    InstrumentSpec(ANALYSIS_LAST_RUN, "observable_gauge", "s",
                   "Unix time of the model's last drift check: alert when it stops moving.",
                   "mlmon_analysis_last_run_seconds"),
    InstrumentSpec(PERFORMANCE, "observable_gauge", "1",
                   "Model performance over labelled predictions at the last check, by metric, window and segment.",
                   "mlmon_performance"),
    InstrumentSpec(EXPLANATIONS, "counter", "{explanation}",
                   "Explanations asked for, by status (ok, timeout, busy, error).",
                   "mlmon_explanations_total"),
    InstrumentSpec(EXPLANATION_DURATION, "histogram", "s",
                   "Time to explain one prediction, by explainer.",
                   "mlmon_explanation_duration_seconds", DURATION_BUCKETS),
    InstrumentSpec(FEATURE_ATTRIBUTION, "observable_gauge", "1",
                   "Mean |SHAP| of a feature over the window's explained predictions (source=current) and "
                   "over the baseline's background sample (source=baseline).",
                   "mlmon_feature_attribution"),
    InstrumentSpec(LABELS, "counter", "{label}",
                   "Ground-truth labels received, by outcome (labelled, relabelled: the latest wins, unknown id).",
                   "mlmon_labels_total"),
    InstrumentSpec(LABEL_DELAY, "histogram", "s",
                   "Time from a prediction to its label.",
                   "mlmon_label_delay_seconds", LABEL_DELAY_BUCKETS),
    InstrumentSpec(LABEL_COVERAGE, "observable_gauge", "1",
                   "Share of the logged predictions of a time window that have a label, at the last check.",
                   "mlmon_label_coverage"),
    InstrumentSpec(MULTIVARIATE_DRIFT, "observable_gauge", "1",
                   "The rows as a whole against the reference at the last check, by method: pca, the mean "
                   "reconstruction error over the reference's (1: alike); classifier, the held-out AUC (0.5: alike).",
                   "mlmon_multivariate_drift_score"),
    InstrumentSpec(PERFORMANCE_ESTIMATED, "observable_gauge", "1",
                   "A metric estimated without labels at the last check: a classifier's from its predicted "
                   "probabilities (CBPE), a regressor's MAE and RMSE from its features (DLE); bound: estimate, or "
                   "low and high of its 95 % band.",
                   "mlmon_performance_estimated"),
    InstrumentSpec(DRIFT_FORECAST, "observable_gauge", "s",
                   "Seconds until a feature's drift trend reaches its warning level (+Inf: not trending upward; "
                   "0: there); feature __all__: the first feature's.",
                   "mlmon_drift_forecast_seconds"),
    InstrumentSpec(BASELINE_AGE, "observable_gauge", "s",
                   "Seconds since the model's baseline was created.",
                   "mlmon_baseline_age_seconds"),
    InstrumentSpec(MODEL_APPROVED, "observable_gauge", "1",
                   "1 when the registry marks the served model version deployed (and its artifact hash, when "
                   "known, is the registered one), else 0; absent without a registry.",
                   "mlmon_model_approved"),
)}

# The data-quality gauges and the key of the drift report's feature entry each one reads.
QUALITY_RATIOS: dict[str, str] = {
    FEATURE_MISSING_RATIO: "missing_ratio",
    FEATURE_OUT_OF_RANGE_RATIO: "out_of_range_ratio",
    FEATURE_NEW_CATEGORY_RATIO: "new_category_ratio",
}

# The drift report's statistic keys and the ``method`` label each one is exported with.
SCORE_METHODS: dict[str, str] = {"psi": "psi", "js": "js", "ks": "ks", "wasserstein_norm": "wasserstein", "chi2": "chi2"}
