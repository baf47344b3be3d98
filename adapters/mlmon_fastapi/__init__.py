"""FastAPI adapter: ``instrument_app(app)`` adds mlmon's middleware and routes to an app.

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
32
True
>>> mon.shutdown()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.routing import BaseRoute

from mlmon_middleware import Endpoint, MLMonitorMiddleware, Monitor
from mlmon_middleware.routes import routes

__all__ = ["instrument_app", "uninstrument_app"]

logger = logging.getLogger("mlmon_middleware")


class _Instrumented:
    """What ``instrument_app`` added to an app, kept on ``app.state`` so it can be taken back."""

    def __init__(self, registry: Monitor, routes: list[BaseRoute]) -> None:
        self.registry = registry
        self.routes = routes


def instrument_app(app: FastAPI, *, registry: Monitor | None = None, endpoints: Iterable[Endpoint | Mapping[str, Any]] = (),
                   metrics_path: str | None = "/metrics", health_path: str | None = "/mlmon/health",
                   drift_path: str | None = "/mlmon/drift", feedback_path: str | None = "/mlmon/feedback",
                   performance_path: str | None = "/mlmon/performance", alerts_path: str | None = "/mlmon/alerts",
                   predictions_path: str | None = "/mlmon/predictions", dashboard_path: str | None = "/mlmon/",
                   max_body_bytes: int | None = None) -> Monitor:
    """Add :class:`MLMonitorMiddleware` and mount mlmon's routes on ``app``; returns the Monitor in use.

    ``metrics_path``: Prometheus text from mlmon's private registry; ``health_path``: JSON;
    ``drift_path``, ``performance_path`` and ``alerts_path``: the reports (``?model=NAME`` for one
    model, ``?refresh=true`` to check now); ``feedback_path``: ground-truth labels in;
    ``predictions_path``: logged predictions and their explanations; ``dashboard_path``: the
    embedded dashboard page (see :mod:`mlmon_middleware.routes`). The dashboard fetches the other
    routes by relative path, so keep them in its folder. None leaves a route out, for instance when something else
    already serves ``/metrics`` (then use another path, or ``MLMON_PROMETHEUS_PORT``). Call it
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
    added: list[BaseRoute] = list(routes(mon, metrics=metrics_path, health=health_path, drift=drift_path,
                                         feedback=feedback_path, performance=performance_path, alerts=alerts_path,
                                         predictions=predictions_path, dashboard=dashboard_path))
    app.router.routes.extend(added)
    app.state.mlmon = _Instrumented(mon, added)
    return mon


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
