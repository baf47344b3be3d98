"""Payloads as captured: references to what an endpoint saw, resolved later in the pipeline.

A :class:`~mlmon_middleware.model.Record` holds *references* to what the endpoint saw (its
call arguments as :class:`CallArgs`, or the raw request and response bodies as
:class:`RawBody`). Nothing is parsed, copied or validated on the request path;
:func:`resolve_payload` does that later, in the pipeline.

>>> payload = RawBody(b'{"x": 1.5}', "application/json")
>>> resolve_payload(payload)
{'x': 1.5}
>>> resolve_payload(CallArgs(("req",), {"tx": {"x": 2}}, ("request", "tx")))
{'x': 2}
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from typing import Any

import orjson

from mlmon_middleware.schema import CaptureError


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
