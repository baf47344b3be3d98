"""mlmon's HTTP routes as Starlette routes, shared by the adapters.

``routes(monitor)`` returns the routes the FastAPI adapter mounts on the app and the BentoML
adapter mounts under ``/mlmon``: the Prometheus text of the private registry, health, drift and
performance reports, alerts, ``POST feedback`` for ground-truth labels, logged predictions (with
their explanations) and the embedded dashboard page. Imported by adapters only (the core itself
speaks plain ASGI and serves no path); the FastAPI adapter builds its metrics routes from
:func:`metrics_endpoint` itself, so that they give way to a route of the app at the same path.

The model registry's routes and ``POST alerts/{id}/ack`` are :mod:`~mlmon_middleware.routes_governance`'s.

Access (:class:`~mlmon_middleware.routes_access.Access`): the dashboard page and health's
status are open. Routes that *write* (feedback, ``?refresh=true`` checks, registry
steps, acknowledgements) need the bearer token ``api_token``; without
one they answer 403, unless ``allow_anonymous_writes`` is set. With a token, every route that
returns input-derived data (the metrics, reports, logged predictions, explanations, health's
details) needs it too, the metrics unless ``metrics_public``; without one they are open (a
service that sets no token publishes them to whoever reaches it).

>>> from starlette.applications import Starlette
>>> from starlette.testclient import TestClient
>>> from mlmon_middleware import Monitor, MonitorConfig
>>> mon = Monitor(MonitorConfig(tracing=False, api_token="s3cret"))
>>> _ = mon.model("iris").record({"petal_length": 1.4}, {"prediction": 0})
>>> with TestClient(Starlette(routes=routes(mon))) as client:
...     client.get("/mlmon/health").json()
...     client.get("/mlmon/drift").status_code
...     client.get("/mlmon/health", headers={"Authorization": "Bearer s3cret"}).json()["models"]["iris"]["predictions"]
...     client.get("/mlmon/").headers["content-type"]
...     client.get("/mlmon/metrics").status_code
{'status': 'ok', 'token_required': True}
401
{'ok': 1, 'error': 0}
'text/html; charset=utf-8'
401
>>> mon.shutdown()
"""

from __future__ import annotations

import datetime
import functools
import importlib.resources
import math
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mlmon_middleware.limits import MAX_FEEDBACK_ITEMS, MAX_LABEL_BYTES, MAX_NAME_CHARS
from mlmon_middleware.metrics import number_or_nan
from mlmon_middleware.model import ModelMonitor
from mlmon_middleware.monitor import Monitor
from mlmon_middleware.reports import LABEL_OUTCOMES
from mlmon_middleware.routes_access import Access, bounded_body, json_response, short
from mlmon_middleware.routes_governance import governance_routes
from mlmon_middleware.store import StoreBusy, StoreError

MAX_LISTED = 500  # predictions one GET /mlmon/predictions may return
Label = tuple[str, Any, float | None]  # (prediction id, actual, timestamp or None for now)


def routes(mon: Monitor, *, metrics: str | None = "/mlmon/metrics", health: str | None = "/mlmon/health",
           drift: str | None = "/mlmon/drift", feedback: str | None = "/mlmon/feedback",
           performance: str | None = "/mlmon/performance", alerts: str | None = "/mlmon/alerts",
           predictions: str | None = "/mlmon/predictions", dashboard: str | None = "/mlmon/",
           registry: str | None = "/mlmon/registry", mounted_at: str = "") -> list[Route]:
    """The routes, at the given paths (None leaves one out; ``registry`` and the alert
    acknowledgement under ``alerts`` are :mod:`~mlmon_middleware.routes_governance`'s);
    ``mounted_at``: the prefix of the app they are mounted in, for the paths that messages name."""
    access = Access(mon)
    out = []
    if metrics:
        out.append(Route(metrics, metrics_endpoint(mon), methods=["GET"], include_in_schema=False))
    if health:
        out.append(Route(health, _health(mon, access), methods=["GET"], include_in_schema=False))
    if feedback:
        out.append(_feedback_route(mon, access, feedback))
    if performance:
        out.append(Route(performance, _reports(mon, access, lambda m: m.performance_report()), methods=["GET"],
                         include_in_schema=False))
    if drift:
        out.append(Route(drift, _reports(mon, access, lambda m: m.drift_report()), methods=["GET"],
                         include_in_schema=False))
    if alerts:
        out.append(Route(alerts, _reports(mon, access, lambda m: m.checker.alerts.summary()), methods=["GET"],
                         include_in_schema=False))
    if predictions:
        out += _prediction_routes(mon, access, predictions.rstrip("/"))
    if registry or alerts:
        out += governance_routes(mon, access, registry.rstrip("/") if registry else None, alerts)
    if feedback and mon.store_location is not None:  # without a log, feedback takes nothing anyway
        access.announce(mounted_at + feedback)
    if dashboard:
        out.append(Route(dashboard, lambda _: HTMLResponse(_dashboard_page()), methods=["GET"], include_in_schema=False))
    return out


