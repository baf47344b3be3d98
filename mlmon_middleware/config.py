"""MonitorConfig: the process-wide settings of a Monitor, validated at start-up.

Everything here is about *how* monitoring runs (limits, exporters, tracing), not about
a particular model; per-model settings are the :class:`~mlmon_middleware.ModelOptions` of
``monitor()`` and ``Monitor.model()``. Deploy-time settings come from ``MLMON_*`` environment
variables for every field the code left at its default: what the code says explicitly wins,
and the environment fills the rest, so the same image can be tuned per environment without a
rebuild and without overriding a choice its author made.

>>> MonitorConfig(reservoir_size=500).reservoir_size
500
>>> MonitorConfig(reservoir_size=0)
Traceback (most recent call last):
...
mlmon_middleware.config.ConfigError: reservoir_size must be an integer >= 1, got 0
>>> MonitorConfig().with_env({"MLMON_RESERVOIR_SIZE": "2000"}).reservoir_size
2000
>>> MonitorConfig(reservoir_size=500).with_env({"MLMON_RESERVOIR_SIZE": "2000"}).reservoir_size
500
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected one of true/false/1/0/yes/no/on/off")


def _parse_optional_bool(text: str) -> bool | None:
    return None if text.strip().lower() == "auto" else _parse_bool(text)


def _parse_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _parse_optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "off", "none") else float(text)


def _parse_optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "off", "none") else int(text)


def _parse_optional_path(text: str) -> str | None:
    return None if text.strip().lower() in ("", "off", "none") else text.strip()


#: the largest switch_interval: the interpreter's default; a longer one would let the pipeline,
#: which then never pauses, keep the GIL longer than without mlmon
MAX_SWITCH_INTERVAL = 0.005

# field name -> (environment variable, parser)
_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "service_name": ("MLMON_SERVICE_NAME", str),
    "reservoir_size": ("MLMON_RESERVOIR_SIZE", int),
    "max_body_bytes": ("MLMON_MAX_BODY_BYTES", int),
    "queue_size": ("MLMON_QUEUE_SIZE", int),
    "flush_interval": ("MLMON_FLUSH_INTERVAL", float),
    "flush_batch": ("MLMON_FLUSH_BATCH", int),
    "check_interval": ("MLMON_CHECK_INTERVAL", float),
    "window_seconds": ("MLMON_WINDOW_SECONDS", _parse_optional_float),
    "store_dir": ("MLMON_STORE_DIR", str),
    "store_interval": ("MLMON_STORE_INTERVAL", float),
    "store_max_age": ("MLMON_STORE_MAX_AGE", _parse_optional_float),
    "store_max_rows": ("MLMON_STORE_MAX_ROWS", _parse_optional_int),
    "store_url": ("MLMON_STORE_URL", str),
    "enforce_approval": ("MLMON_ENFORCE_APPROVAL", _parse_bool),
    "freeze_startup": ("MLMON_FREEZE_STARTUP", _parse_bool),
    "switch_interval": ("MLMON_SWITCH_INTERVAL", float),
    "multiprocess_dir": ("MLMON_MULTIPROC_DIR", str),
    "metrics_per_worker": ("MLMON_METRICS_PER_WORKER", _parse_bool),
    "share_interval": ("MLMON_SHARE_INTERVAL", float),
    "api_token": ("MLMON_API_TOKEN", str),
    "allow_anonymous_writes": ("MLMON_ALLOW_ANONYMOUS_WRITES", _parse_bool),
    "refresh_interval": ("MLMON_REFRESH_INTERVAL", float),
    "max_features": ("MLMON_MAX_FEATURES", int),
    "max_models": ("MLMON_MAX_MODELS", int),
    "max_feedback_bytes": ("MLMON_MAX_FEEDBACK_BYTES", int),
    "ack_max_age": ("MLMON_ACK_MAX_AGE", float),
    "tracing": ("MLMON_TRACING", _parse_optional_bool),
    "trace_features": ("MLMON_TRACE_FEATURES", _parse_names),
    "metrics_path": ("MLMON_METRICS_PATH", _parse_optional_path),
    "metrics_public": ("MLMON_METRICS_PUBLIC", _parse_bool),
    "prometheus_port": ("MLMON_PROMETHEUS_PORT", _parse_optional_int),
    "prometheus_addr": ("MLMON_PROMETHEUS_ADDR", str),
    "otlp_endpoint": ("MLMON_OTLP_ENDPOINT", str),
}


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """Settings of a :class:`~mlmon_middleware.Monitor`.

    Parameters:
        service_name: ``service.name`` of mlmon's telemetry; default: the app's resource when it
            installed an SDK tracer provider, else ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES``'s,
            else ``"mlmon"``.
        reservoir_size: rows kept per model for analysis (the sliding window). Memory is
            bounded by this times the number of features, never by traffic.
        max_body_bytes: largest request or response body the middleware tees for capture;
            beyond it capture is skipped and counted (``too_large``), the request still served.
        queue_size: records waiting for the background pipeline; when it is full, new records are
            dropped and counted (``mlmon_monitor_errors_total{stage="queue_full"}``). A queued record
            holds references to the call's arguments and result, so this bounds that memory too.
        flush_interval: seconds between background pipeline runs (turning raw captures into
            feature rows, metrics and spans).
        flush_batch: queued records that make the pipeline run at once, before the interval is
            up. Each queued record keeps three objects the garbage collector counts (the record,
            its input and its answer), so 256 of them passed its young threshold (700) by
            themselves: about 10× more young collections and, through their promotions, more
            collections of the older generations, some of them in the pipeline thread
            (stretches of 13–16 ms under wrk). 64 keeps the queue under the threshold for about
            4,800 more CPU instructions a request (+0.4 %; docs/benchmarks.md). A loop that
            calls a monitored function without ever waiting meets each flush's start in its
            p99 at 64, in its p99.9 only at 256.
        freeze_startup: when the server starts the app (ASGI lifespan start-up, after the app's
            own start-up), collect garbage once and move every object alive then (modules, the
            app, a loaded model) out of the garbage collector's reach (``gc.freeze``), once per
            process. Records waiting for the pipeline make the collector run more often; its full
            collections then walk the whole heap, tens of ms with the GIL held under uvicorn, a
            few ms after the freeze (``benchmarks/tail.py gc``, docs/benchmarks.md). Objects
            frozen are still freed when nothing refers to them; only a reference cycle among
            them is never reclaimed.
        switch_interval: seconds, at most 0.005 (the interpreter's default); while mlmon's
            background threads work (the pipeline ingesting, the checks, the workers sharing,
            the log writing, an OTLP metrics export), the interpreter's switch interval
            (``sys.setswitchinterval``) is at most this, so a thread waiting for the GIL (the
            serving thread) usually gets it within about this long (a switch waits for the
            running bytecode: a long C call or a garbage collection is not cut short), and the
            work goes on without pausing when no thread waits. The interval from before is put
            back as soon as that work is done (unless something else changed it meanwhile): the
            rest of the time the app's own threads that compete for the GIL (a sync endpoint's
            pool) keep the interpreter's interval. 0 leaves the interval alone; the pipeline then
            sleeps ``50 µs`` after every ``50 µs`` of work instead (longer stretches, up to
            2 ms, when far behind), which costs a server more CPU under load, but keeps the tail
            of a loop of monitored calls that never waits on I/O nearer bare
            (:mod:`~mlmon_middleware.pacing`, docs/benchmarks.md).
        check_interval: seconds between background drift checks (0 turns them off; checks can
            still be run with ``ModelMonitor.check_now()``).
        window_seconds: when set, a check looks only at the window's rows of the last this many
            seconds (a time-based window inside the count-based one).
        store_dir: folder of the prediction log (``predictions.sqlite``), needed to join delayed
            labels; off by default (a library writes no files unless asked).
        store_interval: seconds between the prediction log's batched writes.
        store_queue_size: rows waiting for the log's writer; beyond it the oldest are dropped and
            counted (``stage="store_queue_full"``).
        store_max_age: seconds a logged prediction is kept (None: no limit).
        store_max_rows: logged predictions kept per model, newest first (None: no limit).
        store_url: ``postgresql://user:password@host:port/db``: the prediction log (and what the
            replicas of a fleet share) in PostgreSQL instead of a SQLite file (extra ``[postgres]``).
            Set either this or ``store_dir``.
        enforce_approval: answer 503 (``{"error": "model_not_approved", ...}``) instead of
            serving a model version the registry in the prediction log's database does not mark
            deployed (or whose artifact hash differs); off by default: then the serving gate
            only reports (health, ``mlmon_model_approved``). See docs/governance.md.
        multiprocess_dir: where the worker processes of one server (``uvicorn --workers N``,
            gunicorn, BentoML) share their counters, windows and check results. None (default):
            detected for workers of a process manager, under the temporary folder; ``"off"``:
            every process on its own; a path: share through that folder (one per service).
        metrics_per_worker: with shared workers, export counters and histograms per worker
            (a ``worker`` label, exited workers summed as ``worker="exited"``) rather than summed.
        share_interval: seconds between a worker's publications of its counters to the other
            workers (a scrape through any worker is at most this old for the others' counts).
        api_token: when set, every mlmon route that writes (feedback, on-demand checks) or returns
            input-derived data (reports, logged predictions, explanations, health details, the
            metrics unless ``metrics_public``) requires ``Authorization: Bearer <token>``; the
            dashboard page and a status-only health stay open. Compared as bytes in constant time.
        allow_anonymous_writes: without ``api_token``, the routes that write answer 403 unless
            this is True (anyone may then post labels and run checks: only for a closed network).
        refresh_interval: seconds between two on-demand checks (``?refresh=true``) of one
            model; asked sooner, the route answers the last report (``X-MLMon-Refresh: limited``).
        max_features: widest schema inferred from traffic (without ``features=`` or a baseline);
            fields beyond it are counted as unmonitored (``capture_errors{reason="too_wide"}``).
        max_models: models one process monitors; beyond it ``Monitor.model()`` returns a
            monitor that drops its records, counted in ``mlmon_limit_hits_total{limit="models"}``.
        max_feedback_bytes: largest ``POST /mlmon/feedback`` body (413 beyond it).
        ack_max_age: seconds a critical alert may fire unacknowledged (``POST
            /mlmon/alerts/{id}/ack``) before health lists it as an issue (default 24 h).
        tracing: ``True`` or ``False``; ``None`` (auto) traces when a tracer provider was
            given, an SDK tracer provider is installed globally (the app's: mlmon's spans then
            share its resource, sampler and exporters), or OTLP is configured for traces.
        trace_features: feature names whose raw values may be written into spans (none by default).
        metrics_path: where the FastAPI adapter serves mlmon's Prometheus text, besides
            ``/mlmon/metrics``, while no route of the app answers there (an app's own ``/metrics``
            keeps it, with a warning); ``"/mlmon/metrics"``: only there; None (``off``): nowhere
            on the app (scrape ``prometheus_port``).
        metrics_public: serve the metrics on the app's paths without the token even when
            ``api_token`` is set (off by default: with a token, a scrape sends it, as every read
            of input-derived data does; the metrics hold inferred feature names and declared
            segment values). For scrapers that cannot send a bearer token.
        prometheus_port: serve ``/metrics`` on this port from a thread of our own (off by default;
            the FastAPI adapter serves it on the app instead).
        prometheus_addr: address for ``prometheus_port``.
        otlp_endpoint: OTLP base URL of mlmon's own exporters (``/v1/metrics`` and ``/v1/traces``
            are added over HTTP), before ``OTEL_EXPORTER_OTLP_ENDPOINT``; a signal's own
            ``OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`` comes first. The other OpenTelemetry variables
            (exporters, protocol, headers, timeout, ...) apply as :mod:`~mlmon_middleware.otel_env`
            says. Every process exports as its own ``service.instance.id``.
        meter_provider: an OpenTelemetry ``MeterProvider`` that gets every mlmon instrument too
            (histograms value by value, at the SDK's cost); mlmon then pushes no OTLP of its own.
        tracer_provider: an OpenTelemetry ``TracerProvider`` for mlmon's spans.
        metric_readers: readers (for example ``InMemoryMetricReader`` in tests) for a provider of
            ours that gets every instrument through the SDK, as ``meter_provider`` does.
        set_global_providers: also install our providers as the global ones (off: we never
            touch globals unless asked).
    """

    service_name: str | None = None
    reservoir_size: int = 10_000
    max_body_bytes: int = 1 << 20
    queue_size: int = 20_000
    flush_interval: float = 0.5
    flush_batch: int = 64
    freeze_startup: bool = True
    switch_interval: float = 1e-4
    check_interval: float = 60.0
    window_seconds: float | None = None
    store_dir: str | None = None
    store_interval: float = 0.5
    store_queue_size: int = 100_000
    store_max_age: float | None = None
    store_max_rows: int | None = 1_000_000
    store_url: str | None = None
    enforce_approval: bool = False
    multiprocess_dir: str | None = None
    metrics_per_worker: bool = False
    share_interval: float = 1.0
    api_token: str | None = None
    allow_anonymous_writes: bool = False
    refresh_interval: float = 10.0
    max_features: int = 256
    max_models: int = 100
    max_feedback_bytes: int = 1 << 20
    ack_max_age: float = 86_400.0
    tracing: bool | None = None
    trace_features: tuple[str, ...] = ()
    metrics_path: str | None = "/metrics"
    metrics_public: bool = False
    prometheus_port: int | None = None
    prometheus_addr: str = "127.0.0.1"
    otlp_endpoint: str | None = None
    meter_provider: Any = None
    tracer_provider: Any = None
    metric_readers: tuple[Any, ...] = ()
    set_global_providers: bool = False

    def __post_init__(self) -> None:
        _check_int(self, "reservoir_size", minimum=1)
        _check_int(self, "max_body_bytes", minimum=0)
        _check_int(self, "queue_size", minimum=1)
        _check_int(self, "flush_batch", minimum=1)
        if (not isinstance(self.switch_interval, (int, float)) or isinstance(self.switch_interval, bool)
                or not 0 <= self.switch_interval <= MAX_SWITCH_INTERVAL):
            raise ConfigError(f"switch_interval must be a number of seconds in [0, {MAX_SWITCH_INTERVAL}], "
                              f"got {self.switch_interval!r}")
        if not isinstance(self.check_interval, (int, float)) or self.check_interval < 0:
            raise ConfigError(f"check_interval must be a number of seconds >= 0, got {self.check_interval!r}")
        if not isinstance(self.store_interval, (int, float)) or not 0 < self.store_interval <= 60:
            raise ConfigError(f"store_interval must be a number of seconds in (0, 60], got {self.store_interval!r}")
        _check_int(self, "store_queue_size", minimum=1)
        _check_int(self, "max_features", minimum=1)
        _check_int(self, "max_models", minimum=1)
        _check_int(self, "max_feedback_bytes", minimum=1)
        if not isinstance(self.refresh_interval, (int, float)) or self.refresh_interval < 0:
            raise ConfigError(f"refresh_interval must be a number of seconds >= 0, got {self.refresh_interval!r}")
        if (not isinstance(self.ack_max_age, (int, float)) or isinstance(self.ack_max_age, bool)
                or not 0 < self.ack_max_age < float("inf")):
            raise ConfigError(f"ack_max_age must be a number of seconds > 0, got {self.ack_max_age!r}")
        if self.allow_anonymous_writes not in (True, False):
            raise ConfigError(f"allow_anonymous_writes must be True or False, got {self.allow_anonymous_writes!r}")
        if self.api_token is not None and (not isinstance(self.api_token, str) or not self.api_token.strip()):
            raise ConfigError("api_token must be a non-empty string or None")
        if self.store_max_rows is not None:
            _check_int(self, "store_max_rows", minimum=1)
        if self.store_max_age is not None and (not isinstance(self.store_max_age, (int, float)) or self.store_max_age <= 0):
            raise ConfigError(f"store_max_age must be a number of seconds > 0 or None, got {self.store_max_age!r}")
        if self.store_url is not None and (not isinstance(self.store_url, str)
                                           or not self.store_url.startswith(("postgresql://", "postgres://"))):
            raise ConfigError(f"store_url must be a postgresql:// URL or None, got {_redacted(self.store_url)!r}")
        if self.store_url is not None and self.store_dir is not None:
            raise ConfigError("set store_dir (a SQLite file on this host) or store_url (PostgreSQL), not both")
        if self.enforce_approval not in (True, False):
            raise ConfigError(f"enforce_approval must be True or False, got {self.enforce_approval!r}")
        if self.multiprocess_dir is not None and (not isinstance(self.multiprocess_dir, str) or not self.multiprocess_dir):
            raise ConfigError(f"multiprocess_dir must be a folder, 'off' or None (auto), got {self.multiprocess_dir!r}")
        if self.metrics_per_worker not in (True, False):
            raise ConfigError(f"metrics_per_worker must be True or False, got {self.metrics_per_worker!r}")
        if not isinstance(self.share_interval, (int, float)) or not 0 < self.share_interval <= 60:
            raise ConfigError(f"share_interval must be a number of seconds in (0, 60], got {self.share_interval!r}")
        if self.window_seconds is not None and (not isinstance(self.window_seconds, (int, float))
                                                or self.window_seconds <= 0):
            raise ConfigError(f"window_seconds must be a number of seconds > 0 or None, got {self.window_seconds!r}")
        if not isinstance(self.flush_interval, (int, float)) or not 0 < self.flush_interval <= 3600:
            raise ConfigError(f"flush_interval must be a number of seconds in (0, 3600], got {self.flush_interval!r}")
        if self.tracing not in (None, True, False):
            raise ConfigError(f"tracing must be True, False or None (auto), got {self.tracing!r}")
        if isinstance(self.trace_features, str) or not all(isinstance(n, str) for n in self.trace_features):
            raise ConfigError(f"trace_features must be a sequence of feature names, got {self.trace_features!r}")
        object.__setattr__(self, "trace_features", tuple(self.trace_features))
        if self.metrics_path is not None and (not isinstance(self.metrics_path, str) or self.metrics_path[:1] != "/"
                                              or any(c.isspace() or c in "{}?#" for c in self.metrics_path)):
            raise ConfigError(f"metrics_path must be a path starting with '/' (no spaces, braces, '?' or '#'), or None "
                              f"(off), got {self.metrics_path!r}")
        if self.prometheus_port is not None:
            _check_int(self, "prometheus_port", minimum=0, maximum=65535)
        object.__setattr__(self, "metric_readers", tuple(self.metric_readers))

    def with_env(self, environ: Mapping[str, str] | None = None) -> MonitorConfig:
        """A copy with the ``MLMON_*`` variables of ``environ`` (default ``os.environ``) applied to
        the fields this config leaves at their defaults; fields set to another value in code keep it."""
        environ = os.environ if environ is None else environ
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for field, (var, parse) in _ENV.items():
            if var in environ and getattr(self, field) == defaults[field]:
                try:
                    changes[field] = parse(environ[var])
                except ValueError as exc:
                    raise ConfigError(f"{var}={environ[var]!r} is not a valid {field}: {exc}") from None
        return dataclasses.replace(self, **changes) if changes else self


def _redacted(url: object) -> object:
    """A store URL as an error message may show it: without its password."""
    if not isinstance(url, str) or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else url


def _check_int(config: MonitorConfig, field: str, minimum: int, maximum: int | None = None) -> None:
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{field} must be an integer {allowed}, got {value!r}")
