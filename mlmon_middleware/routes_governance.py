"""The governance routes: the model registry under ``/mlmon/registry`` and alert acknowledgement.

The registry is the one in the monitor's prediction log (``store_dir``'s ``predictions.sqlite``
or ``store_url``), opened at the first call (one connection per process, like the CLI's
``--store``); without a prediction log every registry route answers 503 saying so.

* ``GET /mlmon/registry[?model=]``: the versions; ``GET /mlmon/registry/{model}``: a model's
  versions, policy and deployed version; ``GET /mlmon/registry/{model}/{version}``: one version.
  Every registry route, reads included, needs the API token, and is off (403) on a service that
  has none: they reveal model metadata and change what may be served.
* ``POST /mlmon/registry`` registers a version (``name``, ``version``, ``actor``, ``metrics``,
  ``artifact_sha256``, optional ``group_metrics``, ``baseline_sha256``, ``facts``);
  ``POST /mlmon/registry/{model}/{version}/{submit|approve|reject|deploy|retire}`` and
  ``POST /mlmon/registry/{model}/rollback`` take ``{"actor", "reason"}``. Writes need what the
  other writing routes need (:class:`~mlmon_middleware.routes_access.Access`). The actor is a
  claim: whoever holds the token may give any name.
* ``GET /mlmon/card?model=&version=&format=html|md``: the model card
  (:func:`~mlmon_middleware.governance.card.render_card`: the registry's facts and this
  service's live monitoring); like the registry's, only with the API token.
* ``POST /mlmon/alerts/{id}/ack`` with an optional ``{"actor", "note"}``: acknowledges a firing
  (or recent) alert of this process's alert state and appends ``alert_acknowledged`` to the audit
  log when there is a prediction log; an alert this process never saw (another replica raised
  it) is found among the log's ``alert_fired`` events of the last 30 days and acknowledged there
  (every process reads it back at its next round).

Answers: 400 for a malformed body or a refusal (``FourEyesViolation``, ``MissingMetrics``,
...), 404 for an unknown version or alert, 409 for a step the state does not allow
(``InvalidTransition``, ``ApprovalRequired``) or a version registered already, 413 for a body
over :data:`~mlmon_middleware.limits.MAX_GOVERNANCE_BYTES` (counted as
``limit="governance_body"``), 503 without a prediction log or when its database fails.
Database work runs in a worker thread (the audit log's append takes an exclusive lock).

>>> from starlette.applications import Starlette
>>> from starlette.testclient import TestClient
>>> from mlmon_middleware import Monitor, MonitorConfig
>>> from mlmon_middleware.routes_access import Access
>>> mon = Monitor(MonitorConfig(tracing=False, api_token="s3cret"))
>>> token = {"Authorization": "Bearer s3cret"}
>>> with TestClient(Starlette(routes=governance_routes(mon, Access(mon)))) as client:
...     client.get("/mlmon/registry", headers=token).status_code  # no prediction log, so no registry
...     client.post("/mlmon/alerts/0123456789abcdef/ack", json={"actor": "ana"}, headers=token).status_code
503
404
>>> mon.shutdown()
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlmon_middleware.governance import (
    ChainBroken,
    GovernanceError,
    InvalidTransition,
    ModelRegistry,
    UnknownVersion,
    VersionExists,
)
from mlmon_middleware.governance.attention import find_fired
from mlmon_middleware.governance.audit import check_text
from mlmon_middleware.governance.card import render_card
from mlmon_middleware.governance.registry import MAX_REASON
from mlmon_middleware.limits import MAX_GOVERNANCE_BYTES
from mlmon_middleware.monitor import Monitor
from mlmon_middleware.routes_access import Access, bounded_body, json_response, short
from mlmon_middleware.store import StoreError

REGISTER_FIELDS = ("name", "version", "actor", "metrics", "artifact_sha256", "group_metrics", "baseline_sha256", "facts")
STEP_FIELDS = ("actor", "reason")
ACK_FIELDS = ("actor", "note")
STEPS = ("submit", "approve", "reject", "deploy", "retire")
Body = dict[str, Any]


class Governance:
    """The registry of ``mon``'s prediction log, opened at first use and kept for the process."""

    def __init__(self, mon: Monitor) -> None:
        self.location = mon.store_location
        self._lock = threading.Lock()
        self._registry: ModelRegistry | None = None

    def registry(self) -> ModelRegistry:
        """The registry (raises :class:`StoreError` when its database cannot be opened)."""
        with self._lock:
            if self._registry is None:
                self._registry = ModelRegistry(self.location)
            return self._registry


class BadBody(ValueError):
    """A body that cannot be used; the message says why."""


class UnknownAlert(LookupError):
    """No firing or recent alert has the id acknowledged."""


