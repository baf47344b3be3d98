"""Model performance once labels arrive: metrics over sliding windows, per segment, fairness.

A :class:`PerformanceTracker` (configured by :class:`PerformanceOptions`) reads labelled
predictions through a :class:`~mlmon_middleware.store.LabelReader` for each window
(the last N labelled predictions, and those made in the last T seconds), computes the metrics of
:mod:`~mlmon_middleware.metrics` overall, per segment value (the ``max_segments`` largest by
volume, the rest pooled as ``__other__``) and, for a protected attribute, the fairness measures;
it compares them with the baseline's performance (from the baseline file, or else the first full
count window) to raise degradation conditions for the alert policy, counting a drop only when it
passes both its relative threshold and its own sampling error (``PERFORMANCE_ALPHA``, Bonferroni
over the metrics and windows compared: bootstrap standard errors of the window, and of the
reference when it is a window); and it feeds the error stream of newly labelled predictions, in
arrival order whatever times the labels carry, to the concept-drift detectors
(:mod:`mlmon_middleware.drift.sequential`), raising concept drift when ``VOTES`` of them agree
within ``latch_checks`` checks and keeping it raised ``latch_checks`` checks after the last check
where they agree (2 to 3 checks by default), so that the alert policy's ``fire_after`` and
``resolve_after`` see it. The report's ``history`` holds each window's overall
metrics at the last ``HISTORY_CHECKS`` checks: performance over time, as the dashboard draws it.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlmon_middleware.alerts import Conditions
from mlmon_middleware.config import ConfigError
from mlmon_middleware.drift.policy import RANK
from mlmon_middleware.drift.sequential import ErrorStreamDetectors, river_available
from mlmon_middleware.metrics import (
    HIGHER_IS_BETTER,
    as_label,
    binary_predictions,
    compute_metrics,
    evaluator,
    infer_task,
    multiclass_predictions,
    regression_pairs,
    standard_errors,
)
from mlmon_middleware.reports import (
    Degradation,
    Fairness,
    GroupFairness,
    Metrics,
    PerformanceHistoryEntry,
    PerformanceReport,
    Severity,
    WindowPerformance,
)
from mlmon_middleware.store import LabelledRow, LabelReader
from mlmon_middleware.store_types import decode_json
from mlmon_middleware.values import segment_value

OTHER = "__other__"
VOTES = 2  # detectors that must agree (within the latch) before concept drift is raised
MIN_DEGRADATION_ROWS = 30  # labels a window needs before its metrics can degrade
PERFORMANCE_ALPHA = 0.005  # per check, across the metrics and windows compared with the reference
HISTORY_CHECKS = 500  # checks whose overall metrics the report's ``history`` keeps
#: labelled predictions a time window reads at most, the latest: traffic, not configuration,
#: decides how many fall in 24 hours, and a check holds them all in memory at once
MAX_TIME_WINDOW_ROWS = 100_000


@dataclasses.dataclass(frozen=True)
class PerformanceOptions:
    """How a model's performance is computed once labels arrive (``@monitor(performance=...)``).

    Parameters:
        task: ``"binary"``, ``"multiclass"`` or ``"regression"``; inferred from the labels when None
            (numbers that are not all integers: regression; two classes: binary; else multiclass).
        positive: the positive class of a binary task (default 1, or "1" for text labels).
        threshold: a binary score at or above it predicts the positive class.
        count_window, time_window: the last N labelled predictions; those made in the last T
            seconds (at most the latest ``MAX_TIME_WINDOW_ROWS``, 100,000: the window then says
            ``"capped": true``).
        max_segments: segment values exported per segment feature; the rest are ``__other__``.
        protected: the segment feature to compute fairness for (one of the model's ``segments``).
        degradation: relative drops (warning, critical) against the reference performance.
        reference: the reference metrics (else the baseline's, else the first full count window).

    >>> PerformanceOptions.create({"task": "binary", "count_window": 500}).count_window
    500
    >>> PerformanceOptions.create({"treshold": 0.3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlmon_middleware.config.ConfigError: performance: unknown option 'treshold'; valid options: count_window, degradation, ...
    """

    task: str | None = None
    positive: Any = 1
    threshold: float = 0.5
    count_window: int = 1000
    time_window: float = 86400.0
    max_segments: int = 20
    protected: str | None = None
    degradation: tuple[float, float] = (0.05, 0.10)
    reference: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.task not in (None, "binary", "multiclass", "regression"):
            raise ConfigError(f"performance: task must be 'binary', 'multiclass', 'regression' or None, got {self.task!r}")
        if isinstance(self.count_window, bool) or not isinstance(self.count_window, int) or self.count_window < 1:
            raise ConfigError(f"performance: count_window must be an integer >= 1, got {self.count_window!r}")
        if not isinstance(self.time_window, (int, float)) or self.time_window <= 0:
            raise ConfigError(f"performance: time_window must be a number of seconds > 0, got {self.time_window!r}")
        if isinstance(self.max_segments, bool) or not isinstance(self.max_segments, int) or self.max_segments < 1:
            raise ConfigError(f"performance: max_segments must be an integer >= 1, got {self.max_segments!r}")
        if len(self.degradation) != 2 or not 0 < self.degradation[0] <= self.degradation[1]:
            raise ConfigError(f"performance: degradation must be (warning, critical) with 0 < warning <= critical, "
                              f"got {self.degradation!r}")

    @classmethod
    def create(cls, options: PerformanceOptions | Mapping[str, Any] | None) -> PerformanceOptions:
        """Options from an instance, a dict of its fields (checked by name), or None (the defaults)."""
        if options is None:
            return cls()
        if isinstance(options, PerformanceOptions):
            return options
        if not isinstance(options, Mapping):
            raise ConfigError(f"performance must be a PerformanceOptions or a dict of its fields, got {options!r}")
        valid = sorted(f.name for f in dataclasses.fields(cls))
        for key in options:
            if key not in valid:
                raise ConfigError(f"performance: unknown option {key!r}; valid options: {', '.join(valid)}")
        return cls(**options)


class PerformanceTracker:
    """Performance of one model from its prediction log; see the module docstring.

    It reads labels through a :class:`~mlmon_middleware.store.LabelReader` handed to
    :meth:`compute` and keeps only its own state (the reference, the history, the detectors).
    """

    def __init__(self, model: str, options: PerformanceOptions, segments: Sequence[str] = (),
                 baseline_performance: Mapping[str, float] | None = None, latch_checks: int = 2) -> None:
        if options.protected is not None and options.protected not in segments:
            raise ConfigError(f"protected={options.protected!r} must be one of the model's segments {list(segments)}")
        self.model = model
        self.options = options
        self.segments = tuple(segments)
        self.windows = {f"last_{options.count_window}": ("count", float(options.count_window)),
                        f"{int(options.time_window)}s": ("time", float(options.time_window))}
        self.reference: dict[str, float] | None = dict(options.reference or baseline_performance or {}) or None
        self.reference_source = "given" if options.reference else "baseline" if baseline_performance else None
        self.reference_errors: dict[str, float] = {}  # the reference's own bootstrap errors, when it is a window
        self.report: PerformanceReport | None = None
        # per check: the overall metrics of each window, for "performance over time"
        self.history: collections.deque[PerformanceHistoryEntry] = collections.deque(maxlen=HISTORY_CHECKS)
        self.detectors: ErrorStreamDetectors | None = None
        self._labels_seen = 0  # the last label batch fed to the detectors
        self._fired: dict[str, list[int]] = {}
        # concept drift stays raised for this many checks (its own included): long enough for the
        # alert policy to see it sustained (fire_after) and to resolve only once clean (resolve_after)
        self.latch_checks = latch_checks
        self._recent: collections.deque[set[str]] = collections.deque(maxlen=latch_checks)  # detectors fired
        self._latched = 0  # checks the condition stays raised, this one included

    def compute(self, labels: LabelReader | None, now: float, scheduled: bool = True) -> tuple[PerformanceReport, Conditions]:
        """The performance report at ``now`` from the labels ``labels`` holds (None: no
        prediction log) and the alert conditions it raises. An unscheduled (on-demand) check
        leaves the concept-drift detectors and the history as they were: it reports the last
        scheduled check's concept drift and raises no condition of its own there."""
        report: PerformanceReport = {"checked_at": now, "windows": {}}
        conditions: Conditions = {}
        if labels is None:
            report["status"] = "no prediction log (store_dir or store_url)"
            self.report = report
            return report, conditions
        windows: dict[str, WindowPerformance] = {}
        for window, (kind, size) in self.windows.items():
            rows = (labels.labelled(self.model, since=0.0, limit=int(size)) if kind == "count"
                    else labels.labelled(self.model, since=now - size, limit=MAX_TIME_WINDOW_ROWS + 1))
            capped = kind == "time" and len(rows) > MAX_TIME_WINDOW_ROWS
            result = windows[window] = self._window(rows[-MAX_TIME_WINDOW_ROWS:] if capped else rows)
            if capped:
                result["capped"] = True
            overall = result.get("overall") or {}
            usable = overall.get("count") or 0.0  # a regression leaves out labels that are no number
            if scheduled and kind == "count" and self.reference is None and usable >= size:
                self.reference = {k: v for k, v in overall.items() if k != "count" and v is not None}
                self.reference_errors = dict(result.get("standard_errors") or {})
                self.reference_source = "first full window"
        report["windows"] = windows
        report["reference"] = {"source": self.reference_source, "metrics": self.reference}
        if self.reference:
            from scipy.stats import norm  # scipy loads on the first check, not at import

            tests = sum(1 for r in windows.values() for m in self.reference if (r.get("overall") or {}).get(m) is not None)
            z_critical = float(norm.isf(PERFORMANCE_ALPHA / max(tests, 1)))
            for window, result in windows.items():
                overall = result.get("overall") or {}
                result["degradation"] = self._degradation(overall, result.get("standard_errors") or {},
                                                          z_critical, int(overall.get("count") or 0))
                for metric, change in result["degradation"].items():
                    severity = change["severity"]
                    if severity != "none":
                        key = ("PerformanceDegradation", f"{metric}@{window}")
                        conditions[key] = max(severity, conditions.get(key, "none"), key=RANK.__getitem__)
        for window, result in windows.items():
            fairness = result.get("fairness")
            if fairness and fairness["four_fifths_violated"]:
                conditions[("DisparateImpact", f"{self.options.protected}@{window}")] = "warning"
        if scheduled:
            report["concept_drift"] = self._concept_drift(labels, conditions)
            self.history.append({"checked_at": now, "windows": {w: {"rows": r.get("rows", 0), "overall": r.get("overall")}
                                                                for w, r in windows.items()}})
        else:
            report["concept_drift"] = dict((self.report or {}).get("concept_drift") or {"status": "no scheduled check yet"})
        report["status"] = "ok"
        report["history"] = list(self.history)
        self.report = report
        return report, conditions

    def _concept_drift(self, labels: LabelReader, conditions: Conditions) -> dict[str, Any]:
        """Feed the errors of the predictions labelled since the last check to the detectors."""
        if not river_available():
            return {"status": "install mlmon-middleware[concept] (river) for Page-Hinkley, DDM and ADWIN"}
        rows = labels.newly_labelled(self.model, self._labels_seen)
        if rows:
            self._labels_seen = max(r.seq for r in rows)
            predictions = [decode_json(r.prediction) for r in rows]
            actual = [r.label for r in rows]
            task = self.options.task or infer_task(actual)
            if self.detectors is None:
                self.detectors = ErrorStreamDetectors(binary=task != "regression")
            fired = self.detectors.update(self._errors(task, predictions, actual))
            self._fired = fired
        else:
            self._fired = {}
        if self.detectors is None:
            return {"status": "no labels yet"}
        # Each detector alone false-alarms now and then on a long stationary stream; two agreeing
        # within the latch almost never do, and soon do after a real change (docs/ground-truth.md).
        # Raised from each check where they agree (over the last latch_checks checks) until
        # latch_checks checks after it: latch_checks checks when the votes came one check apart,
        # up to 2·latch_checks - 1 when they came together (the union keeps agreeing meanwhile).
        self._recent.append(set(self._fired))
        agreeing = sorted(set().union(*self._recent))
        if len(agreeing) >= min(VOTES, len(self.detectors.names)):
            self._latched = self.latch_checks
        raised = self._latched > 0
        if raised:
            conditions[("ConceptDrift", "error_stream")] = "warning"
            self._latched -= 1
        return {"status": "ok", **self.detectors.summary(), "fired_this_check": self._fired,
                "agreeing": agreeing, "raised": raised}

    def _errors(self, task: str, predictions: list[Any], labels: list[Any]) -> list[float]:
        if task == "regression":  # a label or prediction that is no finite number is left out
            y_pred, y_true = regression_pairs(predictions, labels)
            error = np.abs(y_true - y_pred)
            errors: list[float] = error[np.isfinite(error)].tolist()
            return errors
        y_true = np.array([as_label(v) for v in labels], dtype=object)
        if task == "binary":
            _, y_pred = self._binary(predictions, as_label(self.options.positive), y_true)
        else:
            y_pred = multiclass_predictions(predictions)[2]
        wrong: list[float] = (y_pred != y_true).astype(int).tolist()
        return wrong

    def _degradation(self, current: Mapping[str, float | None], errors: Mapping[str, float],
                     z_critical: float, rows: int) -> dict[str, Degradation]:
        """Per metric: the relative change against the reference and its severity. A drop counts
        only when it passes the relative threshold *and* ``z_critical`` standard errors of the
        difference (the window's bootstrap error, and the reference's when it is a window too),
        on at least ``MIN_DEGRADATION_ROWS`` labels: on a few hundred labels, a 10 % drop of log
        loss is often noise. A window whose every label was right (or wrong) has a bootstrap
        error of 0; the error is then taken as no smaller than one label's worth, |reference| / rows."""
        out: dict[str, Degradation] = {}
        warning, critical = self.options.degradation
        for metric, ref in (self.reference or {}).items():
            value = current.get(metric)
            if value is None or not ref:
                continue
            change = (value - ref) / abs(ref)
            drop = -change if metric in HIGHER_IS_BETTER else change  # errors degrade by growing
            error = float(np.hypot(max(errors.get(metric, 0.0), abs(ref) / max(rows, 1)),
                                   self.reference_errors.get(metric, 0.0)))
            z = drop * abs(ref) / error
            severity: Severity = "none"
            if z >= z_critical and rows >= MIN_DEGRADATION_ROWS:
                severity = "critical" if drop >= critical else "warning" if drop >= warning else "none"
            out[metric] = {"reference": ref, "current": value, "relative_change": change, "severity": severity,
                           "standard_error": error, "z": float(min(z, 1e9))}
        return out

    def _window(self, rows: Sequence[LabelledRow]) -> WindowPerformance:
        result: WindowPerformance = {"rows": len(rows), "overall": None, "segments": {}}
        if not rows:
            return result
        predictions = [decode_json(r.prediction) for r in rows]
        labels = [r.label for r in rows]
        task = self.options.task or infer_task(labels)
        result["task"] = task
        evaluate = evaluator(task, predictions, labels, positive=self.options.positive, threshold=self.options.threshold)
        result["overall"] = evaluate(None)
        result["standard_errors"] = standard_errors(evaluate, len(rows), seed=len(rows))
        segment_values = [decode_json(r.segments) for r in rows]
        segments: dict[str, dict[str, Metrics]] = {}
        for feature in self.segments:
            # bounded here too: a log written before segment values were bounded, or by an older replica
            values = np.array([str(segment_value(s.get(feature))) for s in segment_values], dtype=object)
            kept = _top_values(values, self.options.max_segments)
            capped = np.where(np.isin(values, kept), values, OTHER)
            segments[feature] = {
                value: self._metrics(task, [predictions[i] for i in idx], [labels[i] for i in idx])
                for value in (*kept, OTHER) if len(idx := np.flatnonzero(capped == value))}
            if feature == self.options.protected and task == "binary":
                result["fairness"] = self._fairness(predictions, labels, capped)
        result["segments"] = segments
        return result

    def _metrics(self, task: str, predictions: list[Any], labels: list[Any]) -> dict[str, float | None]:
        return compute_metrics(task, predictions, labels, positive=self.options.positive, threshold=self.options.threshold)

    def _binary(self, predictions: list[Any], positive: str, y_true: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        return binary_predictions(predictions, positive, y_true, self.options.threshold)

    def _fairness(self, predictions: list[Any], labels: list[Any], groups: np.ndarray) -> Fairness:
        positive = as_label(self.options.positive)
        y_true = np.array([as_label(v) for v in labels], dtype=object)
        _, y_pred = self._binary(predictions, positive, y_true)
        per_group: dict[str, GroupFairness] = {}
        for group in np.unique(groups):
            mask = groups == group
            pred_pos, true_pos = y_pred[mask] == positive, y_true[mask] == positive
            per_group[str(group)] = {
                "count": int(mask.sum()), "positive_rate": float(pred_pos.mean()),
                "tpr": float(pred_pos[true_pos].mean()) if true_pos.any() else None,
                "fpr": float(pred_pos[~true_pos].mean()) if (~true_pos).any() else None}
        rates = [g["positive_rate"] for g in per_group.values()]
        ratio = min(rates) / max(rates) if max(rates) > 0 else 1.0
        tprs = [t for g in per_group.values() if (t := g["tpr"]) is not None]
        fprs = [f for g in per_group.values() if (f := g["fpr"]) is not None]
        p_value = _rate_gap_p_value(list(per_group.values()))
        return {"attribute": self.options.protected, "groups": per_group, "demographic_parity_ratio": ratio,
                "tpr_gap": max(tprs) - min(tprs) if tprs else None, "fpr_gap": max(fprs) - min(fprs) if fprs else None,
                "rate_gap_p_value": p_value,
                # the ratio alone is noise in small groups: the gap must also be unlikely by chance
                # (Bonferroni over the windows, each of which may raise DisparateImpact)
                "four_fifths_violated": ratio < 0.8 and p_value < PERFORMANCE_ALPHA / max(len(self.windows), 1)}


def _rate_gap_p_value(groups: list[GroupFairness]) -> float:
    """Two-sided p-value that the lowest and highest positive rates of ``groups`` differ only by
    chance: Fisher's exact test of the two groups, Bonferroni over the pairs one could have picked."""
    from scipy.stats import fisher_exact

    if len(groups) < 2:
        return 1.0
    low = min(groups, key=lambda g: g["positive_rate"])
    high = max(groups, key=lambda g: g["positive_rate"])
    table = [[round(g["positive_rate"] * g["count"]), g["count"] - round(g["positive_rate"] * g["count"])] for g in (low, high)]
    pairs = len(groups) * (len(groups) - 1) // 2
    return float(min(1.0, fisher_exact(table).pvalue * pairs))


def _top_values(values: np.ndarray, k: int) -> list[str]:
    counts = collections.Counter(values.tolist())
    return [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
