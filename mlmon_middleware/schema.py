"""FeatureSchema: feature names and kinds, and turning what an endpoint sees into rows.

An endpoint receives a dict, a pydantic model, a list of them (a batch), a numpy array, a
pandas DataFrame or raw JSON; it answers with a scalar, a list, class probabilities or a
dict. This module turns both sides into rows and encodes rows into two numpy matrices (one
float64 matrix for numeric features, one object matrix for categorical ones), counting
every problem by reason instead of raising. It runs in the background pipeline, never on
the request path, and imports neither pydantic nor pandas: they are recognised by shape.

>>> schema = FeatureSchema(["age", "income", "region"], ["numeric", "numeric", "categorical"])
>>> enc = schema.encode(extract_rows([{"age": 31, "income": 5e4, "region": "eu"},
...                                   {"age": "old", "income": 6e4, "region": "us", "x": 1}]))
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
import math
import numbers
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)

# Keys under which JSON bodies conventionally carry a batch (KServe, TF Serving, MLflow, ...).
BATCH_KEYS = ("instances", "inputs", "rows", "records", "data", "dataframe_records")
# Keys under which responses conventionally carry the prediction, tried in this order.
PREDICTION_KEYS = ("prediction", "predictions", "probabilities", "probability", "proba", "scores",
                   "score", "label", "labels", "class", "output", "outputs", "result", "y")


class CaptureError(ValueError):
    """Input or output that cannot be turned into rows; ``reason`` is the counted label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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


_SCALAR_TYPES = {float, int, str, bool, type(None)}
_PLAIN_CONTAINERS = {dict, list, tuple}


def _is_scalar(value: Any) -> bool:
    return type(value) in _SCALAR_TYPES or isinstance(value, (str, bytes, numbers.Number, np.generic))


def _as_plain(obj: Any) -> Any:
    """Unwrap pydantic models, numpy arrays and pandas objects into dicts and lists."""
    if type(obj) in _PLAIN_CONTAINERS or type(obj) in _SCALAR_TYPES:
        return obj
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and not isinstance(obj, type):
        return dump()
    if hasattr(obj, "columns") and callable(getattr(obj, "to_dict", None)):  # pandas DataFrame
        return [{str(k): v for k, v in row.items()} for row in obj.to_dict(orient="records")]
    if callable(getattr(obj, "to_numpy", None)):  # pandas Series / Index
        return obj.to_numpy().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def extract_rows(obj: Any) -> list[Any]:
    """The feature rows in an endpoint's input: a list of dicts or of sequences.

    A dict is one row unless it wraps a batch under a conventional key (``instances``,
    ``inputs``, ...); a list of scalars is one row; a list of dicts, models or lists is a
    batch; a 1-D array is one row and a 2-D array a batch.

    >>> extract_rows({"instances": [[1, 2], [3, 4]]})
    [[1, 2], [3, 4]]
    >>> extract_rows([0.5, "eu"])
    [[0.5, 'eu']]
    """
    obj = _as_plain(obj)
    if isinstance(obj, Mapping):
        if len(obj) == 1:
            (key, value), = obj.items()
            if key in BATCH_KEYS and isinstance(value, (list, tuple, np.ndarray)):
                return extract_rows(value)
        if not obj:
            raise CaptureError("empty_input", "empty object")
        return [obj]
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise CaptureError("empty_input", "empty list")
        if all(_is_scalar(v) for v in obj):
            return [list(obj)]
        rows = [_as_plain(v) for v in obj]
        if all(isinstance(r, Mapping) for r in rows):
            return rows
        if all(isinstance(r, (list, tuple)) for r in rows):
            widths = {len(r) for r in rows}
            if len(widths) != 1:
                raise CaptureError("shape_mismatch", f"batch rows have {sorted(widths)} values")
            return rows
        raise CaptureError("shape_mismatch", "batch mixes rows of different types")
    if _is_scalar(obj):
        raise CaptureError("unsupported_input", f"a bare {type(obj).__name__} is not a feature row")
    raise CaptureError("unsupported_input", f"cannot read features from {type(obj).__name__}")


