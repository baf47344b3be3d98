"""Model performance metrics with numpy, as scikit-learn computes them (tests agree to 1e-9).

* classification: accuracy; precision, recall and F1 of the positive class (binary) or their
  macro averages over the classes seen (multiclass), 0 where undefined as scikit-learn's default;
  ROC AUC from scores (binary) or one-vs-rest macro over class probabilities (multiclass), via
  the Mann–Whitney rank statistic; log loss with probabilities clipped to [eps, 1 − eps].
* regression: MAE, RMSE, MAPE (|y − ŷ| / max(|y|, eps)), R².

:func:`compute_metrics` reads predictions as the prediction log keeps them (a dict of outputs or
a bare value) and infers the task from the labels when it is not given.

>>> import numpy as np
>>> m = classification_metrics(np.array(["1", "0", "1", "1"]), np.array(["1", "0", "0", "1"]),
...                            scores=np.array([0.9, 0.2, 0.4, 0.8]), positive="1")
>>> m["accuracy"], round(m["f1"], 4), m["roc_auc"]
(0.75, 0.8, 1.0)
>>> regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0]))["mae"]
0.5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

EPS = float(np.finfo(np.float64).eps)
HIGHER_IS_BETTER = {"accuracy", "precision", "recall", "f1", "roc_auc", "r2"}


def average_ranks(values: np.ndarray) -> np.ndarray:
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
    ranks = average_ranks(scores.astype(float))
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
                out["roc_auc"] = float(np.mean([a for a in aucs if a is not None]))
    return out


def regression_pairs(predictions: Sequence[Any], labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels of a regression as numbers: NaN where one is not a number (a label
    posted as other text, or as a list or an object; a prediction without one), for the caller to
    leave out.

    >>> regression_pairs([1.5, {"price": 2.0}, "x"], [1.0, "oops", "3"])
    (array([1.5, 2. , nan]), array([ 1., nan,  3.]))
    """
    return (np.array([first_number(p) for p in predictions], dtype=float),
            np.array([number_or_nan(v) for v in labels], dtype=float))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    """MAE, RMSE, MAPE and R² (as scikit-learn computes them); None for each without rows."""
    if not len(y_true):
        return {"count": 0.0, "mae": None, "rmse": None, "mape": None, "r2": None}
    error = y_true - y_pred
    ss_res = float(np.sum(error ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1 - ss_res / ss_tot if ss_tot else (1.0 if ss_res == 0 else 0.0)
    return {"count": float(len(y_true)), "mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2))),
            "mape": float(np.mean(np.abs(error) / np.maximum(np.abs(y_true), EPS))), "r2": r2}


def compute_metrics(task: str | None, predictions: Sequence[Any], labels: Sequence[Any], *, positive: Any = 1,
                    threshold: float = 0.5) -> dict[str, float | None]:
    """The metrics of ``task`` (inferred from the labels when None) for predictions as the
    prediction log keeps them (a dict of outputs, or a bare value) against their labels."""
    return evaluator(task, predictions, labels, positive=positive, threshold=threshold)(None)


Evaluate = Callable[[np.ndarray | None], dict[str, float | None]]


def evaluator(task: str | None, predictions: Sequence[Any], labels: Sequence[Any], *, positive: Any = 1,
              threshold: float = 0.5) -> Evaluate:
    """A function of row indices (None: all rows) giving the metrics of those rows: the
    predictions are decoded once, so resampling them (:func:`standard_errors`) is cheap."""
    predictions, labels = list(predictions), list(labels)
    task = task or infer_task(labels)
    if task == "regression":  # a label or prediction that is no finite number is left out (count says how many stay)
        y_pred, y_true = regression_pairs(predictions, labels)
        usable = np.isfinite(y_true) & np.isfinite(y_pred)
        every = np.flatnonzero(usable)
        return lambda i: regression_metrics(y_true[every if i is None else i[usable[i]]],
                                            y_pred[every if i is None else i[usable[i]]])
    labels_true = np.array([as_label(v) for v in labels], dtype=object)
    if task == "binary":
        label = as_label(positive)
        scores, y_pred = binary_predictions(predictions, label, labels_true, threshold)
        return lambda i: classification_metrics(labels_true if i is None else labels_true[i],
                                                y_pred if i is None else y_pred[i],
                                                scores=None if scores is None else scores if i is None else scores[i],
                                                positive=label)
    classes, proba, predicted = multiclass_predictions(predictions)
    return lambda i: classification_metrics(labels_true if i is None else labels_true[i],
                                            predicted if i is None else predicted[i],
                                            proba=None if proba is None else (proba if i is None else proba[i]),
                                            classes=classes)


def standard_errors(evaluate: Callable[[np.ndarray], Mapping[str, float | None]], rows: int, *, reps: int = 100,
                    max_rows: int = 2000, seed: int = 0) -> dict[str, float]:
    """Bootstrap standard errors of the metrics of ``rows`` rows (an undefined metric, None or
    NaN, is left out of its resample): ``reps`` resamples of at most
    ``max_rows`` of them, scaled by ``sqrt(m / rows)`` when ``m < rows`` rows were resampled (a
    metric's error shrinks as one over the square root of the rows; this keeps the cost of a
    check bounded however large the window).

    >>> rng = np.random.default_rng(0)
    >>> y = (rng.random(1000) < 0.8).astype(int)
    >>> se = standard_errors(evaluator("binary", y.tolist(), y.tolist()), 1000)["accuracy"]
    >>> se
    0.0
    >>> wrong = np.where(rng.random(1000) < 0.2, 1 - y, y)
    >>> se = standard_errors(evaluator("binary", wrong.tolist(), y.tolist()), 1000)["accuracy"]
    >>> 0.01 < se < 0.016  # sqrt(0.8 * 0.2 / 1000) = 0.0126
    True
    """
    if rows < 2:
        return {}
    rng = np.random.default_rng(seed)
    base = rng.choice(rows, max_rows, replace=False) if rows > max_rows else np.arange(rows)
    m = len(base)
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        for metric, value in evaluate(base[rng.integers(0, m, m)]).items():
            if value is not None and metric != "count" and np.isfinite(value):
                samples.setdefault(metric, []).append(value)
    scale = np.sqrt(m / rows)
    return {metric: float(np.std(values, ddof=1) * scale) for metric, values in samples.items() if len(values) > 1}


def binary_predictions(predictions: list[Any], positive: str, y_true: np.ndarray,
                       threshold: float) -> tuple[np.ndarray | None, np.ndarray]:
    values = [_first_value(p) for p in predictions]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        scores = np.array(values, dtype=float)
        negative = next((v for v in np.unique(y_true) if v != positive), "0")
        return scores, np.where(scores >= threshold, positive, negative).astype(object)
    return None, np.array([as_label(v) for v in values], dtype=object)


def as_label(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _first_value(prediction: Any) -> Any:
    if isinstance(prediction, Mapping):
        return next(iter(prediction.values()), None)
    return prediction


def first_number(prediction: Any) -> float:
    value = _first_value(prediction)
    return number_or_nan(value) if isinstance(value, (int, float)) else np.nan


def number_or_nan(value: Any) -> float:
    """``value`` as a float: a number (numpy's too), a boolean, or text of one (``"2.5"``); NaN
    for anything else, and for an integer past a float's range.

    >>> [number_or_nan(v) for v in (2, np.float32(0.5), True, " 2.5", "oops", {"a": 1}, [1.0], 10**400)]
    [2.0, 0.5, 1.0, 2.5, nan, nan, nan, nan]
    """
    if isinstance(value, (Mapping, list, tuple)):
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan


def multiclass_predictions(predictions: list[Any]) -> tuple[list[str] | None, np.ndarray | None, np.ndarray]:
    first = predictions[0] if predictions else {}
    if isinstance(first, Mapping) and len(first) > 1:
        classes = [str(c) for c in first]
        proba = np.array([[float(p.get(c, 0.0)) for c in first] for p in predictions])
        return classes, proba, np.array(classes, dtype=object)[proba.argmax(axis=1)]
    return None, None, np.array([as_label(_first_value(p)) for p in predictions], dtype=object)


def infer_task(labels: list[Any]) -> str:
    numbers = [v for v in labels if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) == len(labels) and not all(float(v).is_integer() for v in numbers):
        return "regression"
    return "binary" if len({as_label(v) for v in labels}) <= 2 else "multiclass"
