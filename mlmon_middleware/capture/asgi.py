"""MLMonitorMiddleware: pure ASGI capture for any ASGI app (FastAPI, Starlette, plain ASGI).

It does two jobs. For every HTTP request it opens a :class:`RequestState` so that decorated
endpoints inside can hand their record to it; it then completes those records with the route
template and the status code actually sent, and adds the ``X-Prediction-ID`` header. For the
endpoints configured by path (apps without the decorator), it tees the request and response
bodies (up to ``max_body_bytes``) and records them as one inference; JSON is parsed later,
in the background pipeline.

It answers no path of its own: every request reaches the app, so it never hides a route of the
app (``/metrics`` included). A plain ASGI app has no route table to add mlmon's routes to: its
metrics are served on ``MLMON_PROMETHEUS_PORT``, or by ``mlmon_middleware.routes.routes(monitor)``
in a Starlette app the user mounts.

The middleware object holds only configuration; per-request state lives in a
``_Responder`` created per call (the shape of Starlette's GZipMiddleware). Every message
passes through in order and unchanged, except the added response header. Websockets,
lifespan and unmonitored paths go straight to the app; when the lifespan ends (the server is
stopping), monitoring is shut down: the queue and the log flushed, the workers stopped.

>>> import asyncio
>>> from mlmon_middleware import Monitor, MonitorConfig
>>> async def app(scope, receive, send):
...     await receive()
...     await send({"type": "http.response.start", "status": 200,
...                 "headers": [(b"content-type", b"application/json")]})
...     await send({"type": "http.response.body", "body": b'{"prediction": 0.5}'})
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> wrapped = MLMonitorMiddleware(app, registry=mon, endpoints=[Endpoint("/predict", model="toy")])
>>> sent = []
>>> async def receive():
...     return {"type": "http.request", "body": b'{"x": 1.0}', "more_body": False}
>>> async def send(message):
...     sent.append(message)
>>> scope = {"type": "http", "method": "POST", "path": "/predict",
...          "headers": [(b"content-type", b"application/json")]}
>>> asyncio.run(wrapped(scope, receive, send))
>>> any(k == b"x-prediction-id" for k, _ in sent[0]["headers"])
True
>>> mon.flush(); mon.model("toy").health()["predictions"]
{'ok': 1, 'error': 0}
>>> mon.shutdown()
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from mlmon_middleware.capture.context import RequestState, enter, leave
from mlmon_middleware.governance.gate import ModelNotApproved
from mlmon_middleware.ids import new_prediction_id
from mlmon_middleware.memory import freeze_startup
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.monitor import Monitor
from mlmon_middleware.options import ModelOptions
from mlmon_middleware.payload import RawBody

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREDICTION_HEADER = b"x-prediction-id"


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


def _path_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + r"\Z")


class MLMonitorMiddleware:
    """Pure ASGI middleware; see the module docstring.

    Parameters:
        app: the ASGI app to wrap.
        registry: the :class:`Monitor` to report to (default ``Monitor.get()``).
        endpoints: :class:`Endpoint` entries (or dicts of their fields) to capture by path.
        max_body_bytes: body size limit for capture (default: the monitor's config, 1 MiB).
    """

    def __init__(self, app: ASGIApp, registry: Monitor | None = None, endpoints: Iterable[Endpoint | Mapping[str, Any]] = (),
                 max_body_bytes: int | None = None) -> None:
        self.app = app
        self.registry = registry or Monitor.get()
        self.max_body_bytes = self.registry.config.max_body_bytes if max_body_bytes is None else max_body_bytes
        self._exact: dict[tuple[str, str], tuple[Endpoint, ModelMonitor]] = {}
        self._templates: list[tuple[re.Pattern[str], frozenset[str], Endpoint, ModelMonitor]] = []
        for ep in endpoints:
            ep = ep if isinstance(ep, Endpoint) else Endpoint(**ep)
            mm = self.registry.model(ep.model, ep.version, ep.options)
            methods = frozenset(m.upper() for m in ep.methods)
            if "{" in ep.path:
                self._templates.append((_path_regex(ep.path), methods, ep, mm))
            else:
                for method in methods:
                    self._exact[(method, ep.path)] = (ep, mm)

    def _match(self, scope: Scope) -> tuple[Endpoint, ModelMonitor] | None:
        method, path = scope.get("method", ""), scope.get("path", "")
        found = self._exact.get((method, path))
        if found is None and self._templates:
            for regex, methods, ep, mm in self._templates:
                if method in methods and regex.match(path):
                    return ep, mm
        return found

    def _lifespan_send(self, send: Send) -> Send:
        """``send`` for the app's lifespan. Before the server hears that the app has started,
        start this worker's monitoring (threads, exporters, metrics port): before any traffic,
        and after the app's own start-up, so that a tracer provider the app installs there is
        the one mlmon's spans go through; then, unless ``freeze_startup`` is off, freeze the
        objects of the start-up (:func:`~mlmon_middleware.memory.freeze_startup`: the garbage
        collector's full collections stop walking them). Before the server hears that the app
        has shut down, shut monitoring down: servers (uvicorn on SIGTERM) exit then without
        running atexit, so the queue and the log are written and the explanation workers stopped
        now, or they are lost and orphaned. In a thread: a log write being retried may take
        seconds, and the event loop still serves the other shutdowns meanwhile."""
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                # in a thread: starting opens the log and the registry, and may hash a model file
                await asyncio.to_thread(self._start_serving)
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await asyncio.to_thread(self.registry.shutdown)
            await send(message)

        return lifespan_send

    def _start_serving(self) -> None:
        self.registry.start()
        if self.registry.config.freeze_startup:
            freeze_startup()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # monitoring starts with the app (an app without lifespan: at its first record)
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self._match(scope) if (self._exact or self._templates) else None
        gate = self.registry.gate
        if endpoint is not None and gate.refused and (refusal := gate.refusal(endpoint[1].name)) is not None:
            await _refuse(send, refusal)  # enforce_approval: the endpoint is not called
            return
        # The request runs here rather than in a coroutine of the responder's: one coroutine
        # per request instead of two (each is a frame to build, start and tear down).
        responder = _Responder(self, scope, endpoint, send)
        if responder.request_tee is not None:
            receive = responder.wrap_receive(receive)
        token = enter(responder)
        try:
            await self.app(scope, receive, responder.monitored_send)
        except ModelNotApproved as refusal:  # a decorated endpoint refused (enforce_approval)
            if responder.status is not None:  # the app answered already: not ours to answer
                raise
            responder.finished = True  # nothing was served: no record
            await _refuse(send, refusal)
            return
        except BaseException as exc:
            responder.finish(exc)
            raise
        finally:
            leave(token)
        responder.finish(None)  # a response that never sent its last chunk still counts


async def _refuse(send: Send, refusal: ModelNotApproved) -> None:
    """Answer 503 with the refusal's JSON reason (docs/governance.md, "The serving gate")."""
    body = refusal.body()
    await send({"type": "http.response.start", "status": refusal.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _nothing() -> None:
    """What ``send`` returns for a message held back: nothing to wait for."""


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class _Tee:
    """Copies of the body chunks that pass by, up to a limit, or the reason there are none."""

    __slots__ = ("chunks", "size", "limit", "skip")

    def __init__(self, limit: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.chunks: list[bytes] | None = []
        self.size = 0
        self.limit = limit
        self.skip = ""
        length = _header(headers, b"content-length")
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


class _Responder(RequestState):
    """State of one HTTP request: the decorated records (it is the request's :class:`RequestState`,
    one object less per request), the tees, the status and timing; ``monitored_send`` is the
    app's ``send``."""

    __slots__ = ("mw", "endpoint", "start_ns", "wall_ns", "status", "request_tee",
                 "response_tee", "response_type", "endpoint_id", "held", "streamed", "send")

    def __init__(self, mw: MLMonitorMiddleware, scope: Scope, endpoint: tuple[Endpoint, ModelMonitor] | None,
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
        self.response_tee: _Tee | None = None
        self.response_type = ""
        self.held: list[Message] | None = None  # start and body, held while an explanation is computed
        self.streamed = False  # the response has no Content-Length: its latency runs to the last chunk
        if endpoint is None:  # only decorated calls to complete: no clocks, no tees
            self.request_tee = self.endpoint_id = None
        else:
            self.start_ns = time.perf_counter_ns()
            self.wall_ns = time.time_ns()
            self.request_tee = _Tee(mw.max_body_bytes, scope.get("headers") or ())
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
                return self._send_last(message)
            return self.send(message)
        if kind == "http.response.start":
            try:
                self.status = status = message["status"]
                pid = self.prediction_id or self.endpoint_id
                if pid is not None and status < 400:
                    message = {**message, "headers": [*message.get("headers", ()), (PREDICTION_HEADER, pid.encode())]}
                if self.endpoint is not None:
                    headers = message.get("headers") or ()
                    self.response_type = (_header(headers, b"content-type") or b"").decode("latin-1")
                    self.response_tee = _Tee(self.mw.max_body_bytes, headers)
            except Exception as exc:
                self.mw.registry.errors.report("capture", exc)
            # no Content-Length: a stream (chunked, server-sent events); its latency runs to the last chunk
            self.streamed = _header(message.get("headers") or (), b"content-length") is None
            if self.explanation is not None:
                if self.streamed:  # never held: a client's header must not make a stream wait for its end
                    message = self._unexplained_stream(message)
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
            return self._send_last(message)
        return self.send(message)

    async def _send_last(self, message: Message) -> None:
        """Send the response's last message, then complete the records: latency ends when it is sent."""
        await self.send(message)
        self.finish(None)

    def _unexplained_stream(self, start: Message) -> Message:
        """The start of a streaming response, saying it goes unexplained."""
        self.explanation.abandon("streaming")
        return {**start, "headers": [*start.get("headers", ()), (b"x-mlmon-explain-status", b"streaming")]}

    async def _send_explained(self) -> None:
        """Send the held response, explained (see ``PendingExplanation.respond``), then complete
        the records."""
        start, *bodies = self.held or [{}]
        for message in await self.explanation.respond(start, bodies):
            await self.send(message)
        self.finish(None)

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
        request_type = (_header(self.scope.get("headers") or (), b"content-type") or b"").decode("latin-1")
        # No response started means an error status, so the pipeline never reads this body.
        response = self.response_tee.raw(self.response_type) if self.response_tee else RawBody(None)
        duration = time.perf_counter_ns() - self.start_ns
        mm.submit(Record(mm, self.endpoint_id, self.wall_ns, duration, self.request_tee.raw(request_type),
                         response, endpoint.path, status, error_type, self.mw.registry.current_context()))
