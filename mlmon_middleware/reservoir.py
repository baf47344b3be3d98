"""Bounded, thread-safe samples of recent rows, stored column-wise in numpy.

The analyzer needs the last N rows of each model (the current window) as matrices;
the request path must never wait for it. A :class:`SlidingWindow` is a ring buffer of
fixed capacity: ``extend`` writes a batch with one vectorised assignment, ``snapshot``
returns copies in arrival order, and both hold the lock only for those copies. Memory is
capacity × columns, whatever the traffic. Columns are column-major (a check reads a feature's
values contiguously), and a numeric column may be float32 (half the memory) where the model's
baseline allows it (:meth:`~mlmon_middleware.Baseline.window_dtype`).

>>> import numpy as np
>>> w = SlidingWindow(3, x=(2, float), label=(1, object))
>>> w.extend(np.array([1.0, 2.0]), x=np.array([[1, 1], [2, 2]]), label=np.array([["a"], ["b"]], dtype=object))
>>> w.extend(np.array([3.0, 4.0]), x=np.array([[3, 3], [4, 4]]), label=np.array([["c"], ["d"]], dtype=object))
>>> snap = w.snapshot()
>>> snap["x"][:, 0].tolist(), snap["label"][:, 0].tolist(), len(w), w.total
([2.0, 3.0, 4.0], ['b', 'c', 'd'], 3, 4)
>>> w.snapshot(since=3.5)["x"].tolist()
[[4.0, 4.0]]
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from mlmon_middleware.reports import WindowSpan

_F32_MAX = float(np.finfo(np.float32).max)

#: a window's rows in arrival order: ``"time"`` (n,) plus one (n × width) matrix per column
WindowSnapshot = dict[str, np.ndarray]


class SlidingWindow:
    """The last ``capacity`` rows, by arrival, with a timestamp per row.

    Parameters:
        capacity: rows kept; older rows are overwritten.
        **columns: ``name=(width, dtype)`` for each matrix stored per row.
    """

    def __init__(self, capacity: int, **columns: tuple[int, type]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._time = np.zeros(capacity)
        # column-major: each column contiguous, as a check reads them (sorting a strided column
        # costs 5× a contiguous one)
        self._columns: dict[str, np.ndarray] = {
            name: np.full((capacity, width), None if np.dtype(dtype) == object else np.nan, dtype=dtype, order="F")
            for name, (width, dtype) in columns.items()
        }
        self._next = 0  # slot the next row goes to
        self._size = 0
        self.total = 0  # rows ever written

    def __len__(self) -> int:
        return self._size

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's pipeline may have held it at the fork)."""
        self._lock = threading.Lock()

    def extend(self, timestamps: np.ndarray, **arrays: np.ndarray) -> None:
        """Append a batch: one timestamp per row and, for every column, an (n × width) matrix."""
        n = len(timestamps)
        if n == 0:
            return
        if set(arrays) != set(self._columns):
            raise ValueError(f"expected columns {sorted(self._columns)}, got {sorted(arrays)}")
        skip = max(0, n - self.capacity)  # a batch larger than the window keeps its tail
        kept = n - skip
        arrays = {name: matrix[skip:] for name, matrix in arrays.items()}
        for name, matrix in arrays.items():
            if self._columns[name].dtype == np.float32:  # beyond its range a value is kept as the largest one, not inf
                arrays[name] = np.clip(matrix, -_F32_MAX, _F32_MAX)
        with self._lock:
            start = (self._next + skip) % self.capacity
            head = min(kept, self.capacity - start)  # rows before the ring wraps around, then the rest
            for target, values in ((self._time, timestamps[skip:]), *((self._columns[k], v) for k, v in arrays.items())):
                target[start:start + head] = values[:head]
                target[:kept - head] = values[head:]
            self._next = int((self._next + n) % self.capacity)
            self._size = min(self.capacity, self._size + n)
            self.total += n

    def widen(self, name: str) -> None:
        """Store column ``name`` as float64 from now on (its rows kept)."""
        with self._lock:
            self._columns[name] = self._columns[name].astype(np.float64, order="F")

    def dtype(self, name: str) -> np.dtype[Any]:
        return self._columns[name].dtype

    def snapshot(self, since: float | None = None) -> WindowSnapshot:
        """Copies of the stored rows in arrival order (``"time"`` plus every column),
        optionally only those with a timestamp ``>= since``."""
        with self._lock:
            size, start = self._size, (self._next if self._size == self.capacity else 0)
            out = {"time": _in_order(self._time, start, size)}
            for name, matrix in self._columns.items():
                out[name] = _in_order(matrix, start, size)
        return rows_since(out, since)


def _in_order(values: np.ndarray, start: int, size: int) -> np.ndarray:
    """A copy of the ring's first ``size`` rows from row ``start`` on, wrapping around, in the
    array's own layout (a column-major window gives contiguous columns)."""
    if start == 0:
        return values[:size].copy(order="K")
    out = np.empty_like(values, order="K")
    head = len(values) - start
    out[:head] = values[start:]
    out[head:] = values[:start]
    return out


def rows_since(snapshot: WindowSnapshot, since: float | None) -> WindowSnapshot:
    """The rows of ``snapshot`` with a timestamp ``>= since`` (all of them when ``since`` is None)."""
    if since is None or "time" not in snapshot:
        return snapshot
    keep = snapshot["time"] >= since
    return {name: values[keep] for name, values in snapshot.items()}


def span_of(window: WindowSnapshot) -> WindowSpan:
    """The first and last timestamps of a window (None for both when it is empty)."""
    times = window.get("time") if window else None
    if times is None or not len(times):
        return {"from": None, "to": None}
    return {"from": float(times[0]), "to": float(times[-1])}


def row_for_row(features: WindowSnapshot, outputs: WindowSnapshot) -> bool:
    """Whether a model's feature and output windows hold the same rows in the same order (every
    request had an answer), so that a row's features and its prediction can be read together."""
    return bool(features) and bool(outputs) and np.array_equal(features.get("time", ()), outputs.get("time", ()))