def governance_routes(mon: Monitor, access: Access, registry: str | None = "/mlmon/registry",
                      alerts: str | None = "/mlmon/alerts") -> list[Route]:
    """The registry routes under ``registry`` and ``POST {alerts}/{id}/ack`` (None leaves either out)."""
    gov = Governance(mon)

    def endpoint(write: str | None, answer: Callable[[Request, Body], Response], fields: tuple[str, ...] = (),
                 registry_only: bool = True) -> Callable[[Request], Any]:
        """A route: the token (``write`` names the step for a refusal, None for a read), the
        bounded body (writes), the registry's presence (``registry_only``), then ``answer`` in a
        worker thread, its errors mapped to statuses."""
        async def handler(request: Request) -> Response:
            if registry_only and access.expected is None:  # the registry and the card: never without a token
                return json_response({"detail": "the model registry and the model card need an API token: set "
                                                "MLMON_API_TOKEN (or MonitorConfig(api_token=...)) and send "
                                                "'Authorization: Bearer <token>'"}, status_code=403)
            denied = access.read(request) if write is None else access.write(request, write)
            if denied is not None:
                return denied
            body: Body = {}
            if write is not None:
                raw = await bounded_body(request, MAX_GOVERNANCE_BYTES)
                if raw is None:
                    mon.limits.hit("governance_body", f"a body over {MAX_GOVERNANCE_BYTES} bytes to {request.url.path}")
                    return json_response({"detail": f"the body is larger than {MAX_GOVERNANCE_BYTES} bytes"},
                                         status_code=413)
                try:
                    body = _object(raw, fields)
                except BadBody as exc:
                    return json_response({"detail": str(exc)}, status_code=400)
            if gov.location is None and registry_only:
                return json_response({"detail": "no model registry here: the registry lives in the prediction log's "
                                                "database, and this service has none (set MLMON_STORE_DIR or "
                                                "MLMON_STORE_URL)"}, status_code=503)
            return await run_in_threadpool(_answered, mon, answer, request, body)

        return handler

    def listing(request: Request, _: Body) -> Response:
        versions = gov.registry().list_versions(request.query_params.get("model"))
        return json_response({"versions": [v.to_json() for v in versions]})

    def model(request: Request, _: Body) -> Response:
        name = request.path_params["model"]
        reg = gov.registry()
        versions = reg.list_versions(name)
        if not versions:
            raise UnknownVersion(f"model {short(name)} has no registered version")
        policy, deployed = reg.policy(name), reg.deployed_version(name)
        return json_response({"model": name, "versions": [v.to_json() for v in versions],
                              "deployed": None if deployed is None else deployed.version,
                              "policy": {"required_metrics": list(policy.required_metrics),
                                         "approval_required": policy.approval_required}})

    def version(request: Request, _: Body) -> Response:
        return json_response(gov.registry().get_version(request.path_params["model"], request.path_params["version"])
                             .to_json())

    def register(_: Request, body: Body) -> Response:
        if "name" not in body or "version" not in body:
            raise BadBody("a registration needs name and version")
        registered = gov.registry().register_model(
            body["name"], body["version"], None, body.get("metrics"), _actor(body),
            artifact_sha256=body.get("artifact_sha256"), group_metrics=body.get("group_metrics"),
            baseline_sha256=body.get("baseline_sha256"), facts=_mapping(body.get("facts"), "facts"))
        return json_response(registered.to_json(), status_code=201)

    def step(request: Request, body: Body) -> Response:
        reg, name, ver = gov.registry(), request.path_params["model"], request.path_params["version"]
        actor, reason = _actor(body), _reason(body.get("reason"))
        if request.path_params["step"] == "approve" and not reason.strip():  # over HTTP, an approval says why
            raise BadBody("a reason is required to approve: say why, in the body's \"reason\"")
        done = {"submit": lambda: reg.submit_for_review(name, ver, actor),
                "approve": lambda: reg.approve_model(name, ver, actor, reason),
                "reject": lambda: reg.reject_model(name, ver, actor, reason),
                "deploy": lambda: reg.deploy_model(name, ver, actor),
                "retire": lambda: reg.retire_model(name, ver, actor, reason)}[request.path_params["step"]]()
        return json_response(done.to_json())

    def rollback(request: Request, body: Body) -> Response:
        done = gov.registry().rollback_model(request.path_params["model"], _actor(body), _reason(body.get("reason")))
        return json_response(done.to_json())

    def acknowledge(request: Request, body: Body) -> Response:
        alert_id, only = request.path_params["alert_id"], request.query_params.get("model")
        actor = check_text(body.get("actor", "anonymous"), "actor") or ""
        note = _reason(body.get("note"))
        for name, monitored in mon.models.items():
            alert_state = monitored.checker.alerts
            ack = alert_state.acknowledge(alert_id, actor, note) if only in (None, name) else None
            if ack is None:
                continue
            seq = None  # a failing append answers 503 with the acknowledgement kept here: a retry appends it
            if gov.location is not None:  # the shared record: every worker's and replica's acknowledgements
                seq = gov.registry().audit.append("alert_acknowledged", actor, name, alert_state.version,
                                                  {k: v for k, v in ack.items() if k not in ("actor", "time")}).seq
            return json_response({"model": name, "acknowledged": ack, "audit_seq": seq})
        fired = None if gov.location is None else find_fired(gov.registry().audit, alert_id,
                                                              [n for n in mon.models if only in (None, n)])
        if fired is not None:  # another replica raised it: the log takes the acknowledgement, every process reads it
            details = {"id": alert_id, **{k: fired.details.get(k) for k in ("alertname", "subject", "severity")},
                       "note": note}
            event = gov.registry().audit.append("alert_acknowledged", actor, fired.model, fired.version, details)
            return json_response({"model": fired.model, "audit_seq": event.seq, "acknowledged": {
                **details, "actor": actor, "time": datetime.datetime.fromisoformat(event.time).timestamp()}})
        raise UnknownAlert(f"no alert {short(alert_id)} is firing or among the recent alert events"
                          + (f" of model {short(only)}" if only else ""))

    def card(request: Request, _: Body) -> Response:
        """The model card (``?model=&version=&format=html|md``; version: the deployed one)."""
        query = request.query_params
        fmt, name = query.get("format", "html"), query.get("model")
        if fmt not in ("html", "md") or not name or len(name) > MAX_REASON:
            raise BadBody("GET the card with ?model=NAME (and &version=V, &format=html or md)")
        text = render_card(name, query.get("version"), fmt=fmt, registry=gov.registry(), monitor=mon)
        return Response(text, media_type="text/html; charset=utf-8" if fmt == "html" else "text/markdown; charset=utf-8")

    def step_route(path: str, answer: Callable[[Request, Body], Response], what: str) -> Route:
        return Route(path, endpoint(what, answer, STEP_FIELDS), methods=["POST"], include_in_schema=False)

    out = [] if not registry else [
        Route(registry, endpoint(None, listing), methods=["GET"], include_in_schema=False),
        Route(registry, endpoint(f"POST {registry} (registering a model version)", register, REGISTER_FIELDS),
              methods=["POST"], include_in_schema=False),
        Route(registry + "/{model}", endpoint(None, model), methods=["GET"], include_in_schema=False),
        step_route(registry + "/{model}/rollback", rollback, "rolling a model back"),
        Route(registry + "/{model}/{version}", endpoint(None, version), methods=["GET"], include_in_schema=False),
        step_route(registry + "/{model}/{version}/{step:str}", step, "a registry step"),
        # beside the registry: /mlmon/card (or /card where the routes are mounted at /mlmon)
        Route(registry.rsplit("/", 1)[0] + "/card", endpoint(None, card), methods=["GET"], include_in_schema=False)]
    if alerts:
        out.append(Route(alerts + "/{alert_id}/ack", endpoint("acknowledging an alert", acknowledge, ACK_FIELDS,
                                                              registry_only=False),
                         methods=["POST"], include_in_schema=False))
    return out


