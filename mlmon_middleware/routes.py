"""mlmon's HTTP routes as Starlette routes, shared by the adapters.

``routes(monitor)`` returns the routes the FastAPI adapter mounts on the app and the BentoML
adapter mounts under ``/mlmon``: the Prometheus text of the private registry, health, drift and
performance reports, alerts, ``POST feedback`` for ground-truth labels, logged predictions (with
their explanations) and the embedded dashboard page. Imported by adapters only (the core itself
speaks plain ASGI).

>>> from starlette.applications import Starlette
>>> from starlette.testclient import TestClient
>>> from mlmon_middleware import Monitor, MonitorConfig
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> _ = mon.model("iris").record({"petal_length": 1.4}, {"prediction": 0})
>>> with TestClient(Starlette(routes=routes(mon))) as client:
...     client.get("/mlmon/health").json()["models"]["iris"]["predictions"]
...     client.get("/mlmon/").headers["content-type"]
{'ok': 1, 'error': 0}
'text/html; charset=utf-8'
>>> mon.shutdown()
"""

from __future__ import annotations

import datetime
import functools
import hmac
import importlib.resources
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mlmon_middleware.model import ModelMonitor
from mlmon_middleware.monitor import Monitor
from mlmon_middleware.reports import LABEL_OUTCOMES
from mlmon_middleware.store import StoreError

logger = logging.getLogger("mlmon_middleware")

MAX_LISTED = 500  # predictions one GET /mlmon/predictions may return
Label = tuple[str, Any, float | None]  # (prediction id, actual, timestamp or None for now)


def routes(mon: Monitor, *, metrics: str | None = "/metrics", health: str | None = "/mlmon/health",
           drift: str | None = "/mlmon/drift", feedback: str | None = "/mlmon/feedback",
           performance: str | None = "/mlmon/performance", alerts: str | None = "/mlmon/alerts",
           predictions: str | None = "/mlmon/predictions", dashboard: str | None = "/mlmon/") -> list[Route]:
    """The routes, at the given paths (None leaves one out)."""
    out = []
    if metrics:
        def metrics_text(_: Request) -> Response:  # sync: runs in a worker thread (it flushes the pipeline)
            body, content_type = mon.telemetry.prometheus_text()
            return Response(body, media_type=content_type)

        out.append(Route(metrics, metrics_text, methods=["GET"], include_in_schema=False))
    if health:
        out.append(Route(health, lambda _: _json(mon.health()), methods=["GET"], include_in_schema=False))
    if feedback:
        out.append(_feedback_route(mon, feedback))
    if performance:
        out.append(Route(performance, _reports(mon, lambda m: m.performance_report()), methods=["GET"],
                         include_in_schema=False))
    if drift:
        out.append(Route(drift, _reports(mon, lambda m: m.drift_report()), methods=["GET"], include_in_schema=False))
    if alerts:
        out.append(Route(alerts, _reports(mon, lambda m: m.checker.alerts.summary()), methods=["GET"],
                         include_in_schema=False))
    if predictions:
        out += _prediction_routes(mon, predictions.rstrip("/"))
    if dashboard:
        out.append(Route(dashboard, lambda _: HTMLResponse(_dashboard_page()), methods=["GET"], include_in_schema=False))
    return out


@functools.cache
def _dashboard_page() -> str:
    """The embedded dashboard: one HTML file with its script and styles inline (no network)."""
    return importlib.resources.files("mlmon_middleware").joinpath("dashboard.html").read_text("utf-8")


def _reports(mon: Monitor, report: Callable[[ModelMonitor], object]) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        name = request.query_params.get("model")
        models = mon.models
        if name is not None and name not in models:
            return _unknown_model(name, models)
        chosen = {name: models[name]} if name else models
        if _flag(request, "refresh"):
            for model in chosen.values():
                model.check_now()
        return _json({n: report(m) for n, m in chosen.items()})

    return handler


def _unknown_model(name: str | None, models: Mapping[str, ModelMonitor]) -> Response:
    return _json({"detail": f"no monitored model {name!r}; models: {sorted(models)}"}, status_code=404)


