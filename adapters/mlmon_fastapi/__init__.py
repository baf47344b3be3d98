"""FastAPI adapter: ``instrument_app(app)`` adds mlmon's middleware and routes to an app.

mlmon's metrics are served at ``/mlmon/metrics`` and, by default, at ``/metrics`` too; neither
takes a path from the app. Starlette hands a request to the first route that matches it, and
mlmon's routes are added when ``instrument_app`` runs: a route the app adds later at the same
path (``Instrumentator().expose(app)``, ``app.mount("/metrics", make_asgi_app())``) would never
be reached. So mlmon's metrics routes look, when they match, for another route of the app that
takes the request (a route, a mounted app's route, a mount at exactly that path, or the same
path with or without its trailing slash, which Starlette redirects to); if there is one they
let it through, as if they were not there, and log a warning once naming both.

>>> from fastapi import FastAPI
>>> from mlmon_middleware import Monitor, MonitorConfig, monitor
>>> from mlmon_fastapi import instrument_app
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> app = FastAPI()
>>> @app.post("/predict")
... @monitor(model="iris", version="1.0", registry=mon)
... def predict(row: dict) -> dict:
...     return {"prediction": 1}
>>> _ = instrument_app(app, registry=mon)
>>> from starlette.testclient import TestClient
>>> with TestClient(app) as client:
...     response = client.post("/predict", json={"petal_length": 1.4})
...     len(response.headers["x-prediction-id"])
...     b"mlmon_predictions_total" in client.get("/metrics").content
...     client.get("/mlmon/metrics").content == client.get("/metrics").content
32
True
True
>>> mon.shutdown()
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from types import EllipsisType
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match, NoMatchFound, Route, Router
from starlette.types import Receive, Scope, Send

from mlmon_middleware import Endpoint, MLMonitorMiddleware, Monitor
from mlmon_middleware.routes import metrics_endpoint, routes

__all__ = ["METRICS_PATH", "instrument_app", "uninstrument_app"]

logger = logging.getLogger("mlmon_middleware")

METRICS_PATH = "/mlmon/metrics"  # where mlmon's metrics always are (unless metrics_path=None)


class _Instrumented:
    """What ``instrument_app`` added to an app, kept on ``app.state`` so it can be taken back."""

    def __init__(self, registry: Monitor, routes: list[BaseRoute]) -> None:
        self.registry = registry
        self.routes = routes


def instrument_app(app: FastAPI, *, registry: Monitor | None = None, endpoints: Iterable[Endpoint | Mapping[str, Any]] = (),
                   metrics_path: str | None | EllipsisType = ..., health_path: str | None = "/mlmon/health",
                   drift_path: str | None = "/mlmon/drift", feedback_path: str | None = "/mlmon/feedback",
                   performance_path: str | None = "/mlmon/performance", alerts_path: str | None = "/mlmon/alerts",
                   predictions_path: str | None = "/mlmon/predictions", dashboard_path: str | None = "/mlmon/",
                   max_body_bytes: int | None = None) -> Monitor:
    """Add :class:`MLMonitorMiddleware` and mount mlmon's routes on ``app``; returns the Monitor in use.

    ``metrics_path``: where mlmon's Prometheus text (from its private registry) is served besides
    :data:`METRICS_PATH` (``/mlmon/metrics``); by default the config's ``metrics_path``
    (``MLMON_METRICS_PATH``, ``/metrics``); None serves mlmon's metrics nowhere on the app. Both
    give way to a route of the app at the same path, added before or after this call, with a
    warning (see the module docstring). ``health_path``: JSON;
    ``drift_path``, ``performance_path`` and ``alerts_path``: the reports (``?model=NAME`` for one
    model, ``?refresh=true`` to check now); ``feedback_path``: ground-truth labels in;
    ``predictions_path``: logged predictions and their explanations; ``dashboard_path``: the
    embedded dashboard page (see :mod:`mlmon_middleware.routes`). The dashboard fetches the other
    routes by relative path, so keep them in its folder. None leaves a route out. Call it
    before the app starts serving. ``endpoints`` configures capture by path for routes without
    ``@monitor``. A second call on the same app changes nothing (it logs a warning and returns
    the Monitor of the first); :func:`uninstrument_app` takes it all back.
    """
    done = getattr(app.state, "mlmon", None)
    if isinstance(done, _Instrumented):
        logger.warning("mlmon: instrument_app() was already called on this app; the second call does nothing")
        return done.registry
    mon = registry or Monitor.get()
    app.add_middleware(MLMonitorMiddleware, registry=mon, endpoints=tuple(endpoints), max_body_bytes=max_body_bytes)
    path = mon.config.metrics_path if isinstance(metrics_path, EllipsisType) else metrics_path
    added: list[BaseRoute] = [_Grouped(_metrics_routes(mon, app.router, path),
                                       routes(mon, metrics=None, health=health_path, drift=drift_path,
                                              feedback=feedback_path, performance=performance_path, alerts=alerts_path,
                                              predictions=predictions_path, dashboard=dashboard_path))]
    # First in the table: an app's catch-all (a single-page app's /{path:path} fallback) must not
    # hide /mlmon/*; the metrics routes still give way to a route of the app at their exact path.
    app.router.routes[0:0] = added
    app.state.mlmon = _Instrumented(mon, added)
    return mon


def _metrics_routes(mon: Monitor, router: Router, path: str | None) -> list[_GivingWay]:
    """mlmon's metrics routes: at ``path`` and at :data:`METRICS_PATH` (one route when they are
    the same, none when ``path`` is None). A route the app already has at one of them gets its
    warning now; one added later, at the first request it takes."""
    if path is None:
        return []
    paths = list(dict.fromkeys((path, METRICS_PATH)))
    made = [_GivingWay(p, mon, router, instead=next((q for q in paths if q != p), None)) for p in paths]
    for route in made:
        route.taken({"type": "http", "method": "GET", "path": route.path, "root_path": "", "headers": []})
    return made


class _GivingWay(Route):
    """``GET path``: mlmon's metrics, unless another route of ``router`` takes the request, in
    which case this route does not match (see the module docstring). ``instead``: where else
    mlmon's metrics are, for the warning.

    >>> from starlette.applications import Starlette
    >>> from starlette.responses import PlainTextResponse
    >>> from mlmon_middleware import MonitorConfig
    >>> from starlette.testclient import TestClient
    >>> mon, app = Monitor(MonitorConfig(tracing=False)), Starlette()
    >>> ours = _GivingWay("/metrics", mon, app.router, instead=METRICS_PATH)
    >>> app.router.routes.append(ours)
    >>> TestClient(app).get("/metrics").headers["content-type"]  # ours, empty before any record
    'text/plain; version=1.0.0; charset=utf-8'
    >>> app.add_route("/metrics", lambda _: PlainTextResponse("theirs"))  # added later, after ours
    >>> TestClient(app).get("/metrics").text, ours.warned
    ('theirs', True)
    >>> mon.shutdown()
    """

    def __init__(self, path: str, mon: Monitor, router: Router, instead: str | None) -> None:
        super().__init__(path, metrics_endpoint(mon), methods=["GET"], include_in_schema=False)
        self.router = router
        self.instead = instead
        self.warned = False

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if not scope["path"].endswith(self.path):  # the cheap test first: every request may pass by here
            return Match.NONE, {}
        match, child_scope = super().matches(scope)
        if match is Match.FULL and self.taken(scope):
            return Match.NONE, {}
        return match, child_scope

    def taken(self, scope: Scope) -> bool:
        """Whether another route of the app takes this request, as it is or with its trailing
        slash toggled (Starlette redirects there when nothing matches); warns the first time."""
        scopes = [scope]
        if self.router.redirect_slashes:
            path = scope["path"]
            scopes.append({**scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"})
        for route in self.router.routes:
            if not isinstance(route, (_GivingWay, _Grouped)) and any(_takes(route, s, self.path) for s in scopes):
                if not self.warned:
                    self.warned = True
                    logger.warning("mlmon: %s answers GET %s, so mlmon leaves that path to it: %s", _describe(route),
                                   self.path, f"mlmon's metrics are served at {self.instead}" if self.instead else
                                   "mlmon's metrics are not served on this app (MLMON_PROMETHEUS_PORT serves them on a "
                                   "port of their own)")
                return True
        return False


class _Grouped(BaseRoute):
    """All of mlmon's routes as one entry at the head of the app's route table. Starlette tries
    every route before the one that matches, each at the cost of a Python call: sixteen of ours
    in front of the app's endpoint cost its every request 10–20 µs, and three (the two metrics
    routes beside this entry) still about 10,000 instructions, 3 µs (measured on the project's
    VM, in process, by cachegrind). A
    request passes this entry with two string tests unless its path ends with one of the
    ``metrics`` routes' paths or holds the other routes' common prefix (``/mlmon/``; each
    route's path taken up to its first parameter); those go to our routes in their order, the
    metrics routes first, as if they stood in the table themselves. (Suffix and substring
    tests, not prefix ones: under a ``root_path`` the path a route sees is a suffix of
    ``scope["path"]``. Routes configured at paths with nothing in common but ``/`` are tried
    one by one, as Starlette would.)

    The matched route becomes the request's ``scope["route"]`` (Starlette applies the child scope
    after setting its own), and ``path`` is the path of the route this entry matched last in
    the current thread (the common prefix before any): tools that name a request by the route
    table (OpenTelemetry's FastAPIInstrumentor, prometheus-fastapi-instrumentator) call
    ``matches`` and read ``path`` right after a match, so ``/mlmon/health`` keeps its own
    ``http.route``.

    >>> from starlette.applications import Starlette
    >>> from starlette.responses import PlainTextResponse
    >>> from starlette.testclient import TestClient
    >>> ours = _Grouped([], [Route("/mlmon/a/{x}", lambda r: PlainTextResponse(r.path_params["x"]), methods=["GET"])])
    >>> ours.matches({"type": "http", "path": "/predict", "method": "GET"})[0], ours.path
    (<Match.NONE: 0>, '/mlmon/a/')
    >>> ours.matches({"type": "http", "path": "/mlmon/a/1", "method": "GET"})[0], ours.path
    (<Match.FULL: 2>, '/mlmon/a/{x}')
    >>> client = TestClient(Starlette(routes=[ours]))
    >>> client.get("/mlmon/a/1").text, client.post("/mlmon/a/1").status_code, client.get("/mlmon/b").status_code
    ('1', 405, 404)
    """

    name = "mlmon"

    def __init__(self, metrics: list[_GivingWay], routes: list[Route]) -> None:
        self.routes: list[Route] = [*metrics, *routes]
        self.exact = tuple(route.path for route in metrics)  # metrics paths hold no parameter (config checks)
        # every path one of the other routes matches holds this; None: there are none
        self.prefix = os.path.commonprefix([r.path.partition("{")[0] for r in routes]) if routes else None
        self._first = self.prefix if self.prefix is not None else self.exact[0] if self.exact else ""
        self._matched = threading.local()  # .path: the path of the route this thread matched last

    @property
    def path(self) -> str:
        return getattr(self._matched, "path", self._first)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path = scope["path"]
        if not path.endswith(self.exact) and (self.prefix is None or self.prefix not in path):
            return Match.NONE, {}
        partial: tuple[Route, Scope] | None = None
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                self._matched.path = route.path
                return Match.FULL, {**child_scope, "route": route}
            if match is Match.PARTIAL and partial is None:  # the right path, another method
                partial = route, child_scope
        if partial is None:
            return Match.NONE, {}
        self._matched.path = partial[0].path
        return Match.PARTIAL, {**partial[1], "route": partial[0]}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["route"].handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                continue
        raise NoMatchFound(name, path_params)


def _takes(route: BaseRoute, scope: Scope, path: str) -> bool:
    """Whether ``route`` takes the request ``scope``: a full match of a route at exactly that
    path (one with path parameters, such as a single-page app's ``/{full_path:path}`` fallback,
    matches every path and claims none), except that a mount (or host) takes it only when a
    route of the app it holds does, or, for an app without a route table, when it is mounted at
    exactly ``path``: a catch-all ``app.mount("/", StaticFiles(...))`` does not hide mlmon's
    metrics either."""
    match, child_scope = route.matches(scope)
    if match is not Match.FULL:
        return False
    inner = getattr(route, "routes", None)
    if inner is None:
        return not getattr(route, "param_convertors", None)
    if not inner:
        return getattr(route, "path", None) == path.rstrip("/")
    return any(_takes(r, {**scope, **child_scope}, path) for r in inner)


def _describe(route: BaseRoute) -> str:
    """The app's route, as the warning names it: its kind, path and handler."""
    target = getattr(route, "endpoint", None) or getattr(route, "app", None)
    handler = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__qualname__)}"
    return f"the app's {type(route).__name__} {getattr(route, 'path', '')!r} ({handler})"


def uninstrument_app(app: FastAPI) -> None:
    """Remove what :func:`instrument_app` added: the middleware and mlmon's routes. The Monitor
    keeps running (``Monitor.shutdown()`` stops it); a call on an app that is not instrumented
    does nothing.

    >>> from mlmon_middleware import MonitorConfig
    >>> app = FastAPI()
    >>> _ = instrument_app(app, registry=Monitor(MonitorConfig(tracing=False)))
    >>> uninstrument_app(app)
    >>> [m for m in app.user_middleware if m.cls is MLMonitorMiddleware], getattr(app.state, "mlmon", None)
    ([], None)
    """
    done = getattr(app.state, "mlmon", None)
    if not isinstance(done, _Instrumented):
        return
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not MLMonitorMiddleware]  # type: ignore[comparison-overlap]
    ours = {id(route) for route in done.routes}
    app.router.routes[:] = [route for route in app.router.routes if id(route) not in ours]
    if app.middleware_stack is not None:  # already serving: rebuild the stack without us
        app.middleware_stack = app.build_middleware_stack()
    app.state.mlmon = None
