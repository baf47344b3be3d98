"""The background analysis: drift, data quality, performance and alerts, per model, off the request path.

Analysis is a function of its inputs. The model hands a :class:`DriftChecker` a
:class:`CheckInputs` (copies of its window, the baseline, its counters, a reader of the labels,
the explained predictions' attributions) and gets a :class:`CheckResult` back; nothing here reads
or writes the model or the registry. Without a baseline, the first ``warmup_rows`` rows become a
warm-up baseline, returned in the result for the model to adopt. The checker keeps only its own
state: the alert states, the last report (read by the gauges and ``/mlmon/drift``), each
feature's (effect, PSI) history (adaptive thresholds) and the counters seen at the previous check.
:class:`Analyzer` is the thread that runs every model's check every ``check_interval`` seconds.

>>> import numpy as np
>>> from mlmon_middleware.baseline import Baseline
>>> from mlmon_middleware.performance import PerformanceOptions, PerformanceTracker
>>> rng = np.random.default_rng(0)
>>> base = Baseline.from_data([{"x": float(v)} for v in rng.normal(0, 1, 2000)])
>>> window = {"time": np.zeros(500), "numeric": rng.normal(2, 1, (500, 1)), "categorical": np.empty((500, 0), object)}
>>> checker = DriftChecker("m", "1", performance=PerformanceTracker("m", PerformanceOptions()))
>>> result = checker.check(CheckInputs("m", "1", now=0.0, features=window, schema=base.schema, baseline=base))
>>> result.report["drifted"], result.warmup_baseline is None
(['x'], True)
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from mlmon_middleware.alerts import Alerts, Conditions
from mlmon_middleware.baseline import Baseline
from mlmon_middleware.causes import EXPLAINED, candidates, importance_on_window, rank_causes, sentence
from mlmon_middleware.drift.engine import compare
from mlmon_middleware.drift.forecast import DriftTrend, Forecast
from mlmon_middleware.drift.joint import rows_as_a_whole
from mlmon_middleware.drift.policy import RANK, DriftPolicy
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.estimated import estimated_performance
from mlmon_middleware.pacing import Pacer, pace_point, paced, switching
from mlmon_middleware.performance import PerformanceTracker
from mlmon_middleware.reports import (
    AlertEvent,
    AttributionFeature,
    AttributionReport,
    BaselineSummary,
    Cause,
    DriftReport,
    EstimatedPerformance,
    FeatureDrift,
    LabelCoverage,
    LabelCoverageWindow,
    MergedWorkers,
    PerformanceReport,
    QualityCounts,
    Severity,
)
from mlmon_middleware.reservoir import WindowSnapshot, span_of
from mlmon_middleware.schema import Encoded, FeatureSchema
from mlmon_middleware.store import LabelReader

ATTRIBUTION_MIN_SAMPLES = 30  # explained predictions in the window before attribution drift is judged
COVERAGE_WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
QUALITY_ERRORS = ("type_mismatch", "missing_feature", "unexpected_feature", "non_finite", "shape_mismatch", "invalid_text")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Counts:
    """A model's counters at one moment: predictions by outcome (``ok``, ``error``), capture
    errors by reason, and per feature the rows captured with a problem, by reason."""

    predictions: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"ok": 0, "error": 0})
    capture_errors: Mapping[str, int] = dataclasses.field(default_factory=dict)
    feature_errors: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Attributions:
    """Explained predictions for attribution drift: the features' names, the |contributions|
    of the window's explained predictions, and the baseline's mean |SHAP| (None until known)."""

    names: tuple[str, ...]
    samples: Sequence[np.ndarray]
    baseline: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class CheckInputs:
    """Everything one check reads, as snapshots: the analysis never reaches back into the model.

    ``features`` and ``outputs`` are :class:`~mlmon_middleware.reservoir.SlidingWindow`
    snapshots (empty when nothing was captured yet); ``labels`` is None without a prediction log;
    ``attributions`` is None when the model has no explainer. ``scheduled`` is False for a check
    someone asked for (``?refresh=true``): it reports like any other, but leaves the state that
    counts checks alone (the alerts' sustain streaks, the adaptive thresholds' history, the
    "since the last check" counts, the concept-drift detectors, the last-run time that staleness
    alerts read) and adopts no reference (no warm-up baseline, no first-full-window
    performance), so asking often or early changes no verdict."""

    model: str
    version: str
    now: float
    features: WindowSnapshot = dataclasses.field(default_factory=dict)
    outputs: WindowSnapshot = dataclasses.field(default_factory=dict)
    schema: FeatureSchema | None = None
    output_schema: FeatureSchema | None = None
    baseline: Baseline | None = None
    counts: Counts = Counts()
    labels: LabelReader | None = None
    attributions: Attributions | None = None
    scheduled: bool = True
    #: the performance report of the replica that leads the label-based checks of a fleet sharing
    #: one log, taken instead of computing it here (None: this process computes it)
    fleet_performance: PerformanceReport | None = None
    workers: MergedWorkers | None = None  # with workers sharing: whose windows were merged
    #: why the registry does not approve the served version (the serving gate's verdict; "" when
    #: it does or the model is not governed): the ``ModelNotApproved`` condition
    unapproved: str = ""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What one check found; ``warmup_baseline`` is a baseline built from the first rows, for
    the model to adopt (None when the model had one, or is still warming up)."""

    report: DriftReport
    warmup_baseline: Baseline | None = None


