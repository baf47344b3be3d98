"""The state of one HTTP request the middleware serves, and the ``send`` it gives the app.

A :class:`Responder` is created per request by :class:`~mlmon_middleware.capture.asgi.MLMonitorMiddleware`
(the shape of Starlette's GZipMiddleware: the middleware object holds only configuration). It is
the request's :class:`~mlmon_middleware.capture.context.RequestState`, where decorated calls leave
their records; its :meth:`Responder.monitored_send` passes every message on in order, adds the
``X-Prediction-ID`` header, tees the response body of an endpoint captured by path (:class:`Tee`),
holds a response while its explanation is computed, and completes the records once the last
message is sent (:meth:`Responder.finish`).

>>> Tee(10, [(b"content-length", b"99")]).skip  # announced over the limit: not copied
'too_large'
>>> header([(b"Content-Type", b"text/plain")], b"content-type")
b'text/plain'
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol, TypeVar

from mlmon_middleware.capture.context import RequestState
from mlmon_middleware.capture.endpoint import Endpoint
from mlmon_middleware.ids import new_prediction_id
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.monitor import Monitor
from mlmon_middleware.payload import RawBody

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREDICTION_HEADER = b"x-prediction-id"


class Middleware(Protocol):
    """What a responder needs of its middleware."""

    registry: Monitor
    max_body_bytes: int


async def _nothing() -> None:
    """What ``send`` returns for a message held back: nothing to wait for."""


_SendMethod = TypeVar("_SendMethod", bound=Callable[..., Awaitable[None]])


def _marked_async(method: _SendMethod) -> _SendMethod:
    """Mark a plain function that returns an awaitable as a coroutine function, for code that
    asks whether its ``send`` is one before awaiting it (asgiref's ``AsyncToSync``, which a WSGI
    app under ``WsgiToAsgi`` and Channels' sync consumers go through, warns otherwise; a warning
    made an error fails the request): ``inspect.markcoroutinefunction`` from Python 3.12,
    before it the mark ``asyncio.iscoroutinefunction`` looks for."""
    if hasattr(inspect, "markcoroutinefunction"):
        return inspect.markcoroutinefunction(method)  # type: ignore[no-any-return]
    setattr(method, "_is_coroutine", getattr(asyncio.coroutines, "_is_coroutine"))  # noqa: B009, B010
    return method


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the ASGI header ``name`` (lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class Tee:
    """Copies of the body chunks that pass by, up to a limit, or the reason there are none."""

    __slots__ = ("chunks", "size", "limit", "skip")

    def __init__(self, limit: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.chunks: list[bytes] | None = []
        self.size = 0
        self.limit = limit
        self.skip = ""
        length = header(headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._stop("too_large")

    def _stop(self, reason: str) -> None:
        self.chunks = None
        self.skip = reason

    def add(self, body: bytes) -> None:
        if self.chunks is None or not body:
            return
        self.size += len(body)
        if self.size > self.limit:
            self._stop("too_large")
        else:
            self.chunks.append(body)

    def raw(self, content_type: str) -> RawBody:
        body = None if self.chunks is None else b"".join(self.chunks)
        return RawBody(body, content_type, self.skip)


class Responder(RequestState):
    """State of one HTTP request: the decorated records (it is the request's :class:`RequestState`,
    one object less per request), the tees, the status and timing; ``monitored_send`` is the
    app's ``send``."""

    __slots__ = ("mw", "endpoint", "start_ns", "wall_ns", "status", "request_tee",
                 "response_tee", "response_type", "endpoint_id", "held", "streamed", "send")

    def __init__(self, mw: Middleware, scope: Scope, endpoint: tuple[Endpoint, ModelMonitor] | None,
                 send: Send) -> None:
        # RequestState's fields set here, not by a call of its __init__: one call less per request
        self.records: list[Record] = []
        self.prediction_id: str | None = None
        self.finished = False
        self.scope = scope
        self.explanation: Any = None
        self.send = send
        self.mw = mw
        self.endpoint = endpoint
        self.status: int | None = None
        self.response_tee: Tee | None = None
        self.response_type = ""
        self.held: list[Message] | None = None  # start and body, held while an explanation is computed
        self.streamed = False  # the response has no Content-Length: its latency runs to the last chunk
        if endpoint is None:  # only decorated calls to complete: no clocks, no tees
            self.request_tee = self.endpoint_id = None
        else:
            self.start_ns = time.perf_counter_ns()
            self.wall_ns = time.time_ns()
            self.request_tee = Tee(mw.max_body_bytes, scope.get("headers") or ())
            self.endpoint_id = new_prediction_id()

    def wrap_receive(self, receive: Receive) -> Receive:
        tee = self.request_tee
        assert tee is not None  # only called when the endpoint's body is teed

        async def tee_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                try:
                    tee.add(message.get("body", b""))
                except Exception as exc:
                    self.mw.registry.errors.report("capture", exc)
            return message

        return tee_receive

    @_marked_async
    def monitored_send(self, message: Message) -> Awaitable[None]:
        """The app's ``send``: passes every message on in order (a bound method: no closure to
        build per request). A plain function that returns what to await: the server's own
        ``send`` for a message that needs nothing after it is sent (no coroutine of ours to
        build and run per message), else a coroutine of ours. A body chunk not held for an
        explanation, the most frequent message, is tested for first."""
        kind = message["type"]
        if kind == "http.response.body" and self.held is None:
            if self.response_tee is not None:
                self.response_tee.add(message.get("body", b""))
            if not message.get("more_body", False):
                return self._send_then_finish((message,))
            return self.send(message)
        if kind == "http.response.start":
            try:
                self.status = status = message["status"]
                pid = self.prediction_id or self.endpoint_id
                if pid is not None and status < 400:
                    message = {**message, "headers": [*message.get("headers", ()), (PREDICTION_HEADER, pid.encode())]}
                if self.endpoint is not None:
                    headers = message.get("headers") or ()
                    self.response_type = (header(headers, b"content-type") or b"").decode("latin-1")
                    self.response_tee = Tee(self.mw.max_body_bytes, headers)
            except Exception as exc:
                self.mw.registry.errors.report("capture", exc)
            # no Content-Length: a stream (chunked, server-sent events); its latency runs to the last chunk
            self.streamed = header(message.get("headers") or (), b"content-length") is None
            if self.explanation is not None:
                if self.streamed:  # never held: a client's header must not make a stream wait for its end
                    message = self._unexplained(message, "streaming")
                else:
                    self.held = [message]  # the body may change: hold it all until explained
                    return _nothing()
        elif kind == "http.response.body":  # held: the response waits for its explanation
            assert self.held is not None
            self.held.append(message)
            if not message.get("more_body", False):
                return self._send_explained()
            return _nothing()
        elif kind == "http.response.pathsend":
            if self.held is not None:  # a file sent by its path: no body to put the explanation in
                start, *bodies = self.held
                self.held = None
                return self._send_then_finish((self._unexplained(start, "file"), *bodies, message))
            return self._send_then_finish((message,))
        return self.send(message)

    async def _send_then_finish(self, messages: Iterable[Message]) -> None:
        """Send the response's last messages, then complete the records: latency ends when they are sent."""
        for message in messages:
            await self.send(message)
        self.finish(None)

    def _unexplained(self, start: Message, why: str) -> Message:
        """The start of a response that goes unexplained (``why``: ``streaming``, ``file``), saying so."""
        self.explanation.abandon(why)
        return {**start, "headers": [*start.get("headers", ()), (b"x-mlmon-explain-status", why.encode())]}

    async def _send_explained(self) -> None:
        """Send the held response, explained (see ``PendingExplanation.respond``), then complete
        the records."""
        start, *bodies = self.held or [{}]
        await self._send_then_finish(await self.explanation.respond(start, bodies))

    def finish(self, exc: BaseException | None) -> None:
        """Complete and submit this request's records once (never raises)."""
        if self.finished:
            return
        self.finished = True
        if not self.records and self.endpoint is None:
            return  # no monitored call served this request: nothing to complete
        try:
            status = self.status if self.status is not None else 500
            error_type = None if exc is None else type(exc).__qualname__
            route = getattr(self.scope.get("route"), "path", "") or ""
            now_ns = time.time_ns()
            for record in self.records:
                if self.streamed:  # the call returned a stream: it lasted until the last chunk went out
                    record.duration_ns = max(record.duration_ns, now_ns - record.wall_ns)
                record.route = record.route or route
                record.status_code = status
                record.error_type = record.error_type or error_type
                record.model.submit(record)
            if self.endpoint is not None and not self.records:
                self._submit_endpoint(status, error_type)
        except Exception as error:
            self.mw.registry.errors.report("capture", error)

    def _submit_endpoint(self, status: int, error_type: str | None) -> None:
        assert self.endpoint is not None and self.request_tee is not None and self.endpoint_id is not None
        endpoint, mm = self.endpoint
        request_type = (header(self.scope.get("headers") or (), b"content-type") or b"").decode("latin-1")
        # No response started means an error status, so the pipeline never reads this body.
        response = self.response_tee.raw(self.response_type) if self.response_tee else RawBody(None)
        duration = time.perf_counter_ns() - self.start_ns
        mm.submit(Record(mm, self.endpoint_id, self.wall_ns, duration, self.request_tee.raw(request_type),
                         response, endpoint.path, status, error_type,
                         self.mw.registry.current_context() if self.mw.registry.traced else None))
