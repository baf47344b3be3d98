"""Who may use mlmon's routes, and the JSON answers and bounded request bodies they share.

:class:`Access` decides per request (the bearer token ``api_token``, ``allow_anonymous_writes``);
:func:`json_response` answers JSON; :func:`bounded_body` reads a body no larger than a limit;
:func:`short` quotes a client's value in an error message. Used by :mod:`~mlmon_middleware.routes`
and :mod:`~mlmon_middleware.routes_governance`.

>>> short("x" * 100)[-3:]
'xx…'
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response

from mlmon_middleware.monitor import Monitor

logger = logging.getLogger("mlmon_middleware")


class Access:
    """Who may use a route. The dashboard page and health's status are open. Routes that
    *write* need the bearer token ``api_token``; without one they answer 403, unless
    ``allow_anonymous_writes`` is set. With a token, every route that returns input-derived data
    needs it too (the metrics unless ``metrics_public``); without one those are open. The token
    is compared as bytes, in constant time; a missing, malformed or non-ASCII ``Authorization``
    header is a 401, never a 500.

    >>> from mlmon_middleware import Monitor, MonitorConfig
    >>> Access(Monitor(MonitorConfig(tracing=False))).write_denied  # no token, no opt-in
    True
    """

    def __init__(self, mon: Monitor) -> None:
        token = mon.config.api_token
        self.expected = None if not token else b"Bearer " + token.encode("utf-8")
        self.write_denied = self.expected is None and not mon.config.allow_anonymous_writes

    def authorized(self, request: Request) -> bool:
        """Whether the request carries the configured token (False when none is configured)."""
        if self.expected is None:
            return False
        for key, value in request.scope.get("headers") or ():
            if key == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False

    def read(self, request: Request) -> Response | None:
        """None when the request may read input-derived data; else the 401 to answer."""
        if self.expected is None or self.authorized(request):
            return None
        return json_response({"detail": "this route returns input-derived data: send 'Authorization: Bearer <token>' "
                                      "(the service's MLMON_API_TOKEN)"}, status_code=401,
                             headers={"WWW-Authenticate": 'Bearer realm="mlmon"'})

    def write(self, request: Request, what: str) -> Response | None:
        """None when the request may write (post labels, run a check); else the 401 or 403."""
        if self.write_denied:
            return json_response({"detail": f"{what} is off: this service has no API token. Set MLMON_API_TOKEN (or "
                                          "MonitorConfig(api_token=...)) and send 'Authorization: Bearer <token>', or "
                                          "set MLMON_ALLOW_ANONYMOUS_WRITES=true to let anyone who reaches the service "
                                          "do it"}, status_code=403)
        if self.expected is not None and not self.authorized(request):
            return json_response({"detail": f"{what} needs 'Authorization: Bearer <token>' (the service's MLMON_API_TOKEN)"},
                                 status_code=401, headers={"WWW-Authenticate": 'Bearer realm="mlmon"'})
        return None

    def announce(self, feedback: str) -> None:
        """Say at start-up what is open: writes by anyone are worth a warning."""
        if self.expected is None and not self.write_denied:
            logger.warning("mlmon: allow_anonymous_writes is on and no API token is set: anyone who reaches this "
                           "service can post ground-truth labels to %s and run checks", feedback)


def json_response(payload: object, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``payload`` as a JSON response (numpy values and non-string keys allowed)."""
    return Response(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
                    status_code=status_code, media_type="application/json", headers=headers)


async def bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes (by its
    Content-Length or while it streams in): an oversized body is never held."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def short(value: object) -> str:
    """A client's value quoted in an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"
