"""Values: how one column of a batch becomes numbers (numeric features) or category names.

A column of plain values converts in one numpy call; anything else goes value by value, and
each value that cannot be read is flagged by reason (:data:`VALUE_REASONS`) in the caller's
per-row masks instead of raising. Category names come from :func:`category_key`, the same
whatever the source (JSON, Python, pandas, CSV, Parquet).

>>> flags = {r: np.zeros(3, dtype=bool) for r in VALUE_REASONS}
>>> numeric_column([1, "x", float("inf")], flags).tolist(), flags["type_mismatch"].tolist()
([1.0, nan, nan], [False, True, False])
>>> categorical_column(["fr", "eu\\ud800", 3], flags).tolist(), flags["invalid_text"].tolist()
(['fr', None, '3'], [False, True, False])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlmon_middleware.columns import NUMBER_KINDS
from mlmon_middleware.limits import MAX_CATEGORY_CHARS, bounded_category, is_valid_text


class Missing:
    """A key absent from a row (unlike ``None``, a value that is present but missing)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = Missing()
#: why a value was not read: text where a number belongs (or an object), NaN or an infinity,
#: a category cut to its bound (kept, cut), text that is not valid Unicode (a lone surrogate)
VALUE_REASONS = ("type_mismatch", "non_finite", "value_truncated", "invalid_text")
PLAIN_NUMBERS = {float, int, np.float64, np.float32, np.int64, np.int32}


def numeric_column(column: Sequence[Any], flags: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(column, np.ndarray):
        if column.dtype.kind not in NUMBER_KINDS:
            return numeric_column(column.tolist(), flags)
        values = column.astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            flags["non_finite"] |= bad
            values[bad] = np.nan
        return values
    if set(map(type, column)) <= PLAIN_NUMBERS:  # the common case: one numpy conversion
        try:
            values = np.array(column, dtype=np.float64)
        except OverflowError:  # an integer beyond float's range: the loop below flags it
            pass
        else:
            bad = ~np.isfinite(values)
            if bad.any():
                flags["non_finite"] |= bad
                values[bad] = np.nan
            return values
    values = np.full(len(column), np.nan)
    for i, value in enumerate(column):
        if value is None or value is MISSING:
            continue
        if isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, (str, bytes)):
            try:
                number = float(value)
            except OverflowError:  # a 400-digit integer: a number, but no float
                flags["non_finite"][i] = True
                continue
            except (TypeError, ValueError):
                flags["type_mismatch"][i] = True
                continue
            if math.isfinite(number):
                values[i] = number
            else:
                flags["non_finite"][i] = True
        else:
            flags["type_mismatch"][i] = True
    return values


def category_key(value: object) -> str | None:
    """The identity of a categorical value, the same from JSON, Python, pandas, CSV and Parquet:
    text as it is; booleans ``"true"``/``"false"``; whole numbers as integers (``1``, ``1.0`` and
    ``np.int64(1)`` are ``"1"``); other numbers as their shortest decimal; None and NaN missing.
    Infinities raise ValueError, other types TypeError.

    >>> [category_key(v) for v in (1, 1.0, "1", True, np.int64(7), 0.25, "1.0", None, float("nan"))]
    ['1', '1', '1', 'true', '7', '0.25', '1.0', None, None]
    """
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (numbers.Integral, np.integer)):
        return str(int(value))
    if isinstance(value, (numbers.Real, np.floating)):
        number = float(value)
        if math.isnan(number):
            return None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return str(int(number)) if number.is_integer() else repr(number)
    raise TypeError(f"{type(value).__name__} is not a category")


def plain_categories(cells: Sequence[Any]) -> bool:
    """Whether ``cells`` are category names as they are: text only, none over
    ``MAX_CATEGORY_CHARS``, all valid Unicode (then a column converts in one call).

    >>> plain_categories(["fr", "de"]), plain_categories(["fr", 3]), plain_categories(["x" * 300])
    (True, False, False)
    """
    return set(map(type, cells)) <= {str} and max(map(len, cells), default=0) <= MAX_CATEGORY_CHARS \
        and is_valid_text(cells)


def categorical_column(column: Sequence[Any], flags: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(column, np.ndarray):
        column = column.tolist()  # plain values: text as str, numbers as int or float
    out = np.empty(len(column), dtype=object)
    if plain_categories(column):
        out[:] = column
        return out
    for i, value in enumerate(column):
        if value is MISSING:
            continue
        try:
            key = category_key(value)
        except ValueError:
            flags["non_finite"][i] = True
        except TypeError:
            flags["type_mismatch"][i] = True
        else:
            if key is not None and not key.isascii() and not is_valid_text((key,)):  # JSON's "\\ud800"
                flags["invalid_text"][i] = True
                continue
            if key is not None and len(key) > MAX_CATEGORY_CHARS:  # held for a window: bounded
                key = bounded_category(key)
                flags["value_truncated"][i] = True
            out[i] = key
    return out


def segment_value(value: object) -> object:
    """A segment value as logged (it becomes a label of exported series): text cut at its bound
    and made valid; a boolean, a number or None as it is (a numpy scalar as the Python value it
    holds, so ``np.True_`` is the segment ``True`` is); anything else (a list, an object, a
    whole number past 64 bits) as its category name (:func:`category_key`),
    cut, or None when it has none: never a whole client object in a label.

    >>> [segment_value(v) for v in ("eu", True, 3, 0.5, None, 2**70, {"ssn": "123"}, ["a"])]
    ['eu', True, 3, 0.5, None, '1180591620717411303424', None, None]
    >>> [segment_value(v) for v in (np.True_, np.int64(3), np.float32(0.5), np.longdouble(1.5), np.str_("eu"))]
    [True, 3, 0.5, 1.5, 'eu']
    """
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, np.floating):  # a longdouble's item() is a longdouble
            value = float(value)
    if isinstance(value, str):
        return bounded_category(value)
    if value is None or isinstance(value, (bool, float)) or (isinstance(value, int) and -2**63 <= value < 2**63):
        return value
    try:
        key = category_key(value)
    except (TypeError, ValueError):
        return None
    return None if key is None else bounded_category(key)
