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

import datetime
import hmac
import logging
from collections.abc import Iterable

import orjson
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from mlmon_middleware import Endpoint, MLMonitorMiddleware, Monitor
from mlmon_middleware.monitor import LABEL_OUTCOMES
from mlmon_middleware.store import StoreError

logger = logging.getLogger("mlmon_middleware")

__all__ = ["instrument_app"]


def instrument_app(app: FastAPI, *, monitor: Monitor | None = None, endpoints: Iterable[Endpoint | dict] = (),
                   metrics_path: str | None = "/metrics", health_path: str | None = "/mlmon/health",
                   drift_path: str | None = "/mlmon/drift", feedback_path: str | None = "/mlmon/feedback",
                   performance_path: str | None = "/mlmon/performance",
                   max_body_bytes: int | None = None) -> Monitor:
    """Add :class:`MLMonitorMiddleware` and mount ``metrics_path`` (Prometheus text from mlmon's
    private registry), ``health_path`` (JSON), ``drift_path`` (the drift reports as JSON;
    ``?model=NAME`` for one model, ``?refresh=true`` to check now) and ``feedback_path``
    (ground-truth labels in, see :func:`_add_feedback_route`) on ``app``; returns the Monitor in use.

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

    if feedback_path:
        _add_feedback_route(app, mon, feedback_path)

    if performance_path:
        def performance(request: Request) -> Response:
            name = request.query_params.get("model")
            models = mon.models
            if name is not None and name not in models:
                return _json({"detail": f"no monitored model {name!r}; models: {sorted(models)}"}, status_code=404)
            refresh = request.query_params.get("refresh", "").lower() in ("1", "true", "yes")
            chosen = {name: models[name]} if name else models
            if refresh:
                for model in chosen.values():
                    model.check_now()
            return _json({n: m.performance_report() for n, m in chosen.items()})

        app.add_route(performance_path, performance, methods=["GET"], include_in_schema=False)

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


def _add_feedback_route(app: FastAPI, mon: Monitor, path: str) -> None:
    """``POST path`` with one ``{prediction_id, actual, timestamp?, model?}`` object or a list of
    them; ``timestamp`` is Unix seconds or ISO 8601 (default: now); ``model`` (or ``?model=``) may
    be left out when one model is monitored. Answers per item ``labelled``, ``relabelled`` or
    ``unknown``; 422 names what is wrong with a malformed body; 401 without the bearer token when
    ``api_token`` / ``MLMON_API_TOKEN`` is set (a warning at start-up when it is not)."""
    token = mon.config.api_token
    if not token:
        logger.warning("mlmon: %s accepts ground-truth labels from anyone: set MLMON_API_TOKEN to require "
                       "'Authorization: Bearer <token>'", path)

    def answer(body: bytes, authorization: str, query_model: str | None) -> Response:
        if token and not hmac.compare_digest(authorization, f"Bearer {token}"):
            return _json({"detail": "missing or wrong bearer token"}, status_code=401)
        try:
            items = _feedback_items(orjson.loads(body), query_model, mon)
        except FeedbackError as exc:
            return _json({"detail": str(exc)}, status_code=422)
        except orjson.JSONDecodeError as exc:
            return _json({"detail": f"body is not JSON: {exc}"}, status_code=422)
        try:
            answers = {name: mon.model(name).record_outcomes(group) for name, group in items.items()}
        except StoreError as exc:
            return _json({"detail": str(exc)}, status_code=409)
        results = [r for a in answers.values() for r in a["results"]]
        return _json({"results": results, **{k: sum(a[k] for a in answers.values()) for k in LABEL_OUTCOMES}})

    async def feedback(request: Request) -> Response:
        body = await request.body()
        # SQLite and the pipeline flush run in a worker thread, off the event loop
        return await run_in_threadpool(answer, body, request.headers.get("authorization", ""),
                                       request.query_params.get("model"))

    app.add_route(path, feedback, methods=["POST"], include_in_schema=False)


class FeedbackError(ValueError):
    """A feedback body that cannot be used; the message names the item and the field."""


def _feedback_items(payload: object, default_model: str | None, mon: Monitor) -> dict[str, list[tuple]]:
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise FeedbackError("no labels in the body")
    models = mon.models
    grouped: dict[str, list[tuple]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise FeedbackError(f"item {i}: expected an object with prediction_id and actual")
        pid, actual = item.get("prediction_id"), item.get("actual", _ABSENT)
        if not isinstance(pid, str) or not pid:
            raise FeedbackError(f"item {i}: prediction_id must be a non-empty string")
        if actual is _ABSENT:
            raise FeedbackError(f"item {i}: actual is missing")
        model = item.get("model") or default_model or (next(iter(models)) if len(models) == 1 else None)
        if model is None or model not in models:
            raise FeedbackError(f"item {i}: model {model!r} is not monitored here; models: {sorted(models)}")
        grouped.setdefault(model, []).append((pid, actual, _timestamp(item.get("timestamp"), i)))
    return grouped


_ABSENT = object()


def _timestamp(value: object, i: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)).timestamp()
    raise FeedbackError(f"item {i}: timestamp must be Unix seconds or ISO 8601, got {value!r}")
