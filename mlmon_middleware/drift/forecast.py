"""Drift forecasts: when will a feature's drift reach its warning level, judged from its trend.

Every scheduled check adds one point per feature: the check's time and the feature's ``effect``
(the size of the difference the policy judges: Wasserstein/σ, or ``w`` of the category shares;
see :mod:`~mlmon_middleware.drift.policy`). Over the last checks, :func:`forecast` fits the
trend robustly (Sen's slope, the Theil–Sen estimator: the median of the slopes between every
pair of points, which a few outlying checks do not move) and answers how long until the fitted
line reaches the warning level, and how soon it could at the earliest.

**Only a trend that is there.** The slope's confidence interval is Sen's (1968, eq. 2.6, from
the variance of Kendall's S), exactly as ``scipy.stats.theilslopes`` computes it, with one
change: consecutive checks of a sliding window share most of their rows, so their effects are
correlated and a stationary series wanders like a trend. The variance of S is inflated by the
factor (1 + r)/(1 − r) of the residuals' lag-1 autocorrelation r (the AR(1) correction of the
effective sample size, as in the modified Mann–Kendall tests; r ≤ 0 leaves it as it is, and r
is capped at 0.9). A forecast is finite only when the interval's lower end is above zero; the
time is ``(threshold − level) / slope`` from the fitted level at the last check, and the
earliest time uses the interval's upper slope.

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
from typing import Any

import numpy as np

from mlmon_middleware.reports import FeatureForecast

MAX_AUTOCORRELATION = 0.9  # the inflation (1 + r)/(1 − r) stops at 19


@dataclasses.dataclass(frozen=True)
class Forecast:
    """One feature's trend: ``slope`` (per second) within ``[low, high]``, the fitted ``level``
    at the last point, and the seconds from the last point until the line reaches the
    threshold (``seconds``; at the interval's upper slope: ``earliest``). ``inf`` when the
    trend is not significantly upward; 0 when the level is there already."""

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


def sen_slope(x: np.ndarray, y: np.ndarray, confidence: float = 0.95,
              inflation: float = 1.0) -> tuple[float, float, float, float]:
    """``(slope, intercept, low, high)``: the Theil–Sen slope, the intercept ``median(y) −
    slope·median(x)``, and the slope's ``confidence`` interval (Sen 1968) with the variance of
    Kendall's S multiplied by ``inflation``. With ``inflation=1`` it is
    ``scipy.stats.theilslopes(y, x, confidence)``.

    >>> sen_slope(np.array([0.0, 1, 2, 3]), np.array([1.0, 3, 5, 7]))
    (2.0, 1.0, 2.0, 2.0)
    """
    dx = x[:, None] - x
    dy = y[:, None] - y
    forward = dx > 0
    slopes = np.sort(dy[forward] / dx[forward])
    if not slopes.size:
        raise ValueError("a slope needs two different times")
    slope = float(np.median(slopes))
    intercept = float(np.median(y) - slope * np.median(x))
    n, pairs = len(y), len(slopes)
    ties = sum(k * (k - 1) * (2 * k + 5) for values in (x, y) for k in np.unique(values, return_counts=True)[1] if k > 1)
    sigma = math.sqrt((n * (n - 1) * (2 * n + 5) - ties) / 18.0 * inflation)
    z = statistics.NormalDist().inv_cdf((1.0 - confidence) / 2.0)  # negative; scipy is not loaded for this
    upper = min(int(np.round((pairs - z * sigma) / 2.0)), pairs - 1)
    lower = max(int(np.round((pairs + z * sigma) / 2.0)) - 1, 0)
    return slope, intercept, float(slopes[lower]), float(slopes[upper])


def lag1_autocorrelation(residuals: np.ndarray) -> float:
    """The lag-1 sample autocorrelation of ``residuals`` (0 for a constant series).

    >>> round(lag1_autocorrelation(np.array([1.0, -1, 1, -1, 1, -1])), 3)
    -0.833
    """
    centred = residuals - residuals.mean()
    denominator = float(centred @ centred)
    return 0.0 if denominator == 0 else float(centred[1:] @ centred[:-1]) / denominator


def forecast(times: np.ndarray, values: np.ndarray, threshold: float, confidence: float = 0.95) -> Forecast:
    """The trend of ``values`` over ``times`` (seconds) and when it reaches ``threshold``
    (see the module docstring); ``confidence``: of the slope's interval. Needs 3 points or more."""
    x = np.asarray(times, dtype=float)
    y = np.asarray(values, dtype=float)
    if len(x) < 3 or len(x) != len(y):
        raise ValueError("a forecast needs 3 or more (time, value) points")
    slope, intercept, _, _ = sen_slope(x, y, confidence)
    r = min(lag1_autocorrelation(y - (intercept + slope * x)), MAX_AUTOCORRELATION)
    inflation = (1 + r) / (1 - r) if r > 0 else 1.0
    slope, intercept, low, high = sen_slope(x, y, confidence, inflation)
    level = intercept + slope * float(x[-1])
    if level >= threshold:
        seconds = earliest = 0.0
    elif low > 0:
        seconds, earliest = (threshold - level) / slope, (threshold - level) / high
    else:
        seconds = earliest = math.inf
    return Forecast(slope, low, high, level, seconds, earliest, r)


class DriftTrend:
    """The points the forecasts of one model are fitted to: at each scheduled check whose window
    shares no row with the last recorded one (so that the points are independent under no
    drift), each feature's effect; at most ``points`` of them, the newest. A new reference (a
    baseline replaced) starts afresh.

    >>> trend = DriftTrend(points=20, min_points=3)
    >>> for i in range(4):  # hourly checks of windows an hour long, the effect rising
    ...     _ = trend.add("baseline", i * 3600.0, i * 3600.0 - 3599, i * 3600.0, {"x": 0.01 + 0.01 * i})
    >>> trend.add("baseline", 3 * 3600.0 + 60, 3 * 3600.0 - 3539, 3 * 3600.0 + 60, {"x": 0.05})  # overlaps: skipped
    False
    >>> round(trend.forecasts({"x": 0.05}, confidence=0.9)["x"].seconds)
    3600
    """

    def __init__(self, points: int, min_points: int) -> None:
        self.points: collections.deque[tuple[float, dict[str, float]]] = collections.deque(maxlen=points)
        self.min_points = min_points
        self.reference: object = None
        self.until = -math.inf  # the last recorded window's newest row time
        self._cached: tuple[tuple[Any, ...], dict[str, Forecast]] | None = None

    def add(self, reference: object, now: float, window_from: float, window_to: float,
            effects: Mapping[str, float]) -> bool:
        """Record a check (``now``) of the rows from ``window_from`` to ``window_to`` judged
        against ``reference`` (any value that changes when the baseline does); whether it was
        recorded (not when its window overlaps the last recorded one's)."""
        if reference != self.reference:
            self.points.clear()
            self.reference, self.until, self._cached = reference, -math.inf, None
        if window_from <= self.until:
            return False
        self.points.append((now, dict(effects)))
        self.until = window_to
        self._cached = None
        return True

    def forecasts(self, thresholds: Mapping[str, float], confidence: float) -> dict[str, Forecast]:
        """Per feature with ``min_points`` points or more, its :func:`forecast` toward its
        threshold (computed again only when a point or a threshold changed)."""
        key = (tuple(sorted(thresholds.items())), confidence)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        found = {}
        for name, threshold in thresholds.items():
            pairs = [(t, effects[name]) for t, effects in self.points if name in effects]
            if len(pairs) >= self.min_points:
                times, values = zip(*pairs)
                found[name] = forecast(np.array(times), np.array(values), threshold, confidence)
        self._cached = (key, found)
        return found
