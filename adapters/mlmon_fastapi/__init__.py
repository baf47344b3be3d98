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

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from mlmon_middleware import Endpoint, MLMonitorMiddleware, Monitor

__all__ = ["instrument_app"]


def instrument_app(app: FastAPI, *, monitor: Monitor | None = None, endpoints: Iterable[Endpoint | dict] = (),
                   metrics_path: str | None = "/metrics", health_path: str | None = "/mlmon/health",
                   max_body_bytes: int | None = None) -> Monitor:
    """Add :class:`MLMonitorMiddleware` and mount ``metrics_path`` (Prometheus text from mlmon's
    private registry) and ``health_path`` (JSON) on ``app``; returns the Monitor in use.

    Call it before the app starts serving. Pass ``metrics_path=None`` when something else
    already serves ``/metrics`` (then use another path, or ``MLMON_PROMETHEUS_PORT``).
    ``endpoints`` configures capture by path for routes without ``@monitor``.
    """
    mon = monitor or Monitor.get()
    app.add_middleware(MLMonitorMiddleware, monitor=mon, endpoints=tuple(endpoints), max_body_bytes=max_body_bytes)

    if metrics_path:
        def metrics(_: Request) -> Response:  # sync: FastAPI runs it in a worker thread
            body, content_type = mon.telemetry.prometheus_text()
            return Response(body, media_type=content_type)

        app.add_route(metrics_path, metrics, methods=["GET"], include_in_schema=False)

    if health_path:
        def health(_: Request) -> Response:
            return Response(orjson.dumps(mon.health(), option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
                            media_type="application/json")

        app.add_route(health_path, health, methods=["GET"], include_in_schema=False)
    return mon
