"""Payloads: references to what an endpoint saw, resolved later in the pipeline into rows.

A :class:`~mlmon_middleware.model.Record` holds *references* to what the endpoint saw (its
call arguments as :class:`CallArgs`, or the raw request and response bodies as
:class:`RawBody`). Nothing is parsed, copied or validated on the request path;
:func:`resolve_payload` does that later, in the pipeline, and :func:`extract_rows` and
:func:`extract_predictions` turn what it finds (a dict, a pydantic model, a list of them as a
batch, a numpy array, a pandas DataFrame, raw JSON; a scalar, a list, class probabilities or a
dict) into rows, recognising pydantic and pandas by shape without importing them.

>>> payload = RawBody(b'{"x": 1.5}', "application/json")
>>> resolve_payload(payload)
{'x': 1.5}
>>> resolve_payload(CallArgs(("req",), {"tx": {"x": 2}}, ("request", "tx")))
{'x': 2}
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from mlmon_middleware.columns import NUMBER_KINDS, Columns, columns_of

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


_SCALAR_TYPES = {float, int, str, bool, type(None)}
_PLAIN_SCALARS = {float, int, str, bool}
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


def extract_batch(obj: Any) -> list[Any] | Columns:
    """The rows of :func:`extract_rows`, except that a pandas DataFrame or a 2-D numpy array
    (also under a batch key) stays in :class:`~mlmon_middleware.columns.Columns`: the pipeline
    encodes it column by column, with no row built.

    >>> type(extract_batch({"instances": np.zeros((40, 3))})).__name__, extract_batch([1.0, 2.0])
    ('Columns', [[1.0, 2.0]])
    """
    if type(obj) is dict and len(obj) > 1:  # the common case, one plain row: no batch key, no table
        return [obj]
    if isinstance(obj, Mapping) and len(obj) == 1:
        (key, value), = obj.items()
        table = columns_of(value) if key in BATCH_KEYS else None
    else:
        table = columns_of(obj)
    return table if table is not None else extract_rows(obj)


def extract_predictions(obj: Any, n_rows: int, key: str | None = None,
                        class_names: Sequence[str] | None = None) -> list[dict[str, Any]] | Columns:
    """One ``{output name: value}`` dict per input row, from an endpoint's output.

    Scalars are named ``prediction``; probability vectors are named by ``class_names`` (or
    ``class_0``, ``class_1``, ...); a dict answer is read under ``key`` or the first
    conventional key present (``prediction``, ``predictions``, ``probabilities``, ...).

    >>> extract_predictions({"prediction": 0.8}, 1)
    [{'prediction': 0.8}]
    >>> extract_predictions([[0.1, 0.9], [0.7, 0.3]], 2, class_names=["ok", "fraud"])
    [{'ok': 0.1, 'fraud': 0.9}, {'ok': 0.7, 'fraud': 0.3}]
    """
    table = _prediction_columns(obj, n_rows, key, class_names)
    if table is not None:
        return table
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


def plain_answers(answers: Sequence[Any], key: str | None = None) -> list[dict[str, Any]] | None:
    """The predictions of calls that each answered one row with a plain dict holding a plain
    scalar under ``key``, or else under the same conventional key, read as
    :func:`extract_predictions` reads them one by one, in one pass; None when any answer needs
    that closer look (the pipeline's common batch: :func:`~mlmon_middleware.ingest.ingest`).

    >>> plain_answers([{"prediction": 0.2}, {"prediction": 1, "model": "a"}])
    [{'prediction': 0.2}, {'prediction': 1}]
    >>> plain_answers([{"prediction": 0.2}, {"score": 0.3}]) is None  # another key: one by one
    True
    """
    first = answers[0] if answers else None
    if type(first) is not dict:
        return None
    name = key if key is not None else next((k for k in PREDICTION_KEYS if k in first), None)
    if name is None:
        return None
    values = [answer.get(name) if type(answer) is dict else None for answer in answers]
    if not set(map(type, values)) <= _PLAIN_SCALARS:
        return None
    if key is None and name != PREDICTION_KEYS[0]:  # each answer's first conventional key must be this one
        earlier = PREDICTION_KEYS[:PREDICTION_KEYS.index(name)]
        if any(k in answer for answer in answers for k in earlier):
            return None
    return [{"prediction": value} for value in values]


def _prediction_columns(obj: Any, n_rows: int, key: str | None, class_names: Sequence[str] | None) -> Columns | None:
    """A batch's predictions given as one numpy array or pandas Series (n values, or n × k
    class probabilities; also under a response key), kept in columns with the names the rows
    would get; None for anything else."""
    if n_rows < 2:
        return None
    if isinstance(obj, Mapping):
        name = key if key is not None else next((k for k in PREDICTION_KEYS if k in obj), None)
        obj = obj.get(name) if name is not None else None
    if not isinstance(obj, np.ndarray) and callable(getattr(obj, "to_numpy", None)) and not hasattr(obj, "columns"):
        obj = obj.to_numpy()  # a pandas Series
    if not isinstance(obj, np.ndarray) or obj.ndim == 0 or obj.dtype.kind not in NUMBER_KINDS + "U" \
            or len(obj) != n_rows:
        return None
    if obj.ndim == 1:
        return Columns(["prediction"], [obj], n_rows)
    if obj.ndim != 2 or obj.shape[1] == 0:
        return None
    width = obj.shape[1]
    names = [str(c) for c in class_names] if class_names and len(class_names) == width \
        else [f"class_{i}" for i in range(width)]
    return Columns(names, [obj[:, j] for j in range(width)], n_rows)


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



class RawBody:
    """A request or response body as bytes, with its content type; ``None`` body when it was
    not captured (``skip_reason`` says why)."""

    __slots__ = ("body", "content_type", "skip_reason")

    def __init__(self, body: bytes | None, content_type: str = "", skip_reason: str = "") -> None:
        self.body = body
        self.content_type = content_type
        self.skip_reason = skip_reason


class CallArgs:
    """The positional and keyword arguments of a decorated call, with the parameter names
    in signature order, so the pipeline can pick the one that holds the features."""

    __slots__ = ("args", "kwargs", "names")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.names = names


def _json_content_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _looks_like_data(value: Any) -> bool:
    return (type(value) in (dict, list, tuple)
            or callable(getattr(value, "model_dump", None))
            or isinstance(value, (Mapping, list, tuple))
            or hasattr(value, "__array__"))


def input_argument(names: tuple[str, ...], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """The first argument, in signature order, that looks like data (a mapping, a sequence, a
    pydantic model, an array or a DataFrame), or None.

    >>> input_argument(("request", "tx"), ("GET",), {"tx": {"amount": 1}})
    'tx'
    """
    for i, name in enumerate((*names, *(k for k in kwargs if k not in names))):
        value = args[i] if i < len(args) else kwargs.get(name)
        if value is not None and not isinstance(value, (str, bytes)) and _looks_like_data(value):
            return name
    return None


def resolve_payload(payload: Any, arg: str | None = None) -> Any:
    """The plain object behind a captured payload.

    ``RawBody`` is parsed as JSON (only JSON content types); ``CallArgs`` yields the argument
    named ``arg``, or else the first argument that looks like data (a mapping, a sequence, a
    pydantic model, an array or a DataFrame). Anything else is returned as it is.
    """
    if isinstance(payload, RawBody):
        if payload.body is None:
            raise CaptureError(payload.skip_reason or "not_captured")
        if payload.content_type and not _json_content_type(payload.content_type):
            raise CaptureError("not_json", payload.content_type)
        if not payload.body.strip():
            raise CaptureError("empty_body")
        try:
            return orjson.loads(payload.body)
        except orjson.JSONDecodeError as exc:
            try:  # NaN and Infinity are not JSON, but Python clients send them: read them as values
                return json.loads(payload.body)
            except ValueError:
                raise CaptureError("invalid_json", str(exc)) from None
            except RecursionError:  # nested deeper than Python's parser goes (orjson stops at 1,024)
                raise CaptureError("too_deep", "JSON nested too deeply") from None
    if isinstance(payload, CallArgs):
        values = {**dict(zip(payload.names, payload.args)), **payload.kwargs} if payload.args else payload.kwargs
        if arg is not None:
            if arg not in values:
                raise CaptureError("missing_input", f"no argument {arg!r} in the call")
            return values[arg]
        name = input_argument(payload.names, payload.args, payload.kwargs)
        if name is not None:
            return values[name]
        scalars = {k: v for k, v in values.items() if isinstance(v, (numbers.Number, str)) and not isinstance(v, bool)}
        if scalars:  # an endpoint taking its features as separate scalar parameters
            return scalars
        raise CaptureError("missing_input", "no argument holds features; set input=")
    return payload