class DriftChecker:
    """The checks of one model, and their state between checks; see the module docstring.

    Parameters:
        model, version: the model identity, on alert events.
        policy: how statistics become verdicts (default ``DriftPolicy()``).
        warmup_rows: rows needed to build a warm-up baseline when there is none.
        on_alert: called with each alert event (firing, severity changed, resolved).
        errors: where a failed optional step of a check is counted (stage ``check_<step>``).
        performance: the model's performance tracker, run at each check.
    """

    def __init__(self, model: str, version: str, *, performance: PerformanceTracker, policy: DriftPolicy | None = None,
                 warmup_rows: int = 1000, on_alert: Callable[[AlertEvent], None] | None = None,
                 errors: ErrorLog | None = None) -> None:
        self.policy = policy or DriftPolicy()
        self.errors = errors or ErrorLog()
        self.warmup_rows = warmup_rows
        self.performance = performance
        self.alerts = Alerts(self.policy.fire_after, self.policy.resolve_after, on_alert, model=model, version=version)
        self.report: DriftReport | None = None
        self.attributions: AttributionReport | None = None  # the last judged attributions
        self.duration = 0.0
        self.last_run = 0.0
        self._lock = threading.Lock()  # one check at a time (analyzer thread, check_now callers)
        # per feature, (effect, PSI) of the last checks: the adaptive thresholds' history
        self._history: dict[str, collections.deque[tuple[float, float]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=500))
        self._trend = DriftTrend(self.policy.forecast_points, self.policy.forecast_min_points)
        self._seen_errors: collections.Counter[str] = collections.Counter()
        self._seen_feature_errors: dict[str, collections.Counter[str]] = {}
        self._seen_predictions = 0
        self._performance_conditions: Conditions = {}  # the last computed, kept through a failed step

    def _step(self, name: str, run: Callable[[], T], failed: T) -> T:
        """An optional part of a check (multivariate tests, estimate, causes): a failure is
        counted and leaves ``failed`` in its place; the drift verdicts and alerts go on."""
        try:
            return run()
        except Exception as exc:
            self.errors.report(f"check_{name}", exc)
            return failed

    def after_fork(self) -> None:
        """In a forked child: fresh locks (the parent's analyzer thread may have held them)."""
        self._lock = threading.Lock()
        self.alerts.after_fork()

    def check(self, inputs: CheckInputs) -> CheckResult:
        """Run one check on ``inputs``: drift, quality, performance, attributions, alerts."""
        with self._lock:
            start = time.perf_counter()
            if inputs.fleet_performance is None:  # a failure (counted): drift goes on, performance alerts stand
                failed: PerformanceReport = {"checked_at": inputs.now, "windows": {}, "status": "failed: see health's errors"}
                performance, conditions = self._step("performance", lambda: self.performance.compute(
                    inputs.labels, inputs.now, scheduled=inputs.scheduled), (failed, dict(self._performance_conditions)))
                self.performance.report, self._performance_conditions = performance, dict(conditions)
            else:  # another replica judges the labels of the shared log: its alerts, not ours
                performance, conditions = inputs.fleet_performance, {}
                self.performance.report = performance
            pace_point()
            report, warmup, drift_conditions = self._drift(inputs)
            pace_point()
            report["performance_status"] = performance.get("status", "")
            report["attributions"] = self._attributions(inputs.attributions)
            conditions.update(drift_conditions)
            conditions.update({("AttributionDrift", f): "warning" for f in report["attributions"].get("drifted", ())})
            if inputs.unapproved:
                conditions[("ModelNotApproved", inputs.version)] = "critical"
            if any(name in EXPLAINED and severity != "none" for (name, _), severity in conditions.items()):
                report["causes"] = self._step("causes", lambda: self._causes(report, performance, inputs), [])
            if inputs.scheduled:
                said = sentence(report.get("causes", []))
                self.alerts.update(conditions, dict.fromkeys(EXPLAINED, said))
            report["alerts"] = [{"alertname": a, "subject": s, "severity": sev} for a, s, sev in self.alerts.active()]
            self.duration = time.perf_counter() - start
            if inputs.scheduled:  # what staleness alerts read: on-demand checks must not hide a dead analyzer
                self.last_run = time.time()
            report["duration_seconds"] = self.duration
            if inputs.workers is not None:
                report["workers"] = inputs.workers
            self.report = report
            return CheckResult(report, warmup)

    def _drift(self, inputs: CheckInputs) -> tuple[DriftReport, Baseline | None, Conditions]:
        """The drift part of a check: its report, a warm-up baseline if one was built, the conditions."""
        features, outputs = inputs.features, inputs.outputs
        rows = len(features["time"]) if features else 0
        report: DriftReport = {"model": inputs.model, "version": inputs.version, "checked_at": inputs.now, "rows": rows,
                               "window": span_of(features),
                               "quality": self._quality_counts(inputs.counts, advance=inputs.scheduled),
                               "labels": _label_coverage(inputs.labels, inputs.model, inputs.now)}
        baseline, warmup = inputs.baseline, None
        schema = inputs.schema
        if baseline is None:
            if rows < self.warmup_rows or schema is None or not inputs.scheduled:  # a scheduled check adopts one
                report["status"] = "warming_up"
                report["warmup_rows"] = self.warmup_rows
                return report, None, {}
            output = ((inputs.output_schema, _encoded(outputs))
                      if inputs.output_schema is not None and outputs and len(outputs["time"]) else None)
            baseline = warmup = Baseline.from_encoded(schema, _encoded(features), output, model=inputs.model, warmup=True)
        schema = baseline.schema
        report["baseline"] = baseline.summary()
        policy = self.policy.adapted(self._history)
        judged = compare(baseline.features, schema, features) if rows else {}
        feature_errors = self._feature_errors_since_last_check(inputs.counts, advance=inputs.scheduled)
        for name, severity in policy.judge(judged).items():
            judged[name]["severity"] = severity
            judged[name]["capture_errors_since_last_check"] = feature_errors.get(name, {})
            if "effect" in judged[name] and inputs.scheduled:
                self._history[name].append((judged[name]["effect"], judged[name].get("psi", 0.0)))
        tested = [n for n, s in judged.items() if s.get("rows", 0) > 0]
        drifted = sorted(n for n in tested if RANK[judged[n].get("severity", "none")] >= RANK["warning"])
        forecasts = self._forecasts(inputs, baseline, report["baseline"], warmup is not None, policy,
                                    {n: judged[n] for n in tested})
        share = len(drifted) / len(tested) if tested else 0.0
        predictions: dict[str, FeatureDrift] = {}
        out_rows = len(outputs["time"]) if outputs else 0
        if out_rows and inputs.output_schema is not None and baseline.predictions:
            predictions = compare(baseline.predictions, inputs.output_schema, outputs)
            for name, severity in policy.judge(predictions).items():
                predictions[name]["severity"] = severity
        report["status"] = "ok"
        report["regime"] = (f"KS / chi² p-values ({policy.correction}, alpha {policy.alpha:g}) "
                            f"and effect sizes (drift from {policy.thresholds.effect:g})")
        report["features"] = judged
        report["drifted"] = drifted
        report["share"] = share
        report["dataset_drift"] = bool(tested) and share >= policy.share
        report["predictions"] = predictions
        report["prediction_drift"] = any(RANK[p.get("severity", "none")] >= RANK["warning"] for p in predictions.values())
        report["forecast"] = {n: f.to_json() for n, f in forecasts.items()}
        if rows and (baseline.pca is not None or baseline.classifier is not None):
            report["multivariate"] = self._step("multivariate", lambda: rows_as_a_whole(baseline, features, policy), {})
        conditions: Conditions = {("FeatureDrift", n): judged[n].get("severity", "none") for n in drifted}
        conditions.update({("DriftForecast", n): "warning" for n, f in forecasts.items()  # sustained over points
                           if f.earliest < policy.forecast_horizon and n not in drifted
                           and self._trend.streaks.get(n, 0) >= policy.fire_after})
        conditions.update({("PredictionDrift", n): p.get("severity", "none") for n, p in predictions.items()})
        if report["dataset_drift"]:
            conditions[("DatasetDrift", "")] = "critical"
        if baseline.estimator is not None and out_rows and inputs.output_schema is not None:
            estimator, output_schema, degradation = baseline.estimator, inputs.output_schema, self.performance.options.degradation
            failed: tuple[EstimatedPerformance, dict[str, Severity]] = ({"note": "the estimate failed"}, {})
            report["performance_estimated"], dropped = self._step("estimate", lambda: estimated_performance(
                estimator, features, schema, outputs, output_schema, degradation), failed)
            conditions.update({("EstimatedPerformanceDrop", metric): severity for metric, severity in dropped.items()})
        if not drifted:  # else the features say more
            conditions.update({("MultivariateDrift", method): "warning" for method, found in report.get("multivariate", {}).items()
                               if found["severity"] == "warning"})
        return report, warmup, conditions

    def _causes(self, report: DriftReport, performance: PerformanceReport, inputs: CheckInputs) -> list[Cause]:
        """The likely causes (:mod:`~mlmon_middleware.causes`): importance from the explanations'
        shares when they run, else a permutation importance on the window."""
        shares = {f: a["current_share"] for f, a in (report["attributions"].get("features") or {}).items()}
        missing = {f: p.get("missing_rate", 0.0) for f, p in inputs.baseline.features.items()} if inputs.baseline else {}
        importance = shares or importance_on_window(inputs.features, inputs.schema or FeatureSchema([], []),
                                                     inputs.outputs, inputs.output_schema, candidates(report, missing))
        return rank_causes(report, importance, performance, self.policy.thresholds.effect_critical, missing,
                           "attribution" if shares else "importance")

    def _forecasts(self, inputs: CheckInputs, baseline: Baseline, reference: BaselineSummary, warmup: bool,
                   policy: DriftPolicy, tested: Mapping[str, FeatureDrift]) -> dict[str, Forecast]:
        """The drift forecasts of the tested features (:mod:`~mlmon_middleware.drift.forecast`):
        a scheduled check adds its effects to the trend first when its window shares no row with
        the last one recorded. Each trend's interval is at confidence 1 − 2·alpha/features (one
        sided, Bonferroni over the features: a check of no-drift data raises a forecast at most
        ``alpha`` of the time)."""
        key = (id(baseline), reference.get("created_at"), reference.get("schema_hash"), reference.get("rows"))
        if not tested or (not inputs.scheduled and key != self._trend.reference):
            return {}  # an on-demand check against a baseline the trend has not met yet: no forecast of the old one
        if inputs.scheduled:
            times = inputs.features["time"]
            self._trend.add(key, inputs.now, float(np.min(times)), float(np.max(times)), len(times),
                            {n: float(s["effect"]) for n, s in tested.items() if "effect" in s},
                            record=not warmup)  # a warm-up baseline built from this window: its effects are 0
        return self._trend.forecasts({n: policy.thresholds_for(n).effect for n in tested},
                                     1.0 - 2.0 * policy.alpha / len(tested), inputs.now)

    def _quality_counts(self, counts: Counts, advance: bool) -> QualityCounts:
        """Capture problems and volume since the previous scheduled check."""
        errors = collections.Counter({k: v for k, v in counts.capture_errors.items() if k in QUALITY_ERRORS})
        since = errors - self._seen_errors
        total = counts.predictions.get("ok", 0) + counts.predictions.get("error", 0)
        volume = total - self._seen_predictions
        if advance:
            self._seen_errors, self._seen_predictions = errors, total
        return {"capture_errors_since_last_check": dict(since), "predictions_since_last_check": volume}

    def _attributions(self, attributions: Attributions | None) -> AttributionReport:
        """Attribution drift: each feature's share of the mean |SHAP| over the window's explained
        predictions against its share over the baseline's background sample. A feature among the
        baseline's five largest whose share moves by half or more, or a new largest feature, drifts."""
        if attributions is None:
            return {}
        samples, base = attributions.samples, attributions.baseline
        if base is None or len(samples) < ATTRIBUTION_MIN_SAMPLES or base.sum() <= 0:
            return {"status": "waiting", "samples": len(samples), "needs": ATTRIBUTION_MIN_SAMPLES,
                    "baseline": base is not None}
        current = np.mean(samples, axis=0)
        base_share, cur_share = base / base.sum(), current / max(current.sum(), 1e-300)
        base_rank = np.argsort(np.argsort(-base_share)) + 1
        cur_rank = np.argsort(np.argsort(-cur_share)) + 1
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(base_share > 0, (cur_share - base_share) / base_share, 0.0)
        features: dict[str, AttributionFeature] = {
            name: {"baseline": float(base[i]), "current": float(current[i]), "baseline_share": float(base_share[i]),
                   "current_share": float(cur_share[i]), "relative_shift": float(shift[i]),
                   "baseline_rank": int(base_rank[i]), "current_rank": int(cur_rank[i])}
            for i, name in enumerate(attributions.names)}
        drifted = {n for n, f in features.items() if f["baseline_rank"] <= 5 and abs(f["relative_shift"]) >= 0.5}
        drifted |= {n for n, f in features.items() if f["current_rank"] == 1 and f["baseline_rank"] != 1}
        self.attributions = {"status": "ok", "samples": len(samples), "features": features, "drifted": sorted(drifted)}
        return self.attributions

    def _feature_errors_since_last_check(self, counts: Counts, advance: bool) -> dict[str, dict[str, int]]:
        now = {f: collections.Counter(c) for f, c in counts.feature_errors.items()}
        since = {f: dict(c - self._seen_feature_errors.get(f, collections.Counter())) for f, c in now.items()}
        if advance:
            self._seen_feature_errors = now
        return {f: c for f, c in since.items() if c}


