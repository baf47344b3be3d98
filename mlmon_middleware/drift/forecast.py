"""Drift forecasts: when will a feature's drift reach its warning level, judged from its trend.

Every scheduled check adds one point per feature: the check's time and the feature's ``effect``
(the size of the difference the policy judges: Wasserstein/σ, or ``w`` of the category shares;
see :mod:`~mlmon_middleware.drift.policy`). Over the last checks, :func:`forecast` fits the
trend robustly (Sen's slope, the Theil–Sen estimator: the median of the slopes between every
pair of points, which a few outlying checks do not move) and answers how long until the fitted
line reaches the warning level, and how soon it could at the earliest.

**Only a trend that is there.** The slope's confidence interval is Sen's (1968, eq. 2.6, from
the variance of Kendall's S), exactly as ``scipy.stats.theilslopes`` computes it, with one
change: the variance of S is inflated by the factor (1 + r)/(1 − r) of the residuals' lag-1
autocorrelation r (the AR(1) correction of the effective sample size, as in the modified
Mann–Kendall tests; r ≤ 0 leaves it as it is, and r is capped at 0.9). The points come from
disjoint windows (:class:`DriftTrend`), so shared rows do not correlate them; the correction
guards against what else may (a daily cycle, a population wandering slowly). A forecast is
finite only when the interval's lower end is above zero; the time is ``(threshold − level) /
slope`` from the fitted line's level at the check, and the earliest time uses the interval's
upper slope. A level above the threshold without a
significant upward trend is not a forecast (infinite): small windows read effects above a low
threshold by noise alone, and the drift verdict, not the forecast, judges what is there.

>>> import numpy as np
>>> t = np.arange(20) * 3600.0  # hourly checks, the effect rising 0.002 an hour from 0.01
>>> f = forecast(t, 0.01 + 0.002 * np.arange(20), threshold=0.05)
>>> round(f.slope * 3600, 4), round(f.seconds / 3600, 1)  # 0.048 at the last check: 1 hour more
(0.002, 1.0)
>>> forecast(t, np.full(20, 0.01) + 0.001 * (-1) ** np.arange(20), threshold=0.05).seconds
inf
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from mlmon_middleware.reports import FeatureForecast

MAX_AUTOCORRELATION = 0.9  # the inflation (1 + r)/(1 − r) stops at 19


@dataclasses.dataclass(frozen=True)
class Forecast:
    """One feature's trend: ``slope`` (per second) within ``[low, high]``, the fitted ``level``
    at the time it is counted from (a check's), and the seconds from then until the line reaches the
    threshold (``seconds``; at the interval's upper slope: ``earliest``). ``inf`` when the
    trend is not significantly upward (whatever the level: a small window's effect sits above
    a low threshold by noise alone); 0 when it is and the level is there already."""

    slope: float
    low: float
    high: float
    level: float
    seconds: float
    earliest: float
    autocorrelation: float

    def to_json(self) -> FeatureForecast:
        """The forecast as reports carry it: JSON has no infinity, so ``inf`` is None."""
        return {"slope": self.slope, "low": self.low, "high": self.high, "level": self.level,
                "seconds": None if math.isinf(self.seconds) else self.seconds,
                "earliest": None if math.isinf(self.earliest) else self.earliest, "autocorrelation": self.autocorrelation}


def _ties(values: np.ndarray) -> np.ndarray:
    """Per row of ``values``, Sen's tie term: the sum of k(k − 1)(2k + 5) over groups of k equal values."""
    ordered = np.sort(values, axis=1)
    out = np.zeros(len(values))
    for row in np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1)):  # rare with measured effects
        counts = np.unique(ordered[row], return_counts=True)[1]
        out[row] = float(np.sum(counts * (counts - 1) * (2 * counts + 5)))
    return out


