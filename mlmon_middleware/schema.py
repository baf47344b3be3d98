"""FeatureSchema: feature names and kinds, and encoding rows into matrices.

Rows (from :func:`~mlmon_middleware.payload.extract_rows`), or a batch kept in columns
(:class:`~mlmon_middleware.columns.Columns`, from :func:`~mlmon_middleware.payload.extract_batch`),
are encoded into two numpy matrices
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
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mlmon_middleware.columns import NUMBER_KINDS, Columns
from mlmon_middleware.limits import MAX_NAME_CHARS, bounded_name, is_valid_text
from mlmon_middleware.values import (
    MISSING,
    PLAIN_NUMBERS,
    VALUE_REASONS,
    categorical_column,
    numeric_column,
    plain_categories,
)

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
    def infer(cls, rows: Sequence[Any] | Columns, names: Sequence[str] | None = None,
              kinds: Mapping[str, str] | None = None, max_features: int | None = None) -> FeatureSchema:
        """Names from ``names`` or the first row (dict keys, else ``f0``, ``f1``, ...); kinds from
        ``kinds`` where given, else from the values in ``rows``. Names read from a row are bounded,
        since a client chose them: at most ``max_features`` of them, each of at most
        :data:`~mlmon_middleware.limits.MAX_NAME_CHARS` characters (the rest stay unmonitored
        fields, counted by :meth:`encode`).

        >>> FeatureSchema.infer([{"a": 1, "b" * 500: 2, "c": "x", "d": 3}], max_features=2)
        FeatureSchema(['a', 'c'], ['numeric', 'categorical'])
        """
        if isinstance(rows, Columns):
            return cls._infer_columns(rows, names, kinds, max_features)
        first = rows[0]
        if names is None:
            if isinstance(first, Mapping):
                names = [name for name in map(str, first) if admissible_name(name)]
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

    @classmethod
    def _infer_columns(cls, table: Columns, names: Sequence[str] | None, kinds: Mapping[str, str] | None,
                       max_features: int | None) -> FeatureSchema:
        """:meth:`infer` for a batch in columns: kinds from the dtypes (numbers numeric, text
        categorical), from the values for object columns."""
        if table.names is not None:
            by_name = dict(zip(table.names, table.arrays))
        else:  # columns by position: the declared names, else f0, f1, ...
            by_name = dict(zip(names if names is not None else [f"f{i}" for i in range(table.width)], table.arrays))
        if names is None:
            names = [name for name in by_name if admissible_name(name)][:max_features]
        kinds = dict(kinds or {})
        inferred = []
        for name in names:
            column = by_name.get(name)
            if name in kinds or column is None:
                inferred.append(kinds.get(name, NUMERIC))
            elif column.dtype.kind in NUMBER_KINDS:
                inferred.append(NUMERIC)
            else:
                inferred.append(CATEGORICAL if column.dtype.kind in "US" else infer_kind(column.tolist()))
        return cls(names, inferred)

    def encode(self, rows: Sequence[Any] | Columns) -> Encoded:
        """Encode rows (dicts by name, sequences by position) into numeric and categorical matrices.

        Rows of plain values (finite numbers for numeric features, short text for categorical
        ones, every feature present and no other) convert in one numpy call per matrix.
        Otherwise column by column: a column of plain values converts in one call; only
        columns holding something else go value by value, counting what they find.
        """
        if isinstance(rows, Columns):
            return self._encode_columns(rows)
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
                values = [row.get(name, MISSING) for name in self.names]
                present = width - values.count(MISSING)
                if present < width and any(type(k) is not str for k in row):  # {0: x}: names are text
                    row = {str(k): v for k, v in row.items()}
                    values = [row.get(name, MISSING) for name in self.names]
                    present = width - values.count(MISSING)
                if present < width:
                    flags["missing_feature"][i] = True
                if len(row) > present:  # keys beyond the schema's (names bounded: a client chose them)
                    flags["unexpected_feature"][i] = True
                    unexpected.update(bounded_name(str(k)) for k in row if k not in self._known)
            elif len(row) == width:
                values = list(row)
            else:
                flags["shape_mismatch"][i] = True
                values = [MISSING] * width
            table.append(values)
        return self._encode(list(zip(*table)) if table else [()] * width, n, flags, unexpected)

    def _encode_columns(self, table: Columns) -> Encoded:
        """:meth:`encode` for a batch in columns: a column of numbers converts in one call."""
        plain = self._columns_plain(table)
        if plain is not None:
            return plain
        n = len(table)
        flags = {reason: np.zeros(n, dtype=bool) for reason in _REASONS}
        unexpected: collections.Counter[str] = collections.Counter()
        absent = np.full(n, MISSING, dtype=object)
        if table.names is None:
            if table.width == len(self.names):
                columns: list[Any] = table.arrays
            else:
                flags["shape_mismatch"][:] = True
                columns = [absent] * len(self.names)
        else:
            by_name = dict(zip(table.names, table.arrays))
            columns = [by_name.get(name, absent) for name in self.names]
            if any(column is absent for column in columns):
                flags["missing_feature"][:] = True
            extra = [name for name in table.names if name not in self._known]
            if extra:
                flags["unexpected_feature"][:] = True
                unexpected.update({bounded_name(name): n for name in extra})
        return self._encode(columns, n, flags, unexpected)

    def _columns_plain(self, table: Columns) -> Encoded | None:
        """The common case of a batch in columns (exactly our features; finite numbers in number
        dtypes; short text), in a few numpy calls (one for a matrix of numbers in schema order);
        None when anything needs a closer look."""
        names = self.names if table.names is None else table.names
        if table.width != len(self.names) or (table.names is not None and set(names) != self._known):
            return None
        n, by_name = len(table), dict(zip(names, table.arrays))
        if table.matrix is not None and not self.categorical_names and tuple(names) == self.names:
            numeric = np.asarray(table.matrix, dtype=np.float64)
        else:
            numeric = np.empty((n, len(self.numeric_names)), order="F")
            for i, name in enumerate(self.numeric_names):
                column = by_name[name]
                if column.dtype.kind not in NUMBER_KINDS:
                    return None
                numeric[:, i] = column
        if not np.isfinite(numeric).all():
            return None
        categorical = np.empty((n, len(self.categorical_names)), dtype=object)
        for i, name in enumerate(self.categorical_names):
            values = by_name[name].tolist()
            if not plain_categories(values):
                return None
            categorical[:, i] = values
        return Encoded(numeric, categorical, collections.Counter())

    def _encode(self, columns: Sequence[Sequence[Any]], n: int, flags: dict[str, np.ndarray],
                unexpected: collections.Counter[str]) -> Encoded:
        """Encode one column per feature (``MISSING`` where a row had no such key), given the
        rows' flags so far; each column's problems are counted per feature and per row."""
        numeric = np.full((n, len(self.numeric_names)), np.nan)
        categorical = np.full((n, len(self.categorical_names)), None, dtype=object)
        absent_keys = bool(flags["missing_feature"].any())
        feature_errors: dict[str, dict[str, int]] = {}
        for name, (is_num, col), column in zip(self.names, self._slots, columns):
            column_flags = {reason: np.zeros(n, dtype=bool) for reason in VALUE_REASONS}
            if is_num:
                numeric[:, col] = numeric_column(column, column_flags)
            else:
                categorical[:, col] = categorical_column(column, column_flags)
            if absent_keys:
                column_flags["missing_feature"] = np.fromiter((v is MISSING for v in column), bool, n) \
                    & ~flags["shape_mismatch"]
            counts = {reason: int(mask.sum()) for reason, mask in column_flags.items() if mask.any()}
            if counts:
                feature_errors[name] = counts
            for reason in VALUE_REASONS:
                flags[reason] |= column_flags[reason]
        errors = collections.Counter({reason: int(mask.sum()) for reason, mask in flags.items() if mask.any()})
        return Encoded(numeric, categorical, errors, feature_errors, unexpected)

    def _encode_plain(self, rows: Sequence[Any]) -> Encoded | None:
        """The common case in one pass, or None when any row or value needs a closer look."""
        if not rows:
            return None
        width, first = len(self.names), type(rows[0])
        if first is dict:
            pickers, kinds = self._plain[dict], _DICT
        elif first is list or first is tuple:
            pickers, kinds = self._plain[list], _SEQUENCES
        else:
            return None
        if not set(map(type, rows)) <= kinds or set(map(len, rows)) != {width}:  # in C: no Python call per row
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
            if not set(map(type, cells)) <= PLAIN_NUMBERS:
                return None
            try:  # one C loop over the cells in row order (np.array of the tuples would first find their shape)
                cells = numeric_table if num_single else itertools.chain.from_iterable(numeric_table)
                numeric = np.fromiter(cells, np.float64, numeric.size).reshape(numeric.shape)
            except OverflowError:
                return None
            if not np.isfinite(numeric).all():
                return None
        categorical = np.empty((n, len(self.categorical_names)), dtype=object)
        if categorical_table is not None:
            cells = categorical_table if cat_single else list(itertools.chain.from_iterable(categorical_table))
            if not plain_categories(cells):
                return None
            categorical.reshape(-1)[:] = cells
        return Encoded(numeric, categorical, collections.Counter())


_DICT: frozenset[type] = frozenset((dict,))
_SEQUENCES: frozenset[type] = frozenset((list, tuple))
_Picker = tuple[Any, bool]  # (itemgetter or None, whether it returns one value rather than a tuple)


def _getter(keys: Sequence[Any]) -> _Picker:
    return (operator.itemgetter(*keys) if keys else None), len(keys) == 1


_REASONS = ("missing_feature", "unexpected_feature", "shape_mismatch", *VALUE_REASONS)


def admissible_name(name: str) -> bool:
    """Whether a field name a client chose can be a feature of an inferred schema: at most
    :data:`~mlmon_middleware.limits.MAX_NAME_CHARS` characters of valid text (the others stay
    unmonitored fields, counted as ``name_too_long`` or ``invalid_text``)."""
    return len(name) <= MAX_NAME_CHARS and (name.isascii() or is_valid_text((name,)))
