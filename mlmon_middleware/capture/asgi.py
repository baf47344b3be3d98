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
:class:`~mlmon_middleware.capture.responder.Responder` created per call (the shape of
Starlette's GZipMiddleware). Every message
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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from mlmon_middleware.capture.context import enter, leave
from mlmon_middleware.capture.endpoint import Endpoint
from mlmon_middleware.capture.responder import Message, Receive, Responder, Scope, Send
from mlmon_middleware.governance.gate import ModelNotApproved
from mlmon_middleware.memory import freeze_startup
from mlmon_middleware.model import ModelMonitor
from mlmon_middleware.monitor import Monitor

__all__ = ["Endpoint", "MLMonitorMiddleware"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
        responder = Responder(self, scope, endpoint, send)
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
