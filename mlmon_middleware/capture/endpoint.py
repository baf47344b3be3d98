"""``Endpoint``: a path whose request and response bodies the middleware records as inferences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlmon_middleware.options import ModelOptions


class Endpoint:
    """A path whose JSON request and response bodies the middleware records as inferences.

    ``path`` may hold ``{name}`` segments (``/models/{name}/predict``); ``options`` are the
    model's (:class:`~mlmon_middleware.ModelOptions`: ``features``, ``baseline``, ``input``,
    ``prediction_key``, ...), where ``input`` and ``prediction_key`` point into the request and
    response JSON.

    >>> Endpoint("/score", "fraud", features=["amount"]).options.features
    ['amount']
    """

    __slots__ = ("path", "model", "version", "methods", "options")

    def __init__(self, path: str, model: str, version: str = "unknown", *, methods: Sequence[str] = ("POST",),
                 **options: Any) -> None:
        self.path = path
        self.model = model
        self.version = version
        self.methods = tuple(methods)
        self.options = ModelOptions.create(**options)

    def __repr__(self) -> str:
        return f"Endpoint({self.path!r}, {self.model!r}, {self.version!r}, methods={self.methods!r})"
