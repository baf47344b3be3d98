"""Performance before the labels arrive: confidence-based estimation (CBPE) for classifiers.

Labels arrive late; the model's predicted probabilities arrive with every prediction. If the
probabilities are calibrated (a row scored 0.8 is positive 80 % of the time), the confusion
matrix of a window can be *expected* without a single label: a row predicted positive with
calibrated probability c adds c to the true positives and 1 − c to the false positives. This is
NannyML's CBPE; the steps:

1. **Calibration, at baseline build**: on the labelled reference, an isotonic regression per class
   of the label on the model's probability (scikit-learn's ``IsotonicRegression``: monotone, so
   the model's ranking is kept). The baseline keeps each map as its breakpoints; a check applies
   it with ``np.interp`` (no scikit-learn at check time).
2. **The estimate, per window**: calibrated probabilities ``c``; the model's predicted class as it
   decides it (binary: score ≥ ``threshold``; multiclass: the most probable class); expected
   counts TP = Σ c over predicted positives, FP = Σ (1 − c) over them, FN = Σ c over predicted
   negatives; accuracy, precision, recall and F1 from them, and ROC AUC as the AUC of the scores
   with each row counted c as a positive and 1 − c as a negative (one-vs-rest macro for
   multiclass). Multiclass precision, recall and F1
   are macro averages over the classes the window's labels or predictions hold (scikit-learn's,
   as the realized metrics are computed); which classes those are depends on the labels, so each
   class is weighted by the chance that it is seen: 1 when predicted, else 1 − Π(1 − c).
3. **The band**: if the calibration holds, each label is a draw from its calibrated
   probability, so the window's *realized* metric is a random variable: :data:`DRAWS` sets of
   labels are drawn and the band is the central :data:`BAND` of the realized metrics they give.
   It says how far the realized value may be from the estimate by chance alone; it does not cover
   a calibration that stopped holding (concept drift: p(y | x) changed), which no label-free
   method can see.
4. **The standard error** a verdict needs: a window's estimate also moves with the rows it
   happens to hold (a small window may hold fewer easy rows than the reference by chance). The
   standard error combines the label draws' spread and a bootstrap over the window's rows; a
   drop is judged against it (:mod:`~mlmon_middleware.estimated`).

>>> rng = np.random.default_rng(0)
>>> scores = rng.random(4000)
>>> labels = (rng.random(4000) < scores).astype(int)  # calibrated by construction
>>> model = fit(labels, scores[:, None], classes=["0", "1"], positive="1")
>>> found = model.estimate(rng.random((1000, 1)))
>>> round(found["accuracy"]["value"], 2), found["accuracy"]["low"] < found["accuracy"]["value"] < found["accuracy"]["high"]
(0.75, True)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from mlmon_middleware.columns import positions
from mlmon_middleware.metrics import as_label, average_ranks, classification_metrics, infer_task, standard_errors

logger = logging.getLogger("mlmon_middleware")

DRAWS = 200  # label draws for the band
ROW_RESAMPLES = 50  # bootstrap resamples of the window's rows for the standard error
MAX_RESAMPLED = 2000
MAX_DRAWN = 2000  # window rows the label draws run on (a larger window's spread is scaled from theirs)
BAND = 0.95  # its central share
CHUNK = 2_000_000  # label draws × rows drawn at a time (memory: 16 MB)
MAX_CLASSES = 50  # more classes: no estimate
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


class Estimate(TypedDict, total=False):
    """One estimated metric of a window: the estimate, its band, and the standard error of the
    realized value of a window drawn like this one (the labels' chance and the rows' own)."""

    value: float | None
    low: float | None
    high: float | None
    standard_error: float


@dataclasses.dataclass(frozen=True)
class Calibration:
    """An isotonic map from a probability to a calibrated one, as its breakpoints."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, p: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.interp(p, self.x, self.y)
        return out


