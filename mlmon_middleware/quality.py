"""Data-quality measures of one feature over a window, against its baseline profile.

Missing values (NaN, None) are counted as their share of the window's rows; out-of-range
values are numeric values outside the baseline's [min, max]; new categories are values the
baseline never saw (when the baseline pooled rare categories into ``__other__``, nothing
is called new). Type mismatches and schema violations are counted at capture time
(``mlmon_capture_errors_total``); the report adds them per check.

>>> import numpy as np
>>> sorted_numeric_quality(np.array([1.0, 5.0, 12.0]), 4, {"min": 0.0, "max": 10.0})
{'missing_ratio': 0.25, 'out_of_range_ratio': 0.25}
>>> categorical_quality(np.array(["a", None, "z"], dtype=object), {"frequencies": {"a": 1.0}})
{'missing_ratio': 0.3333333333333333, 'new_category_ratio': 0.3333333333333333}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlmon_middleware.drift.stats import OTHER


def sorted_numeric_quality(present_sorted: np.ndarray, n: int, profile: Mapping[str, Any]) -> dict[str, float]:
    """Missing and out-of-range shares of a numeric column of ``n`` rows, from its sorted present
    (non-NaN) values: two lookups, as the drift check has the column sorted already."""
    if n == 0:
        return {"missing_ratio": 0.0, "out_of_range_ratio": 0.0}
    low, high = profile.get("min"), profile.get("max")
    outside = 0
    if low is not None and high is not None:
        outside = int(np.searchsorted(present_sorted, low, side="left")
                      + len(present_sorted) - np.searchsorted(present_sorted, high, side="right"))
    return {"missing_ratio": (n - len(present_sorted)) / n, "out_of_range_ratio": outside / n}


def categorical_quality(values: np.ndarray, profile: Mapping[str, Any]) -> dict[str, float]:
    n = len(values)
    if n == 0:
        return {"missing_ratio": 0.0, "new_category_ratio": 0.0}
    known = profile.get("frequencies", {})
    missing = sum(1 for v in values if v is None)
    new = 0 if OTHER in known else sum(1 for v in values if v is not None and v not in known)
    return {"missing_ratio": missing / n, "new_category_ratio": new / n}
