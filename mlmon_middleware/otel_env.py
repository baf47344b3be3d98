"""What OpenTelemetry's environment variables ask of mlmon's own exporters, resolved in one place.

mlmon reads the variables of the OpenTelemetry SDK specification, per signal (``traces``,
``metrics``), when it builds an exporter of its own (never when it uses a provider of yours):

* ``OTEL_SDK_DISABLED=true``: no exporter of ours at all.
* ``OTEL_{SIGNAL}_EXPORTER``: a comma-separated list; unset it means ``otlp``. ``none``, or a
  list without ``otlp`` (``console``, ``prometheus``), turns the signal's OTLP export off.
* The endpoint: ``OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`` as it is; else a base URL, mlmon's
  ``otlp_endpoint`` (``MLMON_OTLP_ENDPOINT``) before ``OTEL_EXPORTER_OTLP_ENDPOINT``, with
  ``/v1/{signal}`` added over HTTP, as it is over gRPC. A library pushes nowhere unasked: with no
  endpoint at all, a signal is exported (to the specification's default, ``localhost:4318`` or
  ``:4317``) only when ``OTEL_{SIGNAL}_EXPORTER`` names ``otlp`` explicitly.
* The protocol: ``OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``,
  else ``http/protobuf``; ``grpc`` picks the gRPC exporter. ``http/json``, which the Python
  exporters do not speak, is sent as ``http/protobuf`` (a collector's HTTP port takes both).
* The timeout: ``OTEL_EXPORTER_OTLP_{SIGNAL}_TIMEOUT``, else ``OTEL_EXPORTER_OTLP_TIMEOUT``, in
  **milliseconds** as the specification says (the Python exporters, left alone, read seconds),
  default 10 s. Below 100 ms it is most likely meant as seconds: :attr:`OtlpTarget.notes` says so.
* Headers, compression and certificates (``OTEL_EXPORTER_OTLP_[{SIGNAL}_]HEADERS``, ``..._COMPRESSION``,
  ``..._CERTIFICATE``, ...) are read by the exporter itself, the signal's variable first.
* ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` (:func:`temporality_preference`) and
  ``OTEL_METRICS_EXEMPLAR_FILTER`` (:func:`exemplars_allowed`).

No OpenTelemetry import here: the rules are plain functions of a mapping of variables.

>>> env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500"}
>>> otlp_target("traces", None, env)
OtlpTarget(signal='traces', protocol='http/protobuf', endpoint='http://collector:4318/v1/traces', timeout=2.5, notes=())
>>> otlp_target("metrics", None, {**env, "OTEL_METRICS_EXPORTER": "none"}) is None
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

SIGNALS = ("traces", "metrics")
HTTP, GRPC = "http/protobuf", "grpc"
DEFAULT_ENDPOINTS = {HTTP: "http://localhost:4318", GRPC: "http://localhost:4317"}
DEFAULT_TIMEOUT = 10.0  # seconds (the specification's 10000 ms)


@dataclasses.dataclass(frozen=True)
class OtlpTarget:
    """Where and how one signal is pushed: ``protocol`` (:data:`HTTP` or :data:`GRPC`), the full
    ``endpoint`` URL, ``timeout`` in seconds, and ``notes`` worth a warning at start-up."""

    signal: str
    protocol: str
    endpoint: str
    timeout: float
    notes: tuple[str, ...] = ()


def sdk_disabled(environ: Mapping[str, str]) -> bool:
    """``OTEL_SDK_DISABLED=true``: the specification's switch that turns the SDK off."""
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _exporters(signal: str, environ: Mapping[str, str]) -> list[str] | None:
    """The names ``OTEL_{SIGNAL}_EXPORTER`` lists, or None when it is unset or empty."""
    names = [n.strip().lower() for n in environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").split(",") if n.strip()]
    return names or None


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to a non-empty value, and that value."""
    return next(((n, environ[n].strip()) for n in names if environ.get(n, "").strip()), None)


def otlp_target(signal: str, base_endpoint: str | None, environ: Mapping[str, str]) -> OtlpTarget | None:
    """Where ``signal`` goes by OTLP (see the module docstring), or None when it is not exported.

    ``base_endpoint`` is mlmon's ``otlp_endpoint``: a base URL like ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    before it; the signal's own variable comes before both.

    >>> otlp_target("traces", None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}).endpoint
    'http://c:4318/custom'
    >>> otlp_target("metrics", "http://mine:4318", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"}).endpoint
    'http://mine:4318/v1/metrics'
    >>> t = otlp_target("metrics", None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    >>> t.protocol, t.endpoint
    ('grpc', 'http://c:4317')
    >>> otlp_target("traces", None, {}) is None  # nothing asked
    True
    >>> otlp_target("traces", None, {"OTEL_TRACES_EXPORTER": "otlp"}).endpoint  # asked, no endpoint
    'http://localhost:4318/v1/traces'
    """
    upper = signal.upper()
    exporters = _exporters(signal, environ)
    if sdk_disabled(environ) or (exporters is not None and "otlp" not in exporters):
        return None
    notes: list[str] = []
    protocol_var = _first(environ, f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = protocol_var[1].lower() if protocol_var else HTTP
    if protocol not in (HTTP, GRPC):
        assert protocol_var is not None
        notes.append(f"{protocol_var[0]}={protocol_var[1]!r} is not supported by the Python exporters; "
                     f"{signal} are sent as {HTTP}")
        protocol = HTTP
    own = _first(environ, f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")
    base = base_endpoint.strip() if base_endpoint and base_endpoint.strip() else None
    if own is None and base is None:
        generic = _first(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
        if generic is None and exporters is None:
            return None  # no endpoint and no explicit OTEL_{SIGNAL}_EXPORTER=otlp: a library pushes nowhere unasked
        base = generic[1] if generic else DEFAULT_ENDPOINTS[protocol]
    if own is not None:
        endpoint = own[1]
    elif protocol == GRPC:
        endpoint = base or DEFAULT_ENDPOINTS[GRPC]
    else:
        endpoint = f"{(base or DEFAULT_ENDPOINTS[HTTP]).rstrip('/')}/v1/{signal}"
    timeout = DEFAULT_TIMEOUT
    timeout_var = _first(environ, f"OTEL_EXPORTER_OTLP_{upper}_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    if timeout_var is not None:
        name, text = timeout_var
        try:
            millis = float(text)
        except ValueError:
            millis = -1.0
        if not millis > 0:
            notes.append(f"{name}={text!r} is not a number of milliseconds > 0; the timeout is {DEFAULT_TIMEOUT:g} s")
        else:
            timeout = millis / 1000
            if millis < 100:
                notes.append(f"{name}={text} is read as {text} ms, the specification's unit (the Python exporters "
                             f"alone read seconds); write {int(millis * 1000)} for {text} s")
    return OtlpTarget(signal, protocol, endpoint, timeout, tuple(notes))


def temporality_preference(environ: Mapping[str, str]) -> str:
    """``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``: ``cumulative`` (default), ``delta``
    or ``lowmemory``; anything else reads as ``cumulative``, as the SDK does.

    >>> temporality_preference({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "Delta"})
    'delta'
    """
    value = environ.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "").strip().lower()
    return value if value in ("delta", "lowmemory") else "cumulative"


def exemplars_allowed(environ: Mapping[str, str]) -> bool:
    """False when ``OTEL_METRICS_EXEMPLAR_FILTER=always_off``. mlmon's exemplars always come from
    sampled spans (``trace_based``, the default; ``always_on`` adds nothing without a trace).

    >>> exemplars_allowed({}), exemplars_allowed({"OTEL_METRICS_EXEMPLAR_FILTER": "always_off"})
    (True, False)
    """
    return environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip().lower() != "always_off"