@dataclasses.dataclass(frozen=True)
class CBPE:
    """A fitted estimator: the ``task`` (``binary`` or ``multiclass``), the ``outputs`` it reads
    (binary: the positive class's score; multiclass: one probability per class, named as the
    classes), the ``classes`` (binary: negative then positive), the binary ``threshold``, a
    calibration per output, and the realized metrics on the reference (``reference``)."""

    task: str
    outputs: tuple[str, ...]
    classes: tuple[str, ...]
    threshold: float
    maps: tuple[Calibration, ...]
    reference: Mapping[str, float]

    def calibrated(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: binary, the positive class's (n,); multiclass, (n, k) rows
        summing to 1 (a row whose calibrated values are all 0 keeps the model's own)."""
        proba = np.asarray(proba, dtype=float).reshape(len(proba), len(self.outputs))
        if self.task == "binary":
            return self.maps[0](proba[:, 0])
        calibrated = np.column_stack([m(proba[:, k]) for k, m in enumerate(self.maps)])
        total = calibrated.sum(axis=1, keepdims=True)
        return np.where(total > 0, calibrated / np.where(total > 0, total, 1), proba)

    def estimate(self, proba: np.ndarray, seed: int = 0) -> dict[str, Estimate]:
        """Each metric of :data:`METRICS` estimated for rows with the model's probabilities
        ``proba`` (n × len(outputs)), with its band; None where undefined (no rows)."""
        proba = np.asarray(proba, dtype=float).reshape(len(proba), len(self.outputs))
        if not len(proba):
            return {m: {"value": None, "low": None, "high": None} for m in METRICS}
        c = self.calibrated(proba)
        n = len(c)
        # the label draws run on at most MAX_DRAWN rows; their spread is scaled to the window's
        drawn = positions(n, MAX_DRAWN, np.random.default_rng(seed + 2))
        scale = np.sqrt(len(drawn) / n)
        if self.task == "binary":
            predicted = proba[:, 0] >= self.threshold
            expected = functools.partial(_on_rows, _binary_expected, c, predicted, proba[:, 0])
            draws = _binary_draws(c[drawn], predicted[drawn], proba[drawn, 0], seed)
        else:
            predicted = proba.argmax(axis=1)
            expected = functools.partial(_on_rows, _multiclass_expected, c, predicted, proba)
            draws = _multiclass_draws(c[drawn], predicted[drawn], proba[drawn], seed)
        values = expected(np.arange(len(c)))
        rows_error = standard_errors(expected, n, reps=ROW_RESAMPLES, max_rows=MAX_RESAMPLED, seed=seed + 1)
        tail = (1 - BAND) / 2
        out: dict[str, Estimate] = {}
        for metric in METRICS:
            realized = draws[metric][np.isfinite(draws[metric])]
            found = values[metric]
            value = None if found is None or not np.isfinite(found) else float(found)
            low: float | None = None
            high: float | None = None
            if len(realized) and value is not None:
                quantiles = np.quantile(realized, [tail, 1 - tail])
                if scale < 1:  # the subsample's spread, shrunk to the window's and centred on its estimate
                    quantiles = np.clip(value + (quantiles - realized.mean()) * scale, 0.0, 1.0)
                low, high = float(quantiles[0]), float(quantiles[1])
            out[metric] = {"value": value, "low": low, "high": high}
            if len(realized) > 1:
                out[metric]["standard_error"] = float(np.hypot(np.std(realized, ddof=1) * scale, rows_error.get(metric, 0.0)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """As the baseline file keeps it."""
        return {"method": "cbpe", "task": self.task, "outputs": list(self.outputs), "classes": list(self.classes),
                "threshold": self.threshold, "calibration": [{"x": m.x, "y": m.y} for m in self.maps],
                "reference": dict(self.reference)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CBPE:
        maps = tuple(Calibration(np.asarray(m["x"], dtype=float), np.asarray(m["y"], dtype=float))
                     for m in data["calibration"])
        return cls(data["task"], tuple(data["outputs"]), tuple(data["classes"]), float(data["threshold"]), maps,
                   dict(data.get("reference") or {}))


def fit(labels: Sequence[Any], proba: np.ndarray, *, classes: Sequence[str], positive: str | None = None,
        outputs: Sequence[str] | None = None, threshold: float = 0.5) -> CBPE:
    """Calibrate on a labelled reference: ``labels`` (as text, see
    :func:`~mlmon_middleware.metrics.as_label`), the model's ``proba`` (n × 1: the ``positive``
    class's score, binary; n × k: one column per class of ``classes``, multiclass). ``outputs``
    names the columns as the service's outputs (default: ``prediction``, or the classes).
    Needs scikit-learn (``pip install 'mlmon-middleware[sklearn]'``)."""
    from sklearn.isotonic import IsotonicRegression

    y = np.array([as_label(v) for v in labels], dtype=object)
    proba = np.asarray(proba, dtype=float).reshape(len(y), -1)
    binary = proba.shape[1] == 1
    if binary and (positive is None or len(classes) != 2):
        raise ValueError("a binary estimate needs the two classes and the positive one")
    if not binary and (proba.shape[1] != len(classes) or len(classes) > MAX_CLASSES):
        raise ValueError(f"{proba.shape[1]} probability columns for {len(classes)} classes (at most {MAX_CLASSES})")
    targets = [y == positive] if binary else [y == c for c in classes]
    maps = []
    for k, target in enumerate(targets):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(proba[:, k], target.astype(float))
        maps.append(Calibration(np.asarray(iso.X_thresholds_, dtype=float), np.asarray(iso.y_thresholds_, dtype=float)))
    ordered: tuple[str, ...]
    if binary:
        negative = next(c for c in classes if c != positive)
        ordered = (str(negative), str(positive))
        predicted = np.where(proba[:, 0] >= threshold, ordered[1], ordered[0]).astype(object)
        reference = classification_metrics(y, predicted, scores=proba[:, 0], positive=ordered[1])
    else:
        ordered = tuple(str(c) for c in classes)
        predicted = np.array(ordered, dtype=object)[proba.argmax(axis=1)]
        reference = classification_metrics(y, predicted, proba=proba, classes=list(ordered))
    names = tuple(outputs) if outputs is not None else (("prediction",) if binary else ordered)
    return CBPE("binary" if binary else "multiclass", names, ordered, float(threshold), tuple(maps),
                {m: float(v) for m, v in reference.items() if m in METRICS and v is not None})


def estimator_for(task: str | None, labels: Sequence[Any], predictions: Sequence[Any], outputs: Sequence[str], *,
                  positive: Any = 1, threshold: float = 0.5) -> CBPE | None:
    """The estimator a labelled reference allows (:meth:`Baseline.from_data
    <mlmon_middleware.Baseline.from_data>` calls it): predictions as rows of the ``outputs``
    (one score per row, binary; one probability per class, named as the classes, multiclass).
    None for a regressor, for predictions that are labels rather than probabilities, for outputs
    that do not name the classes, and without scikit-learn (a warning says so)."""
    task = task or infer_task(list(labels))
    rows = [p if isinstance(p, (list, tuple)) else [p] for p in predictions]
    if task == "regression" or not rows or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for row in rows for v in row):
        return None
    proba = np.array(rows, dtype=float)
    if not (np.isfinite(proba).all() and proba.min() >= 0 and proba.max() <= 1) or np.all(proba == np.round(proba)):
        return None  # not probabilities, or labels (0 and 1 only): no scores to calibrate
    seen = sorted({as_label(v) for v in labels})
    try:
        if task == "binary":
            positive = as_label(positive)
            classes = sorted(set(seen) | {positive})
            if proba.shape[1] != 1 or len(classes) != 2:
                return None
            return fit(labels, proba, classes=classes, positive=positive, outputs=outputs, threshold=threshold)
        if proba.shape[1] != len(outputs) or not set(seen) <= set(outputs) or len(outputs) > MAX_CLASSES:
            return None
        return fit(labels, proba, classes=list(outputs))
    except ImportError:
        logger.warning("mlmon: no label-free performance estimator in this baseline: scikit-learn is not installed "
                       "(pip install 'mlmon-middleware[sklearn]')")
        return None


# ------------------------------------------------------------------------------ expected values
def weighted_auc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of ``scores`` with each row counted ``positive`` times as a positive and
    ``negative`` times as a negative (ties count one half), as scikit-learn's ``roc_auc_score``
    with those sample weights."""
    order = np.argsort(scores, kind="mergesort")
    s, pos, neg = scores[order], positive[order], negative[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_group, neg_group = np.add.reduceat(pos, starts), np.add.reduceat(neg, starts)
    below = np.cumsum(neg_group) - neg_group  # negative weight strictly below each group of ties
    total = pos.sum() * neg.sum()
    return float(np.sum(pos_group * (below + neg_group / 2)) / total) if total > 0 else np.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _binary_expected(c: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    tp, fp = c[predicted].sum(), (1 - c[predicted]).sum()
    fn, tn = c[~predicted].sum(), (1 - c[~predicted]).sum()
    return {"accuracy": (tp + tn) / len(c), "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "roc_auc": weighted_auc(scores, c, 1 - c)}


def _multiclass_expected(c: np.ndarray, predicted: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    n, k = c.shape
    chosen = np.eye(k, dtype=bool)[predicted]  # (n, k): the predicted class of each row
    tp, predicted_count, actual = (c * chosen).sum(axis=0), chosen.sum(axis=0), c.sum(axis=0)
    precision = np.where(predicted_count > 0, tp / np.maximum(predicted_count, 1), 0.0)
    recall = np.where(actual > 0, tp / np.where(actual > 0, actual, 1), 0.0)
    f1 = np.where(predicted_count + actual > 0, 2 * tp / np.maximum(predicted_count + actual, 1e-300), 0.0)
    aucs = [weighted_auc(proba[:, j], c[:, j], 1 - c[:, j]) for j in range(k)]
    # the macro averages count a class when the labels or the predictions hold it (scikit-learn's):
    # weight each class by the chance that it is seen, 1 if predicted, else 1 − Π(1 − c)
    seen = np.where(predicted_count > 0, 1.0, -np.expm1(np.log1p(-np.clip(c, 0.0, 1 - 1e-12)).sum(axis=0)))
    weight = seen / seen.sum()
    return {"accuracy": float(tp.sum() / n), "precision": float(precision @ weight), "recall": float(recall @ weight),
            "f1": float(f1 @ weight), "roc_auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else np.nan}


# ------------------------------------------------------------------------------ the band
def _on_rows(metrics: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, float]], c: np.ndarray,
             predicted: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """``metrics`` of the window's ``rows`` (indices, repeats allowed)."""
    return metrics(c[rows], predicted[rows], scores[rows])


def _draw_chunks(n: int) -> list[int]:
    per = max(1, CHUNK // max(n, 1))
    return [min(per, DRAWS - start) for start in range(0, DRAWS, per)]


def _binary_draws(c: np.ndarray, predicted: np.ndarray, scores: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The realized metrics of :data:`DRAWS` label sets drawn from ``c``."""
    rng = np.random.default_rng(seed)
    ranks, n = average_ranks(scores), len(c)
    out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for draws in _draw_chunks(n):
        y = rng.random((draws, n)) < c
        positives = y.sum(axis=1).astype(float)
        tp = y[:, predicted].sum(axis=1).astype(float)
        fp = predicted.sum() - tp
        fn = positives - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            out["accuracy"].append((n - fp - fn) / n)
            out["precision"].append(np.where(tp + fp > 0, tp / (tp + fp), 0.0))
            out["recall"].append(np.where(positives > 0, tp / positives, 0.0))
            out["f1"].append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
            u = y.astype(float) @ ranks - positives * (positives + 1) / 2
            out["roc_auc"].append(np.where((positives > 0) & (positives < n), u / (positives * (n - positives)), np.nan))
    return {m: np.concatenate(v) for m, v in out.items()}


def _multiclass_draws(c: np.ndarray, predicted: np.ndarray, proba: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, k = c.shape
    cumulative = np.cumsum(c, axis=1)
    cumulative[:, -1] = 1.0
    ranks = [average_ranks(proba[:, j]) for j in range(k)]
    predicted_count = np.bincount(predicted, minlength=k).astype(float)
    out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for draws in _draw_chunks(n * k):
        u = rng.random((draws, n, 1))
        y = (u > cumulative[None, :, :]).sum(axis=2)  # (draws, n): the drawn class of each row
        out["accuracy"].append((y == predicted).mean(axis=1))
        precision, recall, f1, auc = (np.zeros((draws, k)) for _ in range(4))
        for j in range(k):
            actual = y == j
            positives = actual.sum(axis=1).astype(float)
            tp = actual[:, predicted == j].sum(axis=1).astype(float)
            seen = (positives > 0) | (predicted_count[j] > 0)  # averaged over, as scikit-learn's macro does
            with np.errstate(divide="ignore", invalid="ignore"):
                precision[:, j] = np.where(seen, tp / predicted_count[j] if predicted_count[j] else 0.0, np.nan)
                recall[:, j] = np.where(seen, np.where(positives > 0, tp / positives, 0.0), np.nan)
                f1[:, j] = np.where(seen, 2 * tp / np.maximum(predicted_count[j] + positives, 1), np.nan)
                rank_sum = actual.astype(float) @ ranks[j] - positives * (positives + 1) / 2
                auc[:, j] = np.where((positives > 0) & (positives < n), rank_sum / (positives * (n - positives)), np.nan)
        out["precision"].append(_nanmean_rows(precision))
        out["recall"].append(_nanmean_rows(recall))
        out["f1"].append(_nanmean_rows(f1))
        out["roc_auc"].append(_nanmean_rows(auc))
    return {m: np.concatenate(v) for m, v in out.items()}


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """The mean of each row over its finite values (NaN for a row with none)."""
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
