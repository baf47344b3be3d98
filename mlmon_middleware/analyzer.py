"""The background analysis: drift, data quality and alerts, per model, off the request path.

A :class:`DriftChecker` belongs to each ModelMonitor. ``check()`` snapshots the model's window
(copies, so the pipeline never waits), compares it with the baseline (a warm-up baseline is
built from the first ``warmup_rows`` rows when none was given), applies the policy, updates the
alert states and keeps the report that ``drift_report()``, ``/mlmon/drift`` and the gauges read.
:class:`Analyzer` runs every model's check every ``check_interval`` seconds in one thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mlmon_middleware.alerts import Alerts
from mlmon_middleware.baseline import Baseline
from mlmon_middleware.drift.engine import compare
from mlmon_middleware.drift.policy import RANK, DriftPolicy
from mlmon_middleware.schema import Encoded

if TYPE_CHECKING:
    from mlmon_middleware.monitor import ModelMonitor

SCORE_METHODS = ("psi", "js", "ks", "wasserstein_norm", "chi2")
EXPORTED_METHOD = {"wasserstein_norm": "wasserstein"}  # the gauge's method label
ATTRIBUTION_MIN_SAMPLES = 30  # explained predictions in the window before attribution drift is judged
COVERAGE_WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
QUALITY_ERRORS = ("type_mismatch", "missing_feature", "unexpected_feature", "non_finite", "shape_mismatch")


class DriftChecker:
    """Drift checks of one model; see the module docstring."""

    def __init__(self, model: ModelMonitor, policy: DriftPolicy | None = None, warmup_rows: int = 1000,
                 on_alert: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.model = model
        self.policy = policy or DriftPolicy()
        self.warmup_rows = warmup_rows
        self.alerts = Alerts(self.policy.fire_after, self.policy.resolve_after, on_alert,
                             labels={"model": model.name, "version": model.version})
        self.report: dict[str, Any] | None = None
        self.duration = 0.0
        self.last_run = 0.0
        self._lock = threading.Lock()  # one check at a time (analyzer thread, check_now callers)
        self._psi_history: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=500))
        self._seen_errors: collections.Counter = collections.Counter()
        self._seen_feature_errors: dict[str, collections.Counter] = {}
        self._seen_predictions = 0
        self._attribution_values: list[tuple[float, dict[str, Any]]] = []

    def check(self) -> dict[str, Any]:
        with self._lock:
            start = time.perf_counter()
            report = self._check()
            self.duration = time.perf_counter() - start
            self.last_run = time.time()
            report["duration_seconds"] = self.duration
            self.report = report
            return report

    def _check(self) -> dict[str, Any]:
        mm = self.model
        mm.monitor.flush()  # the window includes everything captured so far
        performance, conditions = mm.performance.compute()
        report, drift_conditions = self._drift(mm)
        report["performance_status"] = performance["status"]
        report["attributions"] = self._attributions(mm)
        conditions.update(drift_conditions)
        conditions.update({("AttributionDrift", f): "warning" for f in report["attributions"].get("drifted", ())})
        self.alerts.update(conditions)
        report["alerts"] = [{"alertname": a, "subject": s, "severity": sev} for a, s, sev in self.alerts.active()]
        return report

    def _drift(self, mm: ModelMonitor) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
        """The drift part of a check: its report and the alert conditions it raises."""
        window_seconds = mm.monitor.config.window_seconds
        snapshot = mm.window_snapshot(None if window_seconds is None else time.time() - window_seconds)
        features, outputs = snapshot["features"], snapshot["outputs"]
        rows = len(features["time"]) if features else 0
        report: dict[str, Any] = {"model": mm.name, "version": mm.version, "checked_at": time.time(), "rows": rows,
                                  "window": _span_of(features), "quality": self._quality_counts(mm),
                                  "labels": self._label_coverage(mm)}
        baseline = mm.baseline
        if baseline is None:
            if rows < self.warmup_rows or mm.schema is None:
                report.update(status="warming_up", warmup_rows=self.warmup_rows)
                return report, {}
            baseline = mm.set_baseline(Baseline.from_encoded(
                mm.schema, Encoded(features["numeric"], features["categorical"], collections.Counter()),
                (mm.output_schema, Encoded(outputs["numeric"], outputs["categorical"], collections.Counter()))
                if outputs and len(outputs["time"]) else None, model=mm.name, warmup=True))
        report["baseline"] = baseline.summary()
        policy = self.policy.adapted(self._psi_history)
        judged = compare(baseline.features, mm.schema, features, p_values=rows < policy.large_window) if rows else {}
        feature_errors = self._feature_errors_since_last_check(mm)
        for name, severity in policy.judge(judged, rows).items():
            judged[name]["severity"] = severity
            judged[name]["capture_errors_since_last_check"] = feature_errors.get(name, {})
            if "psi" in judged[name]:
                self._psi_history[name].append(judged[name]["psi"])
        tested = [n for n, s in judged.items() if s["rows"] > 0]
        drifted = sorted(n for n in tested if RANK[judged[n]["severity"]] >= RANK["warning"])
        share = len(drifted) / len(tested) if tested else 0.0
        predictions: dict[str, Any] = {}
        out_rows = len(outputs["time"]) if outputs else 0
        if out_rows and mm.output_schema is not None and baseline.predictions:
            predictions = compare(baseline.predictions, mm.output_schema, outputs, p_values=out_rows < policy.large_window)
            for name, severity in policy.judge(predictions, out_rows).items():
                predictions[name]["severity"] = severity
        report.update(
            status="ok", regime=("p-values" if rows < policy.effect_window else
                                 "p-values and effect sizes" if rows < policy.large_window else "effect sizes"),
            features=judged, drifted=drifted, share=share, dataset_drift=bool(tested) and share >= policy.share,
            predictions=predictions,
            prediction_drift=any(RANK[p["severity"]] >= RANK["warning"] for p in predictions.values()),
        )
        conditions = {("FeatureDrift", n): judged[n]["severity"] for n in drifted}
        conditions.update({("PredictionDrift", n): p["severity"] for n, p in predictions.items()})
        if report["dataset_drift"]:
            conditions[("DatasetDrift", "")] = "critical"
        return report, conditions

    def _quality_counts(self, mm: ModelMonitor) -> dict[str, Any]:
        """Capture problems and volume since the previous check."""
        predictions, capture = mm.counts()
        errors = collections.Counter({k: v for k, v in capture.items() if k in QUALITY_ERRORS})
        since = errors - self._seen_errors
        self._seen_errors = errors
        total = predictions["ok"] + predictions["error"]
        volume, self._seen_predictions = total - self._seen_predictions, total
        return {"capture_errors_since_last_check": dict(since), "predictions_since_last_check": volume}

    def _attributions(self, mm: ModelMonitor) -> dict[str, Any]:
        """Attribution drift: each feature's share of the mean |SHAP| over the window's explained
        predictions against its share over the baseline's background sample. A feature among the
        baseline's five largest whose share moves by half or more, or a new largest feature, drifts."""
        service = mm.explainer
        if service is None:
            return {}
        window_seconds = mm.monitor.config.window_seconds
        since = None if window_seconds is None else time.time() - window_seconds
        samples = [a for t, a in list(mm.attributions) if since is None or t >= since]
        base = service.baseline_attributions
        if base is None or len(samples) < ATTRIBUTION_MIN_SAMPLES or base.sum() <= 0:
            return {"status": "waiting", "samples": len(samples), "needs": ATTRIBUTION_MIN_SAMPLES,
                    "baseline": base is not None}
        current = np.mean(samples, axis=0)
        base_share, cur_share = base / base.sum(), current / max(current.sum(), 1e-300)
        base_rank = np.argsort(np.argsort(-base_share)) + 1
        cur_rank = np.argsort(np.argsort(-cur_share)) + 1
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(base_share > 0, (cur_share - base_share) / base_share, 0.0)
        features = {name: {"baseline": float(base[i]), "current": float(current[i]), "baseline_share": float(base_share[i]),
                           "current_share": float(cur_share[i]), "relative_shift": float(shift[i]),
                           "baseline_rank": int(base_rank[i]), "current_rank": int(cur_rank[i])}
                    for i, name in enumerate(service.names)}
        drifted = {n for n, f in features.items() if f["baseline_rank"] <= 5 and abs(f["relative_shift"]) >= 0.5}
        drifted |= {n for n, f in features.items() if f["current_rank"] == 1 and f["baseline_rank"] != 1}
        self._attribution_values = [(float(v), {**mm.attrs, "feature": n, "source": source})
                                    for n, f in features.items() for source, v in (("current", f["current"]),
                                                                                  ("baseline", f["baseline"]))]
        return {"status": "ok", "samples": len(samples), "features": features, "drifted": sorted(drifted)}

    def attribution_observations(self) -> list[tuple[float, dict[str, Any]]]:
        return list(self._attribution_values)

    @staticmethod
    def _label_coverage(mm: ModelMonitor) -> dict[str, Any]:
        """Share of the logged predictions of the last hour, day and week that have a label."""
        if mm.monitor.store_writer is None:
            return {}
        now, coverage = time.time(), {}
        for window, seconds in COVERAGE_WINDOWS.items():
            total, labelled = mm.label_coverage(since=now - seconds)
            coverage[window] = {"predictions": total, "labelled": labelled, "share": labelled / total if total else 0.0}
        return {"coverage": coverage}

    def _feature_errors_since_last_check(self, mm: ModelMonitor) -> dict[str, dict[str, int]]:
        now = {f: collections.Counter(c) for f, c in mm.feature_errors().items()}
        since = {f: dict(c - self._seen_feature_errors.get(f, collections.Counter())) for f, c in now.items()}
        self._seen_feature_errors = now
        return {f: c for f, c in since.items() if c}

    def observations(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        """Values of the observable gauge ``name`` from the last report."""
        report = self.report
        attrs = self.model.attrs
        if name == "mlmon.analysis.duration":
            return [(self.duration, attrs)] if report else []
        if name == "mlmon.analysis.last_run":
            return [(self.last_run, attrs)] if report else []
        if name == "mlmon.label.coverage":
            coverage = (report or {}).get("labels", {}).get("coverage", {})
            return [(c["share"], {**attrs, "window": w}) for w, c in coverage.items()]
        if name == "mlmon.alert.events":
            return [(n, {**attrs, "alertname": a, "state": state}) for (a, state), n in self.alerts.events.items()]
        if name == "mlmon.alert.active":
            return [(1, {**attrs, "alertname": a, "subject": s, "severity": sev}) for a, s, sev in self.alerts.active()]
        if not report or report.get("status") != "ok":
            return []
        features, out = report["features"], []
        if name == "mlmon.feature.drift.score":
            out = [(s[m], {**attrs, "feature": f, "method": EXPORTED_METHOD.get(m, m)})
                   for f, s in features.items() for m in SCORE_METHODS if m in s]
        elif name == "mlmon.prediction.drift.score":
            out = [(s[m], {**attrs, "output": f, "method": EXPORTED_METHOD.get(m, m)})
                   for f, s in report["predictions"].items() for m in SCORE_METHODS if m in s]
        elif name == "mlmon.feature.drift.detected":
            out = [(int(RANK[s["severity"]] >= RANK["warning"]), {**attrs, "feature": f, "severity": s["severity"]})
                   for f, s in features.items() if s["rows"] > 0]
        elif name == "mlmon.dataset.drift.share":
            out = [(report["share"], attrs)]
        else:  # the quality ratios
            key = name.removeprefix("mlmon.feature.").replace(".", "_")
            out = [(s[key], {**attrs, "feature": f}) for f, s in features.items() if key in s]
        return out


def _span_of(window: dict[str, Any]) -> dict[str, float | None]:
    times = window.get("time") if window else None
    if times is None or not len(times):
        return {"from": None, "to": None}
    return {"from": float(times[0]), "to": float(times[-1])}


class Analyzer:
    """One thread running every model's drift check every ``interval`` seconds."""

    def __init__(self, run: Callable[[], None], interval: float) -> None:
        self._run_checks = run
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlmon-analyzer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._run_checks()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