def sen_slopes(x: np.ndarray, Y: np.ndarray, confidence: float = 0.95,
               inflation: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each row of ``Y`` (series over the times ``x``): the Theil–Sen slope, the intercept
    ``median(y) − slope·median(x)``, and the slope's ``confidence`` interval (Sen 1968, eq. 2.6)
    with the variance of Kendall's S multiplied by ``inflation`` (per row, or one for all). With
    ``inflation=1`` each row is ``scipy.stats.theilslopes(y, x, confidence)``. All rows at once:
    a hundred features cost little more than one.

    >>> [float(v[0]) for v in sen_slopes(np.array([0.0, 1, 2, 3]), np.array([[1.0, 3, 5, 7]]))]
    [2.0, 1.0, 2.0, 2.0]
    """
    first, second = np.triu_indices(len(x), 1)
    order = np.argsort(x, kind="stable")
    first, second = order[first], order[second]  # pairs with x[first] <= x[second]
    dx = x[second] - x[first]
    forward = dx > 0
    if not forward.any():
        raise ValueError("a slope needs two different times")
    slopes = np.sort((Y[:, second[forward]] - Y[:, first[forward]]) / dx[forward], axis=1)
    slope = np.median(slopes, axis=1)
    intercept = np.median(Y, axis=1) - slope * np.median(x)
    n, pairs = Y.shape[1], slopes.shape[1]
    ties = _ties(x[None, :])[0] + _ties(Y)
    sigma = np.sqrt((n * (n - 1) * (2 * n + 5) - ties) / 18.0 * inflation)
    z = statistics.NormalDist().inv_cdf((1.0 - confidence) / 2.0)  # negative; scipy is not loaded for this
    upper = np.minimum(np.round((pairs - z * sigma) / 2.0).astype(int), pairs - 1)
    lower = np.maximum(np.round((pairs + z * sigma) / 2.0).astype(int) - 1, 0)
    rows = np.arange(len(Y))
    return slope, intercept, slopes[rows, lower], slopes[rows, upper]


def sen_slope(x: np.ndarray, y: np.ndarray, confidence: float = 0.95,
              inflation: float = 1.0) -> tuple[float, float, float, float]:
    """:func:`sen_slopes` of one series: ``(slope, intercept, low, high)``.

    >>> sen_slope(np.array([0.0, 1, 2, 3]), np.array([1.0, 3, 5, 7]))
    (2.0, 1.0, 2.0, 2.0)
    """
    found = sen_slopes(np.asarray(x, dtype=float), np.asarray(y, dtype=float)[None, :], confidence, inflation)
    return float(found[0][0]), float(found[1][0]), float(found[2][0]), float(found[3][0])


def lag1_autocorrelations(residuals: np.ndarray) -> np.ndarray:
    """Per row, the lag-1 sample autocorrelation of ``residuals`` (0 for a constant row).

    >>> lag1_autocorrelations(np.array([[1.0, -1, 1, -1, 1, -1], [2.0, 2, 2, 2, 2, 2]])).round(3).tolist()
    [-0.833, 0.0]
    """
    centred = residuals - residuals.mean(axis=1, keepdims=True)
    denominator = np.einsum("ij,ij->i", centred, centred)
    numerator = np.einsum("ij,ij->i", centred[:, 1:], centred[:, :-1])
    out: np.ndarray = np.divide(numerator, denominator, out=np.zeros(len(residuals)), where=denominator > 0)
    return out


def fit_trends(times: np.ndarray, values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
    """``(slope, intercept, low, high, r)`` of each row of ``values`` over ``times`` (seconds):
    Sen's slope, its intercept, the slope's interval widened for the residuals' lag-1
    autocorrelation ``r`` (see the module docstring). Needs 3 points or more."""
    x = np.asarray(times, dtype=float)
    Y = np.atleast_2d(np.asarray(values, dtype=float))
    if len(x) < 3 or Y.shape[1] != len(x):
        raise ValueError("a forecast needs 3 or more (time, value) points")
    slope, intercept, _, _ = sen_slopes(x, Y, confidence)
    r = np.minimum(lag1_autocorrelations(Y - (intercept[:, None] + slope[:, None] * x)), MAX_AUTOCORRELATION)
    inflation = np.where(r > 0, (1 + r) / (1 - np.maximum(r, 0)), 1.0)
    _, _, low, high = sen_slopes(x, Y, confidence, inflation)
    return slope, intercept, low, high, r


class Fit(NamedTuple):
    """One feature's fitted trend (per second) and the threshold it is forecast toward."""

    slope: float
    intercept: float
    low: float
    high: float
    r: float
    threshold: float


def _fit_of(fitted: tuple[np.ndarray, ...], i: int, threshold: float) -> Fit:
    """Row ``i`` of :func:`fit_trends`' arrays as a :class:`Fit` toward ``threshold``."""
    slope, intercept, low, high, r = (float(v[i]) for v in fitted)
    return Fit(slope, intercept, low, high, r, threshold)


def at(fit: Fit, now: float) -> Forecast:
    """The forecast of a fitted trend, counted from ``now`` (the line's level there)."""
    level = fit.intercept + fit.slope * now
    if not fit.low > 0:  # not significantly upward: a level above the threshold is noise, or drift already judged
        seconds = earliest = math.inf
    elif level >= fit.threshold:
        seconds = earliest = 0.0
    else:
        seconds, earliest = (fit.threshold - level) / fit.slope, (fit.threshold - level) / fit.high
    return Forecast(fit.slope, fit.low, fit.high, level, seconds, earliest, fit.r)


def forecasts(times: np.ndarray, values: np.ndarray, thresholds: np.ndarray, confidence: float = 0.95,
              now: float | None = None) -> list[Forecast]:
    """The trend of each row of ``values`` over ``times`` and when it reaches its ``thresholds``
    entry, counted from ``now`` (default: the last time). Needs 3 points or more."""
    fitted = fit_trends(times, values, confidence)
    when = float(np.asarray(times, dtype=float)[-1] if now is None else now)
    limits = np.broadcast_to(np.asarray(thresholds, dtype=float), len(fitted[0]))
    return [at(_fit_of(fitted, i, float(limits[i])), when) for i in range(len(fitted[0]))]


def forecast(times: np.ndarray, values: np.ndarray, threshold: float, confidence: float = 0.95) -> Forecast:
    """:func:`forecasts` of one series."""
    return forecasts(times, np.asarray(values, dtype=float)[None, :], np.array([threshold]), confidence)[0]


SIMILAR_ROWS = 0.7  # points fitted together have window sizes within this ratio of the newest's


class DriftTrend:
    """The points the forecasts of one model are fitted to: at each scheduled check whose window
    shares no row with the last recorded one (so that the points are independent under no
    drift), its window's rows and each feature's effect; at most ``points`` of them, the newest.
    A new reference (a baseline replaced) starts afresh. A forecast fits only the points whose
    windows are about as large as the newest one's (within :data:`SIMILAR_ROWS`): an effect's
    noise floor falls as 1/√rows, so windows that shrink (traffic falling under a time window)
    would read as a rising trend. ``streaks`` counts, per feature, the consecutive points at
    which its trend was significantly upward.

    >>> trend = DriftTrend(points=20, min_points=3)
    >>> for i in range(4):  # hourly checks of windows an hour long, the effect rising
    ...     _ = trend.add("baseline", i * 3600.0, i * 3600.0 - 3599, i * 3600.0, 1000, {"x": 0.01 + 0.01 * i})
    >>> trend.add("baseline", 3 * 3600.0 + 60, 3 * 3600.0 - 3539, 3 * 3600.0 + 60, 1000, {"x": 0.05})  # overlaps
    False
    >>> round(trend.forecasts({"x": 0.05}, confidence=0.9, now=3 * 3600.0)["x"].seconds)
    3600
    """

    def __init__(self, points: int, min_points: int) -> None:
        self.points: collections.deque[tuple[float, int, dict[str, float]]] = collections.deque(maxlen=points)
        self.min_points = min_points
        self.reference: object = None
        self.until = -math.inf  # the newest row time of the last window recorded (or skipped)
        self.streaks: dict[str, int] = {}
        self._fitted: tuple[tuple[Any, ...], dict[str, Fit]] | None = None  # per feature: its fit
        self._new = False  # a point was added since the last forecasts

    def add(self, reference: object, now: float, window_from: float, window_to: float, rows: int,
            effects: Mapping[str, float], record: bool = True) -> bool:
        """Record a check (``now``) of ``rows`` rows from ``window_from`` to ``window_to`` judged
        against ``reference`` (any value that changes when the baseline does); whether it was
        recorded: not when its window overlaps the last recorded one's, nor with ``record``
        False (a check that built its baseline from this very window: its effects are 0), whose
        window still counts as seen."""
        if reference != self.reference:
            self.points.clear()
            self.reference, self.until, self._fitted, self.streaks = reference, -math.inf, None, {}
        if window_from <= self.until:
            return False
        self.until = window_to
        if not record:
            return False
        self.points.append((now, rows, dict(effects)))
        self._fitted, self._new = None, True
        return True

    def forecasts(self, thresholds: Mapping[str, float], confidence: float, now: float) -> dict[str, Forecast]:
        """Per feature with ``min_points`` similar points or more, its :func:`forecast` toward its
        threshold, counted from ``now``."""
        key = (tuple(sorted(thresholds.items())), confidence)
        if self._fitted is None or self._fitted[0] != key:
            self._fitted = (key, self._fit(thresholds, confidence))
        found = {name: at(fit, now) for name, fit in self._fitted[1].items()}
        if self._new:  # one step of each streak per point, not per check
            self._new = False
            self.streaks = {n: self.streaks.get(n, 0) + 1 if f.low > 0 else 0 for n, f in found.items()}
        return found

    def _fit(self, thresholds: Mapping[str, float], confidence: float) -> dict[str, Fit]:
        """Per feature with enough similar points: its :class:`Fit`.
        Features with the same points (the usual case: all) are fitted in one call."""
        if not self.points:
            return {}
        newest = self.points[-1][1]
        similar = [p for p in self.points if SIMILAR_ROWS * newest <= p[1] <= newest / SIMILAR_ROWS]
        groups: dict[tuple[bool, ...], list[str]] = collections.defaultdict(list)  # features by the points they have
        for name in thresholds:
            groups[tuple(name in effects for _, _, effects in similar)].append(name)
        out: dict[str, Fit] = {}
        for present, group in groups.items():
            if sum(present) < self.min_points:
                continue
            points = [p for p, keep in zip(similar, present) if keep]
            fitted = fit_trends(np.array([t for t, _, _ in points]),
                                np.array([[effects[name] for _, _, effects in points] for name in group]), confidence)
            for i, name in enumerate(group):
                out[name] = _fit_of(fitted, i, float(thresholds[name]))
        return out