def _answered(mon: Monitor, answer: Callable[[Request, Body], Response], request: Request, body: Body) -> Response:
    """``answer``'s response, or the status its error maps to (see the module docstring)."""
    if "step" in request.path_params and request.path_params["step"] not in STEPS:
        return json_response({"detail": f"no registry step {short(request.path_params['step'])}; steps: "
                                        f"{', '.join(STEPS)} (and POST …/{{model}}/rollback)"}, status_code=404)
    try:
        return answer(request, body)
    except (UnknownVersion, UnknownAlert) as exc:
        return json_response({"detail": str(exc)}, status_code=404)
    except (InvalidTransition, VersionExists) as exc:
        return json_response({"detail": str(exc), "error": type(exc).__name__}, status_code=409)
    except ChainBroken as exc:  # not the caller's fault: the log's end was cut or its head moved
        mon.errors.report("audit", exc)
        return json_response({"detail": str(exc), "error": "ChainBroken"}, status_code=503)
    except (GovernanceError, BadBody) as exc:
        return json_response({"detail": str(exc), "error": type(exc).__name__, **_missing(exc)}, status_code=400)
    except (StoreError, OSError) as exc:
        mon.errors.report("store", exc)
        return json_response({"detail": f"the registry's database is unavailable ({exc}); retry later"},
                             status_code=503, headers={"Retry-After": "1"})


def _object(raw: bytes, fields: tuple[str, ...]) -> Body:
    """The JSON object of a body (empty: ``{}``), with no field but ``fields``."""
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadBody(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadBody("the body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadBody(f"unknown field(s) {short(unknown)}; this route takes {', '.join(fields)}"
                      + (" (artifacts and baselines by their SHA-256: the service reads no file a caller names)"
                         if set(unknown) & {"model_artifact", "baseline"} else ""))
    return body


def _actor(body: Body) -> str:
    if "actor" not in body:
        raise BadBody("the body must name the actor: {\"actor\": \"who@example.com\", ...}")
    return check_text(body["actor"], "actor") or ""


def _reason(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise BadBody(f"a reason or note must be text of at most {MAX_REASON} characters")
    return value


def _mapping(value: object, what: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise BadBody(f"{what} must be a JSON object")
    return value


def _missing(exc: Exception) -> dict[str, Any]:
    missing = getattr(exc, "missing", None)
    return {} if missing is None else {"missing": missing}
