"""The per-request state shared by the middleware and the decorator.

The middleware sets a fresh :class:`RequestState` in a context variable for each HTTP
request; a decorated endpoint running inside it (in the same task, or in a worker thread
that copied the context) appends its record there instead of submitting it, so the
middleware can complete the record with the route template and the real status code and
put the prediction id in the ``X-Prediction-ID`` response header. The state is a mutable
object precisely so that writes from a copied context (sync endpoints run in a thread
pool) are seen by the middleware.

>>> state = RequestState()
>>> token = current_request.set(state)
>>> current_request.get() is state
True
>>> current_request.reset(token)
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any


class RequestState:
    """What decorated calls left for the middleware during one request."""

    __slots__ = ("records", "prediction_id", "finished", "scope", "explanation")

    def __init__(self, scope: Any = None) -> None:
        self.records: list[Any] = []
        self.prediction_id: str | None = None
        self.finished = False
        self.scope = scope  # the request's ASGI scope: headers and query for explanation requests
        self.explanation: Any = None  # a PendingExplanation when the response should carry one


current_request: ContextVar[RequestState | None] = ContextVar("mlmon_request", default=None)


def current_prediction_id() -> str | None:
    """The prediction id of the monitored call made in the current request, if any."""
    state = current_request.get()
    return None if state is None else state.prediction_id
