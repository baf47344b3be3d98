"""Columns: a batch kept column by column, as a DataFrame or a 2-D array gives it.

Turning a 256 × 22 DataFrame into 256 dicts costs milliseconds (``to_dict``: ~10 µs a row);
taking its columns as numpy arrays costs one call per column (or one for an all-numeric frame),
and encoding them into the window is then a few numpy operations. A :class:`Columns` behaves
as a sequence of rows where rows are needed (``len``, slicing, indexing and iteration give
dicts by column name, or lists for an array), so the prediction log and spans read it as they
read any batch, and only they pay for rows.

>>> import numpy as np
>>> batch = columns_of(np.arange(40.0).reshape(20, 2))
>>> len(batch), batch.names, batch[1], [len(part) for part in (batch[:12], batch[12:])]
(20, None, [2.0, 3.0], [12, 8])
>>> import pandas as pd
>>> frame = columns_of(pd.DataFrame({"age": [31, 45], "region": ["eu", "us"]}))
>>> frame.names, list(frame)
(['age', 'region'], [{'age': 31, 'region': 'eu'}, {'age': 45, 'region': 'us'}])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

NUMBER_KINDS = "biuf"  # numpy dtype kinds read as numbers: bool, signed, unsigned, float
FEW_ROWS = 16  # batches with fewer rows are read as rows (a call per column costs more than they do)


class Columns:
    """``names`` (None when the columns are known by position only) and one 1-D array per column;
    ``matrix``: the (n × columns) array of numbers they are columns of, when there is one."""

    __slots__ = ("names", "arrays", "n", "matrix")

    def __init__(self, names: list[str] | None, arrays: Sequence[np.ndarray], n: int,
                 matrix: np.ndarray | None = None) -> None:
        self.names = names
        self.arrays = list(arrays)
        self.n = n
        self.matrix = matrix

    def __len__(self) -> int:
        return self.n

    @property
    def width(self) -> int:
        return len(self.arrays)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Columns: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            parts = [a[index] for a in self.arrays]
            return Columns(self.names, parts, len(range(*index.indices(self.n))),
                           None if self.matrix is None else self.matrix[index])
        if not -self.n <= index < self.n:
            raise IndexError(f"row {index} of {self.n}")
        index %= self.n
        return next(iter(self[index:index + 1]))

    def __iter__(self) -> Iterator[Any]:
        # plain Python values, each column's own (an int column of a numeric frame stays int)
        values = zip(*(a.tolist() for a in self.arrays))
        if self.names is None:
            return (list(row) for row in values)
        names = self.names
        return (dict(zip(names, row)) for row in values)


#: a batch as the pipeline reads it: rows (dicts or sequences), or columns
Batch = list[Any] | Columns
#: a record's predictions: one dict per row (None where unreadable), or columns for an array answer
Outputs = list[dict[str, Any] | None] | Columns


def columns_of(obj: Any) -> Columns | None:
    """``obj`` as :class:`Columns` when it is a non-empty pandas DataFrame (with distinct column
    names) or a 2-D numpy array of at least :data:`FEW_ROWS` rows, else None (recognised by
    shape: pandas is never imported)."""
    if isinstance(obj, np.ndarray):
        if obj.ndim != 2 or 0 in obj.shape or obj.shape[0] < FEW_ROWS:
            return None  # a few rows of an array are cheaper as lists
        numbers = obj if obj.dtype.kind in NUMBER_KINDS else None
        return Columns(None, [obj[:, j] for j in range(obj.shape[1])], obj.shape[0], numbers)
    columns, dtypes = getattr(obj, "columns", None), getattr(obj, "dtypes", None)
    if columns is None or dtypes is None or not callable(getattr(obj, "to_numpy", None)) or not hasattr(obj, "items"):
        return None
    names = [str(c) for c in columns]
    n = len(obj)
    if not names or n == 0 or len(set(names)) != len(names):
        return None
    kinds = dtypes.tolist()
    if isinstance(kinds[0], np.dtype) and kinds[0].kind in NUMBER_KINDS and all(d == kinds[0] for d in kinds):
        matrix = obj.to_numpy()  # one block of one number type: one call for every column
        return Columns(names, [matrix[:, j] for j in range(matrix.shape[1])], n, matrix)
    return Columns(names, [np.asarray(series.to_numpy()) for _, series in obj.items()], n)


def varying(rows: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """Which columns of a float matrix hold at least two distinct finite values (a column that
    is constant, or missing everywhere, tells a multivariate model nothing); ``among``: a mask
    of the columns to look at (the others are False).

    >>> varying(np.array([[1.0, 5.0, np.nan], [2.0, 5.0, np.nan]])).tolist()
    [True, False, False]
    """
    finite = np.isfinite(rows)
    looked = np.ones(rows.shape[1], dtype=bool) if among is None else among
    return np.array([bool(ok) and bool(finite[:, j].any()) and np.ptp(rows[finite[:, j], j]) > 0
                     for j, ok in enumerate(looked)], dtype=bool)


def positions(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """The positions of a random subset of at most ``limit`` of ``n`` rows, in their order (all
    of them when there are no more): chosen by position, never by value, so a test on the subset
    keeps its level.

    >>> positions(5, 10, np.random.default_rng(0)).tolist(), len(positions(10, 3, np.random.default_rng(0)))
    ([0, 1, 2, 3, 4], 3)
    """
    return np.sort(rng.choice(n, limit, replace=False)) if n > limit else np.arange(n)
