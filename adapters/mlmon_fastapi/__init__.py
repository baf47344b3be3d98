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
                   drift_path: str | None = "/mlmon/drift", max_body_bytes: int | None = None) -> Monitor:
    """Add :class:`MLMonitorMiddleware` and mount ``metrics_path`` (Prometheus text from mlmon's
    private registry), ``health_path`` (JSON) and ``drift_path`` (the drift reports as JSON;
    ``?model=NAME`` for one model, ``?refresh=true`` to check now) on ``app``; returns the
    Monitor in use.

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
            return _json(mon.health())

        app.add_route(health_path, health, methods=["GET"], include_in_schema=False)

    if drift_path:
        def drift(request: Request) -> Response:
            refresh = request.query_params.get("refresh", "").lower() in ("1", "true", "yes")
            name = request.query_params.get("model")
            models = mon.models
            if name is not None and name not in models:
                return _json({"detail": f"no monitored model {name!r}; models: {sorted(models)}"}, status_code=404)
            chosen = {name: models[name]} if name else models
            return _json({n: m.check_now() if refresh else m.drift_report() for n, m in chosen.items()})

        app.add_route(drift_path, drift, methods=["GET"], include_in_schema=False)
    return mon


def _json(payload: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
                    status_code=status_code, media_type="application/json")