def _encoded(window: WindowSnapshot) -> Encoded:
    return Encoded(window["numeric"], window["categorical"], collections.Counter())


def _label_coverage(labels: LabelReader | None, model: str, now: float) -> LabelCoverage:
    """Share of the logged predictions of the last hour, day and week that have a label."""
    if labels is None:
        return {}
    coverage: dict[str, LabelCoverageWindow] = {}
    for window, seconds in COVERAGE_WINDOWS.items():
        total, labelled = labels.counts(model, since=now - seconds)
        coverage[window] = {"predictions": total, "labelled": labelled, "share": labelled / total if total else 0.0}
    return {"coverage": coverage}


class Analyzer:
    """One thread running every model's drift check every ``interval`` seconds, and ``final``
    (if given) once when stopped, in the same thread (the last audit events)."""

    def __init__(self, run: Callable[[], None], interval: float, final: Callable[[], None] | None = None) -> None:
        self._run_checks = run
        self._final = final
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlmon-analyzer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        pacer = Pacer()
        while not self._stop.wait(self._interval):
            # the checks let go of the GIL between features (see pacing); the rest of their work
            # (snapshots, performance, reports) runs under the short switch interval
            with switching.working(), paced(pacer):
                self._run_checks()
        if self._final is not None:
            self._final()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