def metrics_endpoint(mon: Monitor) -> Callable[[Request], Response]:
    """The endpoint of ``GET metrics``: the Prometheus text of mlmon's private registry, or
    OpenMetrics (with exemplars linking to traces) when the scraper's ``Accept`` asks for it, as
    Prometheus does. Sync, so Starlette runs it in a worker thread: a scrape first flushes the
    pipeline. With ``api_token`` set it needs the token, as every route returning input-derived
    data does (inferred feature names, declared segment values), unless ``metrics_public``."""
    access = None if mon.config.metrics_public else Access(mon)

    def metrics_text(request: Request) -> Response:
        if access is not None:
            denied = access.read(request)
            if denied is not None:
                return denied
        body, content_type = mon.telemetry.prometheus_text(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return metrics_text


@functools.cache
def _dashboard_page() -> str:
    """The embedded dashboard: one HTML file with its script and styles inline (no network)."""
    return importlib.resources.files("mlmon_middleware").joinpath("dashboard.html").read_text("utf-8")


def _health(mon: Monitor, access: Access) -> Callable[[Request], Response]:
    """Health for a probe: the status only when a token is set and not sent; the details (without
    process internals) when no token is set; everything with the token."""
    def handler(request: Request) -> Response:
        if access.expected is None:
            return json_response(mon.health(private=False))
        if access.authorized(request):
            return json_response(mon.health(private=True))
        return json_response({"status": mon.status(), "token_required": True})

    return handler


def _reports(mon: Monitor, access: Access, report: Callable[[ModelMonitor], object]) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        denied = access.read(request)
        if denied is not None:
            return denied
        name = request.query_params.get("model")
        models = mon.models
        if name is not None and name not in models:
            return _unknown_model(name, models)
        chosen = {name: models[name]} if name else models
        headers = {}
        if _flag(request, "refresh"):
            denied = access.write(request, "?refresh=true (an on-demand check)")
            if denied is not None:
                return denied
            interval = mon.config.refresh_interval
            limited = [n for n, model in chosen.items() if not model.check_on_demand(interval)]
            if limited:
                mon.limits.hit("refresh_rate", f"on-demand checks of {limited} asked within {interval:g} s")
                headers = {"X-MLMon-Refresh": "limited", "Retry-After": str(max(1, round(interval)))}
        return json_response({n: report(m) for n, m in chosen.items()}, headers=headers)

    return handler


def _unavailable(mon: Monitor) -> tuple[type[BaseException], ...]:
    """What a route answers 503 (retry later) to: the log locked, failing or out of reach."""
    writer = mon.store_writer
    return (sqlite3.Error, StoreBusy, *(() if writer is None else writer.store.transient_errors))


def _unknown_model(name: str | None, models: Mapping[str, ModelMonitor]) -> Response:
    return json_response({"detail": f"no monitored model {short(name)}; models: {sorted(models)}"}, status_code=404)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def _prediction_routes(mon: Monitor, access: Access, path: str) -> list[Route]:
    """``GET path?model=&limit=&explained=``: the newest logged predictions, newest first;
    ``GET path/{prediction_id}?model=``: one, with its features, label and explanation (404 when
    not logged). Both read the prediction log (409 without one) and need the bearer token when
    ``api_token`` is set: the log holds the model's inputs."""

    def guarded(answer: Callable[[Request, ModelMonitor], Response]) -> Callable[[Request], Response]:
        """The token, the ``?model=`` (optional with one model) and the log's absence, once for both."""
        def handler(request: Request) -> Response:
            denied = access.read(request)
            if denied is not None:
                return denied
            name, models = request.query_params.get("model"), mon.models
            if not models:
                return json_response({"detail": "no model is monitored here yet"}, status_code=404)
            if name is None and len(models) != 1:
                return json_response({"detail": f"several models are monitored: add ?model= (one of {sorted(models)})"},
                                     status_code=422)
            if name is not None and name not in models:
                return _unknown_model(name, models)
            try:
                return answer(request, models[name] if name is not None else next(iter(models.values())))
            except StoreError as exc:
                return json_response({"detail": str(exc)}, status_code=409)
            except _unavailable(mon) as exc:  # a locked, failing or unreachable database: the caller may retry
                mon.errors.report("store", exc)
                return json_response({"detail": f"the prediction log is unavailable ({exc}); retry later"}, status_code=503,
                                     headers={"Retry-After": "1"})

        return handler

    def listing(request: Request, model: ModelMonitor) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LISTED:
            return json_response({"detail": f"limit must be an integer from 1 to {MAX_LISTED}"}, status_code=422)
        return json_response({"model": model.name, "predictions": model.recent_predictions(limit, _flag(request, "explained"))})

    def one(request: Request, model: ModelMonitor) -> Response:
        pid = request.path_params["prediction_id"]
        found = model.lookup(pid)
        if found is None:
            return json_response({"detail": f"prediction {short(pid)} of model {model.name!r} is not in the prediction log"},
                                 status_code=404)
        return json_response(found)

    return [Route(path, guarded(listing), methods=["GET"], include_in_schema=False),
            Route(path + "/{prediction_id}", guarded(one), methods=["GET"], include_in_schema=False)]


def _feedback_route(mon: Monitor, access: Access, path: str) -> Route:
    """``POST path`` with one ``{prediction_id, actual, timestamp?, model?}`` object or a list of
    them; ``timestamp`` is Unix seconds or ISO 8601 (default: now); ``model`` (or ``?model=``) may
    be left out when one model is monitored. Answers per item ``labelled``, ``relabelled`` or
    ``unknown``; 422 names what is wrong with a malformed body; 413 beyond ``max_feedback_bytes``;
    401/403 as :class:`Access` says; 503 when the log is busy (retry)."""
    limit = mon.config.max_feedback_bytes

    def answer(body: bytes, query_model: str | None) -> Response:
        try:
            items = _feedback_items(orjson.loads(body), query_model, mon)
        except FeedbackError as exc:
            return json_response({"detail": str(exc)}, status_code=422)
        except orjson.JSONDecodeError as exc:
            return json_response({"detail": f"body is not JSON: {exc}"}, status_code=422)
        try:
            answers = {name: mon.model(name).record_outcomes(group) for name, group in items.items()}
        except StoreError as exc:
            return json_response({"detail": str(exc)}, status_code=409)
        except _unavailable(mon) as exc:  # locked past the busy timeout, disk full, unreachable: nothing half-applied
            mon.errors.report("store", exc)
            return json_response({"detail": f"the prediction log could not take the labels ({exc}); retry later"},
                                 status_code=503, headers={"Retry-After": "1"})
        totals: dict[str, object] = {"results": [r for a in answers.values() for r in a["results"]]}
        for outcome in LABEL_OUTCOMES:
            totals[outcome] = sum(a[outcome] for a in answers.values())
        return json_response(totals)

    async def feedback(request: Request) -> Response:
        denied = access.write(request, f"POST {path} (ground-truth labels)")
        if denied is not None:
            return denied
        body = await bounded_body(request, limit)
        if body is None:
            mon.limits.hit("feedback_body", f"a feedback body over {limit} bytes refused")
            return json_response({"detail": f"the body is larger than max_feedback_bytes ({limit} bytes): send the labels "
                                            "in smaller batches"}, status_code=413)
        # SQLite and the pipeline flush run in a worker thread, off the event loop
        return await run_in_threadpool(answer, body, request.query_params.get("model"))

    return Route(path, feedback, methods=["POST"], include_in_schema=False)


class FeedbackError(ValueError):
    """A feedback body that cannot be used; the message names the item and the field."""


def _feedback_items(payload: object, default_model: str | None, mon: Monitor) -> dict[str, list[Label]]:
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise FeedbackError("no labels in the body")
    if len(items) > MAX_FEEDBACK_ITEMS:
        mon.limits.hit("feedback_items", f"{len(items)} labels in one body")
        raise FeedbackError(f"{len(items)} labels in one body; at most {MAX_FEEDBACK_ITEMS}: send smaller batches")
    models = mon.models
    grouped: dict[str, list[Label]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise FeedbackError(f"item {i}: expected an object with prediction_id and actual")
        pid, actual = item.get("prediction_id"), item.get("actual", _ABSENT)
        if not isinstance(pid, str) or not pid or len(pid) > MAX_NAME_CHARS:
            raise FeedbackError(f"item {i}: prediction_id must be a non-empty string of at most {MAX_NAME_CHARS} "
                                "characters")
        if actual is _ABSENT:
            raise FeedbackError(f"item {i}: actual is missing")
        if len(orjson.dumps(actual)) > MAX_LABEL_BYTES:
            mon.limits.hit("label_value", f"a label of over {MAX_LABEL_BYTES} bytes")
            raise FeedbackError(f"item {i}: actual is larger than {MAX_LABEL_BYTES} bytes as JSON")
        model = item.get("model") or default_model or (next(iter(models)) if len(models) == 1 else None)
        if not isinstance(model, str) or model not in models:
            raise FeedbackError(f"item {i}: model {short(model)} is not monitored here; models: {sorted(models)}")
        if models[model].options.performance_options.task == "regression" and not _finite_number(actual):
            raise FeedbackError(f"item {i}: actual must be a finite number for {model}'s regression task, "
                                f"got {short(actual)}")
        grouped.setdefault(model, []).append((pid, actual, _timestamp(item.get("timestamp"), i)))
    return grouped


_ABSENT = object()


def _finite_number(value: object) -> bool:
    """A label a regression can use: a finite number or text of one, not a boolean."""
    return not isinstance(value, bool) and math.isfinite(number_or_nan(value))


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
    raise FeedbackError(f"item {i}: timestamp must be Unix seconds or ISO 8601, got {short(value)}")
