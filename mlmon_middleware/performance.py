"""Model performance once labels arrive: metrics over sliding windows, per segment, fairness.

Metrics are computed with numpy and agree with scikit-learn's to 1e-9 (tests check it):

* classification: accuracy; precision, recall and F1 of the positive class (binary) or their
  macro averages over the classes seen (multiclass), 0 where undefined as scikit-learn's default;
  ROC AUC from scores (binary) or one-vs-rest macro over class probabilities (multiclass), via
  the Mann–Whitney rank statistic; log loss with probabilities clipped to [eps, 1 − eps].
* regression: MAE, RMSE, MAPE (|y − ŷ| / max(|y|, eps)), R².

A :class:`PerformanceTracker` reads labelled predictions from the prediction log for each window
(the last N labelled predictions, and those made in the last T seconds), computes the metrics
overall, per segment value (the ``max_segments`` largest by volume, the rest pooled as
``__other__``) and, for a protected attribute, the fairness measures; it compares them with the
baseline's performance (from the baseline file, or else the first full count window) to raise
degradation conditions for the alert policy; and it feeds the error stream of newly labelled
predictions to the concept-drift detectors (:mod:`mlmon_middleware.drift.sequential`). The
report's ``history`` holds each window's overall metrics at the last ``HISTORY_CHECKS`` checks:
performance over time, as the dashboard draws it.

>>> import numpy as np
>>> m = classification_metrics(np.array(["1", "0", "1", "1"]), np.array(["1", "0", "0", "1"]),
...                            scores=np.array([0.9, 0.2, 0.4, 0.8]), positive="1")
>>> m["accuracy"], round(m["f1"], 4), m["roc_auc"]
(0.75, 0.8, 1.0)
>>> regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0]))["mae"]
0.5
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlmon_middleware.drift.policy import RANK
from mlmon_middleware.drift.sequential import ErrorStreamDetectors, river_available

if TYPE_CHECKING:
    from mlmon_middleware.monitor import ModelMonitor

EPS = float(np.finfo(np.float64).eps)
HIGHER_IS_BETTER = {"accuracy", "precision", "recall", "f1", "roc_auc", "r2"}
OTHER = "__other__"
HISTORY_CHECKS = 500  # checks whose overall metrics the report's ``history`` keeps


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    ranks = np.empty(len(values))
    boundaries = np.flatnonzero(np.diff(ordered)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of boolean ``positive`` against ``scores`` (None with one class)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _ranks(scores.astype(float))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _prf(y_true: np.ndarray, y_pred: np.ndarray, label: Any) -> tuple[float, float, float]:
    tp = float(np.sum((y_pred == label) & (y_true == label)))
    predicted = float(np.sum(y_pred == label))
    actual = float(np.sum(y_true == label))
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * tp / (predicted + actual) if predicted + actual else 0.0
    return precision, recall, f1


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, scores: np.ndarray | None = None,
                           proba: np.ndarray | None = None, classes: Sequence[Any] | None = None,
                           positive: Any = None) -> dict[str, float | None]:
    """Accuracy, precision, recall, F1, ROC AUC and log loss (see the module docstring).

    Binary when ``positive`` is given (``scores``: the positive class's probability); otherwise
    multiclass with macro averages (``proba``: one column per class of ``classes``)."""
    out: dict[str, float | None] = {"count": float(len(y_true)), "accuracy": float(np.mean(y_true == y_pred))}
    if positive is not None:
        out["precision"], out["recall"], out["f1"] = _prf(y_true, y_pred, positive)
        if scores is not None:
            is_pos = y_true == positive
            out["roc_auc"] = roc_auc(is_pos, scores)
            p = np.clip(scores.astype(float), EPS, 1 - EPS)
            out["log_loss"] = float(-np.mean(np.where(is_pos, np.log(p), np.log(1 - p))))
        return out
    labels = np.unique(np.concatenate([y_true, y_pred]))
    prf = np.array([_prf(y_true, y_pred, label) for label in labels])
    out["precision"], out["recall"], out["f1"] = (float(v) for v in prf.mean(axis=0))
    if proba is not None and classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        if all(label in index for label in np.unique(y_true)):
            columns = np.array([index[label] for label in y_true])
            clipped = np.clip(proba, EPS, 1 - EPS)
            out["log_loss"] = float(-np.mean(np.log(clipped[np.arange(len(y_true)), columns])))
            if set(np.unique(y_true)) == set(classes):
                aucs = [roc_auc(y_true == c, proba[:, i]) for i, c in enumerate(classes)]
                out["roc_auc"] = float(np.mean(aucs))
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, MAPE and R² (as scikit-learn computes them)."""
    error = y_true - y_pred
    ss_res = float(np.sum(error ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1 - ss_res / ss_tot if ss_tot else (1.0 if ss_res == 0 else 0.0)
    return {"count": float(len(y_true)), "mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2))),
            "mape": float(np.mean(np.abs(error) / np.maximum(np.abs(y_true), EPS))), "r2": r2}


class PerformanceTracker:
    """Performance of one model from its prediction log; see the module docstring.

    Parameters:
        task: ``"binary"``, ``"multiclass"`` or ``"regression"``; inferred from the labels when None
            (numbers that are not all integers: regression; two classes: binary; else multiclass).
        positive: the positive class of a binary task (default 1, or "1" for text labels).
        threshold: a binary score at or above it predicts the positive class.
        count_window, time_window: the last N labelled predictions; those made in the last T seconds.
        max_segments: segment values exported per segment feature; the rest are ``__other__``.
        protected: the segment feature to compute fairness for.
        degradation: relative drops (warning, critical) against the reference performance.
        reference: the reference metrics (else the baseline's, else the first full count window).
    """

    def __init__(self, model: ModelMonitor, *, task: str | None = None, positive: Any = 1, threshold: float = 0.5,
                 count_window: int = 1000, time_window: float = 86400.0, max_segments: int = 20,
                 protected: str | None = None, degradation: tuple[float, float] = (0.05, 0.10),
                 reference: Mapping[str, float] | None = None) -> None:
        from mlmon_middleware.config import ConfigError

        if task not in (None, "binary", "multiclass", "regression"):
            raise ConfigError(f"task must be 'binary', 'multiclass', 'regression' or None, got {task!r}")
        if protected is not None and protected not in model.segments:
            raise ConfigError(f"protected={protected!r} must be one of the model's segments {list(model.segments)}")
        self.model = model
        self.task = task
        self.positive = positive
        self.threshold = threshold
        self.windows = {f"last_{count_window}": ("count", count_window), f"{int(time_window)}s": ("time", time_window)}
        self.max_segments = max_segments
        self.protected = protected
        self.degradation = degradation
        baseline_perf = (model.baseline.payload.get("performance") if model.baseline is not None else None) or None
        self.reference: dict[str, float] | None = dict(reference or baseline_perf or {}) or None
        self.reference_source = "given" if reference else "baseline" if baseline_perf else None
        self.report: dict[str, Any] | None = None
        # per check: the overall metrics of each window, for "performance over time"
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_CHECKS)
        self.detectors: ErrorStreamDetectors | None = None
        self._labels_seen_until = 0.0
        self._fired: dict[str, list[int]] = {}

    def observations(self, attrs: Mapping[str, Any]) -> list[tuple[float, dict[str, Any]]]:
        """``mlmon.performance`` values of the last report: per window, metric and segment
        (``__all__`` overall; fairness measures under the protected attribute's name)."""
        out: list[tuple[float, dict[str, Any]]] = []
        for window, result in ((self.report or {}).get("windows") or {}).items():
            for metric, value in (result.get("overall") or {}).items():
                if value is not None and metric != "count":
                    out.append((value, {**attrs, "metric": metric, "window": window, "segment": "__all__"}))
            for feature, values in result.get("segments", {}).items():
                for segment, metrics in values.items():
                    out += [(v, {**attrs, "metric": m, "window": window, "segment": f"{feature}={segment}"})
                            for m, v in metrics.items() if v is not None and m != "count"]
            fairness = result.get("fairness")
            if fairness:
                out += [(fairness[m], {**attrs, "metric": m, "window": window, "segment": fairness["attribute"]})
                        for m in ("demographic_parity_ratio", "tpr_gap", "fpr_gap") if fairness[m] is not None]
        return out

    def compute(self) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
        """The performance report and the alert conditions it raises."""
        store = self.model.monitor.store_writer
        report: dict[str, Any] = {"checked_at": time.time(), "windows": {}}
        conditions: dict[tuple[str, str], str] = {}
        if store is None:
            report["status"] = "no prediction log (store_dir)"
            self.report = report
            return report, conditions
        store.flush()
        for window, (kind, size) in self.windows.items():
            rows = (store.store.labelled(self.model.name, since=0.0, limit=int(size)) if kind == "count"
                    else store.store.labelled(self.model.name, since=time.time() - size))
            report["windows"][window] = self._window(rows)
            if kind == "count" and self.reference is None and len(rows) >= size and report["windows"][window]["overall"]:
                self.reference = {k: v for k, v in report["windows"][window]["overall"].items()
                                  if k != "count" and v is not None}
                self.reference_source = "first full window"
        report["reference"] = {"source": self.reference_source, "metrics": self.reference}
        if self.reference:
            for window, result in report["windows"].items():
                result["degradation"] = self._degradation(result.get("overall") or {})
                for metric, change in result["degradation"].items():
                    severity = change["severity"]
                    if severity != "none":
                        key = ("PerformanceDegradation", f"{metric}@{window}")
                        conditions[key] = max(severity, conditions.get(key, "none"), key=RANK.__getitem__)
        for window, result in report["windows"].items():
            fairness = result.get("fairness")
            if fairness and fairness.get("four_fifths_violated"):
                conditions[("DisparateImpact", f"{self.protected}@{window}")] = "warning"
        report["concept_drift"] = self._concept_drift(store.store, conditions)
        report["status"] = "ok"
        self.history.append({"checked_at": report["checked_at"],
                             "windows": {w: {"rows": r["rows"], "overall": r["overall"]} for w, r in report["windows"].items()}})
        report["history"] = list(self.history)
        self.report = report
        return report, conditions

    def _concept_drift(self, store: Any, conditions: dict[tuple[str, str], str]) -> dict[str, Any]:
        """Feed the errors of the predictions labelled since the last check to the detectors."""
        if not river_available():
            return {"status": "install mlmon-middleware[concept] (river) for Page-Hinkley, DDM and ADWIN"}
        rows = store.newly_labelled(self.model.name, self._labels_seen_until)
        if rows:
            self._labels_seen_until = max(r[3] for r in rows)
            predictions = [orjson.loads(r[0]) for r in rows]
            labels = [r[1] for r in rows]
            task = self.task or _infer_task(labels)
            if self.detectors is None:
                self.detectors = ErrorStreamDetectors(binary=task != "regression")
            fired = self.detectors.update(self._errors(task, predictions, labels))
            for name in fired:
                conditions[("ConceptDrift", name)] = "warning"
            self._fired = fired
        else:
            self._fired = {}
        if self.detectors is None:
            return {"status": "no labels yet"}
        return {"status": "ok", **self.detectors.summary(), "fired_this_check": self._fired}

    def _errors(self, task: str, predictions: list, labels: list) -> list[float]:
        if task == "regression":
            y_pred = np.array([_first_number(p) for p in predictions], dtype=float)
            return np.abs(np.array(labels, dtype=float) - y_pred).tolist()
        y_true = np.array([_label(v) for v in labels], dtype=object)
        if task == "binary":
            _, y_pred = self._binary(predictions, _label(self.positive), y_true)
        else:
            y_pred = _multiclass(predictions)[2]
        return (y_pred != y_true).astype(int).tolist()

    def _degradation(self, current: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
        out = {}
        warning, critical = self.degradation
        for metric, ref in (self.reference or {}).items():
            value = current.get(metric)
            if value is None or not ref:
                continue
            change = (value - ref) / abs(ref)
            drop = -change if metric in HIGHER_IS_BETTER else change  # errors degrade by growing
            severity = "critical" if drop >= critical else "warning" if drop >= warning else "none"
            out[metric] = {"reference": ref, "current": value, "relative_change": change, "severity": severity}
        return out

    def _window(self, rows: list[tuple]) -> dict[str, Any]:
        result: dict[str, Any] = {"rows": len(rows), "overall": None, "segments": {}}
        if not rows:
            return result
        predictions = [orjson.loads(r[1]) for r in rows]
        labels = [r[3] for r in rows]
        task = self.task or _infer_task(labels)
        result["task"] = task
        result["overall"] = self._metrics(task, predictions, labels)
        segment_values = [orjson.loads(r[2]) for r in rows]
        for feature in self.model.segments:
            values = np.array([str(s.get(feature)) for s in segment_values], dtype=object)
            kept = _top_values(values, self.max_segments)
            capped = np.where(np.isin(values, kept), values, OTHER)
            result["segments"][feature] = {
                value: self._metrics(task, [predictions[i] for i in idx], [labels[i] for i in idx])
                for value in (*kept, OTHER) if len(idx := np.flatnonzero(capped == value))}
            if feature == self.protected and task == "binary":
                result["fairness"] = self._fairness(predictions, labels, capped)
        return result

    def _metrics(self, task: str, predictions: list, labels: list) -> dict[str, float | None]:
        return compute_metrics(task, predictions, labels, positive=self.positive, threshold=self.threshold)

    def _binary(self, predictions: list, positive: str, y_true: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        return _binary(predictions, positive, y_true, self.threshold)

    def _fairness(self, predictions: list, labels: list, groups: np.ndarray) -> dict[str, Any]:
        positive = _label(self.positive)
        y_true = np.array([_label(v) for v in labels], dtype=object)
        _, y_pred = self._binary(predictions, positive, y_true)
        per_group = {}
        for group in np.unique(groups):
            mask = groups == group
            pred_pos, true_pos = y_pred[mask] == positive, y_true[mask] == positive
            per_group[str(group)] = {
                "count": int(mask.sum()), "positive_rate": float(pred_pos.mean()),
                "tpr": float(pred_pos[true_pos].mean()) if true_pos.any() else None,
                "fpr": float(pred_pos[~true_pos].mean()) if (~true_pos).any() else None}
        rates = [g["positive_rate"] for g in per_group.values()]
        ratio = min(rates) / max(rates) if max(rates) > 0 else 1.0
        tprs = [g["tpr"] for g in per_group.values() if g["tpr"] is not None]
        fprs = [g["fpr"] for g in per_group.values() if g["fpr"] is not None]
        return {"attribute": self.protected, "groups": per_group, "demographic_parity_ratio": ratio,
                "tpr_gap": max(tprs) - min(tprs) if tprs else None, "fpr_gap": max(fprs) - min(fprs) if fprs else None,
                "four_fifths_violated": ratio < 0.8}


def compute_metrics(task: str | None, predictions: Sequence[Any], labels: Sequence[Any], *, positive: Any = 1,
                    threshold: float = 0.5) -> dict[str, float | None]:
    """The metrics of ``task`` (inferred from the labels when None) for predictions as the
    prediction log keeps them (a dict of outputs, or a bare value) against their labels."""
    predictions, labels = list(predictions), list(labels)
    task = task or _infer_task(labels)
    if task == "regression":
        y_pred = np.array([_first_number(p) for p in predictions], dtype=float)
        return regression_metrics(np.array(labels, dtype=float), y_pred)
    y_true = np.array([_label(v) for v in labels], dtype=object)
    if task == "binary":
        scores, y_pred = _binary(predictions, _label(positive), y_true, threshold)
        return classification_metrics(y_true, y_pred, scores=scores, positive=_label(positive))
    classes, proba, y_pred = _multiclass(predictions)
    return classification_metrics(y_true, y_pred, proba=proba, classes=classes)


def _binary(predictions: list, positive: str, y_true: np.ndarray, threshold: float) -> tuple[np.ndarray | None, np.ndarray]:
    values = [_first_value(p) for p in predictions]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        scores = np.array(values, dtype=float)
        negative = next((v for v in np.unique(y_true) if v != positive), "0")
        return scores, np.where(scores >= threshold, positive, negative).astype(object)
    return None, np.array([_label(v) for v in values], dtype=object)


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _first_value(prediction: Any) -> Any:
    if isinstance(prediction, Mapping):
        return next(iter(prediction.values()), None)
    return prediction


def _first_number(prediction: Any) -> float:
    value = _first_value(prediction)
    return float(value) if isinstance(value, (int, float)) else np.nan


def _multiclass(predictions: list) -> tuple[list[str] | None, np.ndarray | None, np.ndarray]:
    first = predictions[0] if predictions else {}
    if isinstance(first, Mapping) and len(first) > 1:
        classes = [str(c) for c in first]
        proba = np.array([[float(p.get(c, 0.0)) for c in first] for p in predictions])
        return classes, proba, np.array(classes, dtype=object)[proba.argmax(axis=1)]
    return None, None, np.array([_label(_first_value(p)) for p in predictions], dtype=object)


def _infer_task(labels: list) -> str:
    numbers = [v for v in labels if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) == len(labels) and not all(float(v).is_integer() for v in numbers):
        return "regression"
    return "binary" if len({_label(v) for v in labels}) <= 2 else "multiclass"


def _top_values(values: np.ndarray, k: int) -> list[str]:
    counts = collections.Counter(values.tolist())
    return [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
