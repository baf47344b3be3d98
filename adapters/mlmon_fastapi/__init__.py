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
>>> _ = instrument_app(app, monitor=mon)
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

from collections.abc import Iterable

from fastapi import FastAPI

from mlmon_middleware import Endpoint, MLMonitorMiddleware, Monitor
from mlmon_middleware.routes import routes

__all__ = ["instrument_app"]


def instrument_app(app: FastAPI, *, monitor: Monitor | None = None, endpoints: Iterable[Endpoint | dict] = (),
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
    ``@monitor``.
    """
    mon = monitor or Monitor.get()
    app.add_middleware(MLMonitorMiddleware, monitor=mon, endpoints=tuple(endpoints), max_body_bytes=max_body_bytes)
    for route in routes(mon, metrics=metrics_path, health=health_path, drift=drift_path, feedback=feedback_path,
                        performance=performance_path, alerts=alerts_path, predictions=predictions_path,
                        dashboard=dashboard_path):
        app.router.routes.append(route)
    return mon
