"""The request/response side of explanations: whether a request asks for one (:func:`asked`),
starting one for a call (:func:`request`), and the pending explanation the middleware puts into
the response's JSON body, or names the reason there is none (:class:`PendingExplanation`).

>>> asked({"headers": [(b"x-mlmon-explain", b"true")]})
True
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from mlmon_middleware.explain import Explain, ExplainerOutput, ExplanationService
from mlmon_middleware.payload import extract_batch, resolve_payload
from mlmon_middleware.schema import FeatureSchema

Message = Mapping[str, Any]  # an ASGI message


def shown(explanation: dict[str, Any]) -> dict[str, Any]:
    """The explanation as the response and the prediction log carry it: the top contributions
    and the text, without the full vector."""
    return {k: v for k, v in explanation.items() if k != "contributions"}


class PendingExplanation:
    """An explanation requested for the current response: a running future, or the reason there
    is none (``busy``, ``error``)."""

    __slots__ = ("future", "status", "row", "service", "deadline", "started", "result", "names")

    def __init__(self, service: ExplanationService | None, row: np.ndarray | None,
                 future: concurrent.futures.Future[ExplainerOutput] | None, status: str = "ok",
                 names: Sequence[str] | None = None) -> None:
        self.service = service
        self.row = row
        self.future = future
        self.status = status
        self.names = names  # the row's features (the schema's numeric ones)
        self.started = time.monotonic()
        self.deadline = self.started + (service.spec.deadline if service is not None else 0.0)
        self.result: dict[str, Any] | None = None

    async def resolve(self) -> tuple[str, dict[str, Any] | None]:
        """Wait, without blocking the event loop, until the explanation is done or the deadline
        passes: ``(status, explanation or None)``."""
        if self.future is None or self.service is None or self.row is None:
            return self.status, None
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(self.future), max(0.0, self.deadline - time.monotonic()))
            self.result = self.service.describe(self.row, result, self.names)
            self.status = "ok"
        except (asyncio.TimeoutError, TimeoutError):
            self.status = "timeout"
        except Exception as exc:
            self.status = "error"
            self.service.failed(exc)
        return self.status, self.result

    def abandon(self, status: str) -> None:
        """Give the explanation up (the response streams): ``status`` says why."""
        self.status = status
        if self.future is not None:
            self.future.cancel()
            self.future = None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    async def respond(self, start: Message, bodies: Sequence[Message]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The held response (its start and body messages) with the explanation in its JSON body
        (Content-Length corrected), or as it was with ``X-MLMon-Explain-Status`` saying why not."""
        body = b"".join(m.get("body", b"") for m in bodies)
        status, explanation = await self.resolve()
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
        key = self.service.spec.key if self.service is not None else "explanation"
        if status == "ok" and explanation is not None:
            explained: bytes | None = None
            try:
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"").lower()
                explained = with_key(body, key, shown(explanation)) if b"json" in content_type else None
            except Exception:
                pass  # the answer goes out as the app made it, saying so
            if explained is None:
                status = self.status = "error"
            else:
                body = explained
        if status != "ok":
            headers.append((b"x-mlmon-explain-status", status.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        return {**start, "headers": headers}, {"type": "http.response.body", "body": body, "more_body": False}


MAX_EXPLAINED_BYTES = 1 << 20  # the largest JSON body an explanation is added to (read on the event loop)


def with_key(body: bytes, key: str, value: Any) -> bytes | None:
    """A JSON object ``body`` with ``key: value`` added, or None when it cannot be added as it
    is: not a JSON object, the key taken already, or over ``MAX_EXPLAINED_BYTES``. The app's own
    bytes stay as they were: the key is spliced in before the closing brace, so nothing is
    parsed and written again (integers past 64 bits, duplicate keys and the app's number formats
    survive).

    >>> with_key(b'{"id": 123456789012345678901234567890}', "why", [1]), with_key(b"{}", "why", 1)
    (b'{"id": 123456789012345678901234567890,"why":[1]}', b'{"why":1}')
    >>> with_key(b'[1]', "why", 1), with_key(b'{"why": 0}', "why", 1)
    (None, None)
    """
    if len(body) > MAX_EXPLAINED_BYTES:
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or key in payload:
        return None
    head = body.rstrip()[:-1]  # a JSON object's text ends with its closing brace
    return head + (b"," if payload else b"") + orjson.dumps(key) + b":" + orjson.dumps(value) + b"}"


def asked(scope: Mapping[str, Any] | None) -> bool | None:
    """What the request said about explaining: the ``X-MLMon-Explain`` header or ``?explain=``.

    >>> asked({"headers": [(b"x-mlmon-explain", b"true")]}), asked({"query_string": b"a=1&explain=0"}), asked(None)
    (True, False, None)
    """
    if not scope:
        return None
    for key, value in scope.get("headers") or ():
        if key == b"x-mlmon-explain":
            return value.strip().lower() in (b"1", b"true", b"yes")
    query = scope.get("query_string") or b""
    if b"explain=" in query:
        for part in query.split(b"&"):
            if part.startswith(b"explain="):
                return part[8:].lower() in (b"1", b"true", b"yes")
    return None


def request(spec: Explain, service: ExplanationService | None, scope: Mapping[str, Any] | None, inputs: Any, *,
            input_arg: str | None, schema: FeatureSchema | None, names: Sequence[str] | None) -> PendingExplanation | None:
    """Start explaining one call when it is wanted (asked for, sampled or always); None when
    not. The row is encoded here, on the request path but only for explained calls, because the
    worker needs it now (``schema``: the model's, else inferred with the declared ``names``)."""
    if not (spec.wanted(asked(scope)) or spec.sampled(random.random())):
        return None
    try:
        rows = extract_batch(resolve_payload(inputs, input_arg))
        schema = schema or FeatureSchema.infer(rows[:1], names=names)
        # the numeric features are what the explainer takes; categorical ones are left out
        row = schema.encode(rows[:1]).numeric[0]
    except Exception as exc:
        if service is not None:
            service.report(f"the row to explain could not be read: {type(exc).__name__}: {exc}", exc)
        return PendingExplanation(service, None, None, "error")
    if service is None:
        return PendingExplanation(None, row, None, "busy")
    future = service.submit(row)
    if isinstance(future, str):
        return PendingExplanation(service, row, None, future)
    return PendingExplanation(service, row, future, names=schema.numeric_names)
