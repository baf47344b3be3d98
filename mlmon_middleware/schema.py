"""FeatureSchema: feature names and kinds, and encoding rows into matrices.

Rows (from :func:`~mlmon_middleware.payload.extract_rows`) are encoded into two numpy matrices
(one float64 matrix for numeric features, one object matrix for categorical ones, whose values
are named by :func:`category_key`), counting every problem by reason instead of raising. It runs
in the background pipeline, never on the request path.

>>> schema = FeatureSchema(["age", "income", "region"], ["numeric", "numeric", "categorical"])
>>> enc = schema.encode(([{"age": 31, "income": 5e4, "region": "eu"},
...                       {"age": "old", "income": 6e4, "region": "us", "x": 1}]))
>>> enc.numeric.tolist()
[[31.0, 50000.0], [nan, 60000.0]]
>>> enc.categorical.tolist()
[['eu'], ['us']]
>>> sorted(enc.errors.items()), dict(enc.unexpected_fields)
([('type_mismatch', 1), ('unexpected_feature', 1)], {'x': 1})
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import numbers
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mlmon_middleware.limits import MAX_CATEGORY_CHARS, MAX_NAME_CHARS, bounded_category, bounded_name

NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)

@dataclasses.dataclass(frozen=True)
class Encoded:
    """Rows encoded by a schema: ``numeric`` (n × numeric features, NaN where missing or
    invalid), ``categorical`` (n × categorical features, ``None`` where missing), and the
    problems found, counted once per row and reason."""

    numeric: np.ndarray
    categorical: np.ndarray
    errors: collections.Counter[str]
    #: per feature, rows with a ``type_mismatch``, ``non_finite`` value or ``missing_feature`` (absent key)
    feature_errors: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: fields of mapping rows that are not features of the schema, with the rows carrying each
    unexpected_fields: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def __len__(self) -> int:
        return int(self.numeric.shape[0])


def infer_kind(values: Iterable[Any]) -> str:
    """The kind of the first present value: ``categorical`` for text, else ``numeric``.

    The first value decides, so a later bad value is counted as a type mismatch rather
    than turning a numeric feature into a categorical one.
    """
    for v in values:
        if v is not None:
            return CATEGORICAL if isinstance(v, (str, bytes)) else NUMERIC
    return NUMERIC


class FeatureSchema:
    """Ordered feature names with their kinds (``numeric`` or ``categorical``).

    Build it explicitly, or let :meth:`infer` read names and kinds from the first rows.
    """

    __slots__ = ("names", "kinds", "numeric_names", "categorical_names", "_slots", "_pick", "_known", "_plain")

    def __init__(self, names: Sequence[str], kinds: Sequence[str] | None = None) -> None:
        names = tuple(str(n) for n in names)
        kinds = tuple(kinds) if kinds is not None else (NUMERIC,) * len(names)
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {list(names)}")
        if len(kinds) != len(names):
            raise ValueError(f"{len(names)} feature names but {len(kinds)} kinds")
        for name, kind in zip(names, kinds):
            if kind not in KINDS:
                raise ValueError(f"feature {name!r}: kind must be one of {KINDS}, got {kind!r}")
        self.names = names
        self.kinds = kinds
        self.numeric_names = tuple(n for n, k in zip(names, kinds) if k == NUMERIC)
        self.categorical_names = tuple(n for n, k in zip(names, kinds) if k == CATEGORICAL)
        # per feature: (is_numeric, column in its matrix)
        num_pos = {n: i for i, n in enumerate(self.numeric_names)}
        cat_pos = {n: i for i, n in enumerate(self.categorical_names)}
        self._slots = tuple((k == NUMERIC, num_pos[n] if k == NUMERIC else cat_pos[n]) for n, k in zip(names, kinds))
        self._pick = operator.itemgetter(*names) if names else (lambda row: ())
        self._known = frozenset(names)
        positions = {n: i for i, n in enumerate(names)}
        # (numeric, categorical) pickers of plain rows: dicts by name, sequences by position
        self._plain = {dict: (_getter(self.numeric_names), _getter(self.categorical_names)),
                       list: (_getter([positions[n] for n in self.numeric_names]),
                              _getter([positions[n] for n in self.categorical_names]))}

    def __repr__(self) -> str:
        return f"FeatureSchema({list(self.names)!r}, {list(self.kinds)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSchema) and (self.names, self.kinds) == (other.names, other.kinds)

    def __hash__(self) -> int:
        return hash((self.names, self.kinds))

    def to_dict(self) -> dict[str, str]:
        return dict(zip(self.names, self.kinds))

    @classmethod
    def infer(cls, rows: Sequence[Any], names: Sequence[str] | None = None,
              kinds: Mapping[str, str] | None = None, max_features: int | None = None) -> FeatureSchema:
        """Names from ``names`` or the first row (dict keys, else ``f0``, ``f1``, ...); kinds from
        ``kinds`` where given, else from the values in ``rows``. Names read from a row are bounded,
        since a client chose them: at most ``max_features`` of them, each of at most
        :data:`~mlmon_middleware.limits.MAX_NAME_CHARS` characters (the rest stay unmonitored
        fields, counted by :meth:`encode`).

        >>> FeatureSchema.infer([{"a": 1, "b" * 500: 2, "c": "x", "d": 3}], max_features=2)
        FeatureSchema(['a', 'c'], ['numeric', 'categorical'])
        """
        first = rows[0]
        if names is None:
            if isinstance(first, Mapping):
                names = [name for name in map(str, first) if len(name) <= MAX_NAME_CHARS]
            else:
                names = [f"f{i}" for i in range(len(first))]
            names = names[:max_features]
        kinds = dict(kinds or {})
        inferred = []
        for pos, name in enumerate(names):
            if name in kinds:
                inferred.append(kinds[name])
                continue
            column = (r.get(name) if isinstance(r, Mapping) else (r[pos] if pos < len(r) else None) for r in rows)
            inferred.append(infer_kind(column))
        return cls(names, inferred)

    def encode(self, rows: Sequence[Any]) -> Encoded:
        """Encode rows (dicts by name, sequences by position) into numeric and categorical matrices.

        Rows of plain values (finite numbers for numeric features, short text for categorical
        ones, every feature present and no other) convert in one numpy call per matrix.
        Otherwise column by column: a column of plain values converts in one call; only
        columns holding something else go value by value, counting what they find.
        """
        plain = self._encode_plain(rows)
        if plain is not None:
            return plain
        n, width = len(rows), len(self.names)
        flags = {reason: np.zeros(n, dtype=bool) for reason in _REASONS}
        unexpected: collections.Counter[str] = collections.Counter()
        table = []
        pick = self._pick
        for i, row in enumerate(rows):
            if type(row) is dict and len(row) == width:  # the common case: exactly our features
                try:
                    values = pick(row)
                    table.append(values if width > 1 else (values,))
                    continue
                except KeyError:
                    pass
            if isinstance(row, Mapping):
                values = [row.get(name, _MISSING) for name in self.names]
                present = width - values.count(_MISSING)
                if present < width and any(type(k) is not str for k in row):  # {0: x}: names are text
                    row = {str(k): v for k, v in row.items()}
                    values = [row.get(name, _MISSING) for name in self.names]
                    present = width - values.count(_MISSING)
                if present < width:
                    flags["missing_feature"][i] = True
                if len(row) > present:  # keys beyond the schema's (names bounded: a client chose them)
                    flags["unexpected_feature"][i] = True
                    unexpected.update(bounded_name(str(k)) for k in row if k not in self._known)
            elif len(row) == width:
                values = list(row)
            else:
                flags["shape_mismatch"][i] = True
                values = [_MISSING] * width
            table.append(values)
        columns = list(zip(*table)) if table else [()] * width
        numeric = np.full((n, len(self.numeric_names)), np.nan)
        categorical = np.full((n, len(self.categorical_names)), None, dtype=object)
        absent_keys = bool(flags["missing_feature"].any())
        feature_errors: dict[str, dict[str, int]] = {}
        for name, (is_num, col), column in zip(self.names, self._slots, columns):
            column_flags = {"type_mismatch": np.zeros(n, dtype=bool), "non_finite": np.zeros(n, dtype=bool),
                            "value_truncated": np.zeros(n, dtype=bool)}
            if is_num:
                numeric[:, col] = _numeric_column(column, column_flags)
            else:
                categorical[:, col] = _categorical_column(column, column_flags)
            if absent_keys:
                column_flags["missing_feature"] = np.fromiter((v is _MISSING for v in column), bool, n) \
                    & ~flags["shape_mismatch"]
            counts = {reason: int(mask.sum()) for reason, mask in column_flags.items() if mask.any()}
            if counts:
                feature_errors[name] = counts
            for reason in ("type_mismatch", "non_finite", "value_truncated"):
                flags[reason] |= column_flags[reason]
        errors = collections.Counter({reason: int(mask.sum()) for reason, mask in flags.items() if mask.any()})
        return Encoded(numeric, categorical, errors, feature_errors, unexpected)

    def _encode_plain(self, rows: Sequence[Any]) -> Encoded | None:
        """The common case in one pass, or None when any row or value needs a closer look."""
        if not rows:
            return None
        width, first = len(self.names), type(rows[0])
        if first is dict:
            pickers, same = self._plain[dict], all(type(row) is dict and len(row) == width for row in rows)
        elif first is list or first is tuple:
            pickers, same = self._plain[list], all(type(row) in _SEQUENCES and len(row) == width for row in rows)
        else:
            return None
        if not same:
            return None
        (num_pick, num_single), (cat_pick, cat_single) = pickers
        try:
            numeric_table = [num_pick(row) for row in rows] if num_pick else None
            categorical_table = [cat_pick(row) for row in rows] if cat_pick else None
        except (KeyError, IndexError):  # a feature absent, another field in its place
            return None
        n = len(rows)
        numeric = np.empty((n, len(self.numeric_names)))
        if numeric_table is not None:
            cells = numeric_table if num_single else itertools.chain.from_iterable(numeric_table)
            if not set(map(type, cells)) <= _PLAIN_NUMBERS:
                return None
            try:
                numeric[:] = np.array(numeric_table, dtype=np.float64).reshape(n, -1)
            except OverflowError:
                return None
            if not np.isfinite(numeric).all():
                return None
        categorical = np.empty((n, len(self.categorical_names)), dtype=object)
        if categorical_table is not None:
            cells = categorical_table if cat_single else list(itertools.chain.from_iterable(categorical_table))
            if not set(map(type, cells)) <= {str} or max(map(len, cells)) > MAX_CATEGORY_CHARS:
                return None
            categorical.reshape(-1)[:] = cells
        return Encoded(numeric, categorical, collections.Counter())


_SEQUENCES = (list, tuple)
_Picker = tuple[Any, bool]  # (itemgetter or None, whether it returns one value rather than a tuple)


def _getter(keys: Sequence[Any]) -> _Picker:
    return (operator.itemgetter(*keys) if keys else None), len(keys) == 1


class _Missing:
    """A key absent from a row (unlike ``None``, a value that is present but missing)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
_REASONS = ("missing_feature", "unexpected_feature", "shape_mismatch", "type_mismatch", "non_finite",
            "value_truncated")
_PLAIN_NUMBERS = {float, int, np.float64, np.float32, np.int64, np.int32}


def _numeric_column(column: Sequence[Any], flags: dict[str, np.ndarray]) -> np.ndarray:
    if set(map(type, column)) <= _PLAIN_NUMBERS:  # the common case: one numpy conversion
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
        if value is None or value is _MISSING:
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


def _categorical_column(column: Sequence[Any], flags: dict[str, np.ndarray]) -> np.ndarray:
    out = np.empty(len(column), dtype=object)
    if set(map(type, column)) <= {str} and max(map(len, column), default=0) <= MAX_CATEGORY_CHARS:
        out[:] = column
        return out
    for i, value in enumerate(column):
        if value is _MISSING:
            continue
        try:
            key = category_key(value)
        except ValueError:
            flags["non_finite"][i] = True
        except TypeError:
            flags["type_mismatch"][i] = True
        else:
            if key is not None and len(key) > MAX_CATEGORY_CHARS:  # held for a window: bounded
                key = bounded_category(key)
                flags["value_truncated"][i] = True
            out[i] = key
    return out