def _authorized(token: str | None, request: Request) -> bool:
    return not token or hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}")


def _unauthorized() -> Response:
    return _json({"detail": "missing or wrong bearer token"}, status_code=401)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def _prediction_routes(mon: Monitor, path: str) -> list[Route]:
    """``GET path?model=&limit=&explained=``: the newest logged predictions, newest first;
    ``GET path/{prediction_id}?model=``: one, with its features, label and explanation (404 when
    not logged). Both read the prediction log (409 without one) and, like feedback, need the
    bearer token when ``api_token`` is set: the log holds the model's inputs."""
    token = mon.config.api_token

    def guarded(answer: Callable[[Request, ModelMonitor], Response]) -> Callable[[Request], Response]:
        """The token, the ``?model=`` (optional with one model) and the log's absence, once for both."""
        def handler(request: Request) -> Response:
            if not _authorized(token, request):
                return _unauthorized()
            name, models = request.query_params.get("model"), mon.models
            if not models:
                return _json({"detail": "no model is monitored here yet"}, status_code=404)
            if name is None and len(models) != 1:
                return _json({"detail": f"several models are monitored: add ?model= (one of {sorted(models)})"},
                             status_code=422)
            if name is not None and name not in models:
                return _unknown_model(name, models)
            try:
                return answer(request, models[name] if name is not None else next(iter(models.values())))
            except StoreError as exc:
                return _json({"detail": str(exc)}, status_code=409)

        return handler

    def listing(request: Request, model: ModelMonitor) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LISTED:
            return _json({"detail": f"limit must be an integer from 1 to {MAX_LISTED}"}, status_code=422)
        return _json({"model": model.name, "predictions": model.recent_predictions(limit, _flag(request, "explained"))})

    def one(request: Request, model: ModelMonitor) -> Response:
        pid = request.path_params["prediction_id"]
        found = model.lookup(pid)
        if found is None:
            return _json({"detail": f"prediction {pid!r} of model {model.name!r} is not in the prediction log"},
                         status_code=404)
        return _json(found)

    return [Route(path, guarded(listing), methods=["GET"], include_in_schema=False),
            Route(path + "/{prediction_id}", guarded(one), methods=["GET"], include_in_schema=False)]


def _json(payload: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
                    status_code=status_code, media_type="application/json")


def _feedback_route(mon: Monitor, path: str) -> Route:
    """``POST path`` with one ``{prediction_id, actual, timestamp?, model?}`` object or a list of
    them; ``timestamp`` is Unix seconds or ISO 8601 (default: now); ``model`` (or ``?model=``) may
    be left out when one model is monitored. Answers per item ``labelled``, ``relabelled`` or
    ``unknown``; 422 names what is wrong with a malformed body; 401 without the bearer token when
    ``api_token`` / ``MLMON_API_TOKEN`` is set (a warning at start-up when it is not)."""
    token = mon.config.api_token
    if not token:
        logger.warning("mlmon: %s accepts ground-truth labels from anyone: set MLMON_API_TOKEN to require "
                       "'Authorization: Bearer <token>'", path)

    def answer(body: bytes, query_model: str | None) -> Response:
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
        totals: dict[str, object] = {"results": [r for a in answers.values() for r in a["results"]]}
        for outcome in LABEL_OUTCOMES:
            totals[outcome] = sum(a[outcome] for a in answers.values())
        return _json(totals)

    async def feedback(request: Request) -> Response:
        if not _authorized(token, request):
            return _unauthorized()
        body = await request.body()
        # SQLite and the pipeline flush run in a worker thread, off the event loop
        return await run_in_threadpool(answer, body, request.query_params.get("model"))

    return Route(path, feedback, methods=["POST"], include_in_schema=False)


class FeedbackError(ValueError):
    """A feedback body that cannot be used; the message names the item and the field."""


def _feedback_items(payload: object, default_model: str | None, mon: Monitor) -> dict[str, list[Label]]:
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise FeedbackError("no labels in the body")
    models = mon.models
    grouped: dict[str, list[Label]] = {}
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