def extract_predictions(obj: Any, n_rows: int, key: str | None = None,
                        class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One ``{output name: value}`` dict per input row, from an endpoint's output.

    Scalars are named ``prediction``; probability vectors are named by ``class_names`` (or
    ``class_0``, ``class_1``, ...); a dict answer is read under ``key`` or the first
    conventional key present (``prediction``, ``predictions``, ``probabilities``, ...).

    >>> extract_predictions({"prediction": 0.8}, 1)
    [{'prediction': 0.8}]
    >>> extract_predictions([[0.1, 0.9], [0.7, 0.3]], 2, class_names=["ok", "fraud"])
    [{'ok': 0.1, 'fraud': 0.9}, {'ok': 0.7, 'fraud': 0.3}]
    """
    obj = _as_plain(obj)
    if type(obj) is dict and n_rows == 1:  # the common case: {"prediction": 0.3, ...}
        value = obj.get(key) if key is not None else next((obj[k] for k in PREDICTION_KEYS if k in obj), None)
        if type(value) in _SCALAR_TYPES and value is not None:
            return [{"prediction": value}]
    if isinstance(obj, Mapping):
        obj = _prediction_from_mapping(obj, key)
    if _is_scalar(obj) or isinstance(obj, Mapping):
        values = [obj]
    elif isinstance(obj, (list, tuple)):
        values = [_as_plain(v) for v in obj]
        if n_rows == 1 and len(values) > 1 and all(_is_scalar(v) for v in values):
            values = [values]  # one row answered with a vector (class probabilities)
    else:
        raise CaptureError("unsupported_output", f"cannot read a prediction from {type(obj).__name__}")
    if len(values) != n_rows:
        raise CaptureError("prediction_mismatch", f"{len(values)} predictions for {n_rows} rows")
    return [_prediction_row(v, key, class_names) for v in values]


def _prediction_from_mapping(obj: Mapping[str, Any], key: str | None) -> Any:
    if key is not None:
        if key not in obj:
            raise CaptureError("missing_prediction", f"no key {key!r} in the response")
        return _as_plain(obj[key])
    for candidate in PREDICTION_KEYS:
        if candidate in obj:
            return _as_plain(obj[candidate])
    raise CaptureError("missing_prediction", f"none of {PREDICTION_KEYS} in the response; set prediction_key=")


def _prediction_row(value: Any, key: str | None, class_names: Sequence[str] | None) -> dict[str, Any]:
    value = _as_plain(value)
    if isinstance(value, Mapping):
        inner = value
        if any(k in value for k in ((key,) if key else PREDICTION_KEYS)):
            inner = _prediction_from_mapping(value, key)
            if not isinstance(inner, Mapping):
                return _prediction_row(inner, key, class_names)
        return {str(k): v for k, v in inner.items()}
    if _is_scalar(value):
        return {"prediction": value}
    if isinstance(value, (list, tuple)):
        names = list(class_names) if class_names and len(class_names) == len(value) \
            else [f"class_{i}" for i in range(len(value))]
        return dict(zip(names, value))
    raise CaptureError("unsupported_output", f"cannot read a prediction from {type(value).__name__}")


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

    __slots__ = ("names", "kinds", "numeric_names", "categorical_names", "_slots", "_pick", "_known")

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
              kinds: Mapping[str, str] | None = None) -> FeatureSchema:
        """Names from ``names`` or the first row (dict keys, else ``f0``, ``f1``, ...); kinds from
        ``kinds`` where given, else from the values in ``rows``."""
        first = rows[0]
        if names is None:
            names = [str(k) for k in first] if isinstance(first, Mapping) else [f"f{i}" for i in range(len(first))]
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

        Column by column: a column of plain numbers (or of text, for a categorical feature)
        converts in one numpy call; only columns holding something else go value by value.
        """
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
                if present < width:
                    flags["missing_feature"][i] = True
                if len(row) > present:  # keys beyond the schema's
                    flags["unexpected_feature"][i] = True
                    unexpected.update(str(k) for k in row if k not in self._known)
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
            column_flags = {"type_mismatch": np.zeros(n, dtype=bool), "non_finite": np.zeros(n, dtype=bool)}
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
            flags["type_mismatch"] |= column_flags["type_mismatch"]
            flags["non_finite"] |= column_flags["non_finite"]
        errors = collections.Counter({reason: int(mask.sum()) for reason, mask in flags.items() if mask.any()})
        return Encoded(numeric, categorical, errors, feature_errors, unexpected)


class _Missing:
    """A key absent from a row (unlike ``None``, a value that is present but missing)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
_REASONS = ("missing_feature", "unexpected_feature", "shape_mismatch", "type_mismatch", "non_finite")
_PLAIN_NUMBERS = {float, int, np.float64, np.float32, np.int64, np.int32}


def _numeric_column(column: Sequence[Any], flags: dict[str, np.ndarray]) -> np.ndarray:
    if set(map(type, column)) <= _PLAIN_NUMBERS:  # the common case: one numpy conversion
        values = np.array(column, dtype=np.float64)
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


def _categorical_column(column: Sequence[Any], flags: dict[str, np.ndarray]) -> np.ndarray:
    out = np.empty(len(column), dtype=object)
    if set(map(type, column)) <= {str}:
        out[:] = column
        return out
    for i, value in enumerate(column):
        if value is None or value is _MISSING or isinstance(value, str):
            out[i] = None if value is _MISSING else value
        elif isinstance(value, (bool, numbers.Integral, np.integer)):
            out[i] = str(value)
        elif isinstance(value, (numbers.Real, np.floating)):
            if math.isfinite(float(value)):
                out[i] = str(value)
            else:
                flags["non_finite"][i] = True
        else:
            flags["type_mismatch"][i] = True
    return out
