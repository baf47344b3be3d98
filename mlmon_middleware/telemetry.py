"""Every OpenTelemetry instrument and span of mlmon, the providers they go through, the exporters.

With :mod:`~mlmon_middleware.otlp_export` (mlmon's own OTLP exporters), the only module of the
package that imports OpenTelemetry. Names, units and buckets come from the one table in
:mod:`~mlmon_middleware.instruments`; what OpenTelemetry's variables ask is resolved by
:mod:`~mlmon_middleware.otel_env`; the histograms are aggregated a flush at a time by
:mod:`~mlmon_middleware.histograms`.

Spans go through the first of: the ``tracer_provider`` given; the app's global provider when it
is an SDK ``TracerProvider`` (its resource, sampler and exporters: an app's own,
``opentelemetry-instrument``'s, BentoML's); a provider of ours exporting OTLP when OTLP is
configured for traces; the global API when ``tracing=True``.

Metrics always go through a ``MeterProvider`` of ours, never the app's global one: that one's
readers are fixed when it is built (mlmon's ``/metrics`` needs a reader of its own) and it records
histograms value by value, where mlmon aggregates a flush at a time. Ours exports:

* Prometheus text or OpenMetrics (with exemplars) from a *private* ``CollectorRegistry``
  (BentoML and others own the global one); served by the FastAPI adapter at ``/metrics`` or on
  ``MLMON_PROMETHEUS_PORT``;
* OTLP when :func:`~mlmon_middleware.otel_env.otlp_target` says so, each process as its own
  ``service.instance.id``. Its resource is that of the SDK tracer provider mlmon's spans go
  through (``tracer_provider``, or the app's global one), so mlmon's metrics join those spans.

A ``meter_provider`` given, or ``metric_readers`` (tests use ``InMemoryMetricReader``), get every
instrument too, through the SDK's API: a second provider beside ours, whose histograms record
value by value (:class:`SdkHistogram`). Global providers are never set unless
``set_global_providers=True``. Instruments are fed by the background pipeline, never on the
request path.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.context import get_current as get_current_context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

from mlmon_middleware import instruments as names
from mlmon_middleware._version import __version__
from mlmon_middleware.config import MonitorConfig
from mlmon_middleware.histograms import (
    Exemplar,
    HistogramCollector,
    HistogramSink,
    PreaggregatedHistogram,
    label_name,
    label_value,
)
from mlmon_middleware.instruments import INSTRUMENTS
from mlmon_middleware.merge import MergedCollector
from mlmon_middleware.otel_env import exemplars_allowed, temporality_preference
from mlmon_middleware.otlp_export import SCOPE, WithHistograms, app_tracer_provider, build_exporter
from mlmon_middleware.otlp_export import check_exporters as check_exporters  # Monitor's start-up check

logger = logging.getLogger("mlmon_middleware")

#: ports tried from ``prometheus_port`` up: one per worker process of a multi-process server
PORT_SPAN = 64


class SdkHistogram:
    """A histogram of a meter provider that is not ours: the SDK aggregates value by value (it
    drops negative values, as OTel histograms require). The exemplar's value is recorded in
    the exemplar's span context, so the provider's exemplar filter and reservoir see it."""

    def __init__(self, instrument: Any) -> None:
        self._record = instrument.record

    def observe(self, values: np.ndarray, attributes: Mapping[str, Any], exemplar: Exemplar | None = None) -> None:
        context = None if exemplar is None else otel_trace.set_span_in_context(NonRecordingSpan(SpanContext(
            exemplar.trace_id, exemplar.span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))))
        for value in np.asarray(values, dtype=np.float64).tolist():
            if value >= 0 and value != np.inf:
                if context is not None and exemplar is not None and value == exemplar.value:
                    self._record(value, attributes, context=context)
                    context = None
                else:
                    self._record(value, attributes)


class _Tee:
    """One instrument of ours and the same instrument of the provider given, fed as one."""

    def __init__(self, ours: Any, theirs: Any) -> None:
        self._ours, self._theirs = ours, theirs

    def add(self, amount: float, attributes: Mapping[str, Any]) -> None:
        self._ours.add(amount, attributes)
        self._theirs.add(amount, attributes)

    def observe(self, values: np.ndarray, attributes: Mapping[str, Any], exemplar: Exemplar | None = None) -> None:
        self._ours.observe(values, attributes, exemplar)
        self._theirs.observe(values, attributes, exemplar)


class _FlushBeforeCollect:
    """Registered first on the private registry, so every scrape first drains the pipeline
    and sees exact counts."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self._flush()
        return []


class _WithInfinities:
    """The OpenTelemetry exporter's families (read from its own registry ``sdk``), except those
    of :data:`~mlmon_middleware.instruments.NON_FINITE` gauges, which are built here from one
    read of their values, infinite ones included: the SDK drops non-finite measurements (its
    API takes finite ones only), and one read keeps a series from showing twice or not at all
    when a check lands between two reads."""

    def __init__(self, sdk: CollectorRegistry, observe: Callable[[str], Iterable[tuple[float, Mapping[str, Any]]]]) -> None:
        self._sdk = sdk
        self._observe = observe
        self._names = {INSTRUMENTS[name].prometheus: name for name in names.NON_FINITE}

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        families = [f for f in self._sdk.collect() if f.name not in self._names]
        for prometheus, name in self._names.items():
            spec = INSTRUMENTS[name]
            values = list(self._observe(name))
            if not values:
                continue
            family = GaugeMetricFamily(prometheus, spec.description, unit="seconds" if spec.unit == "s" else "")
            for value, attrs in values:
                family.add_sample(prometheus, {label_name(k): label_value(v) for k, v in attrs.items()}, value)
            families.append(family)
        return families


def _resource(config: MonitorConfig, instance_id: str, app: TracerProvider | None) -> Resource:
    """The resource of the SDK tracer provider mlmon's spans go through (``tracer_provider``, or the
    app's global one), plus our ``service.instance.id`` if it has none (each process's cumulative
    series must stay apart), so that mlmon's metrics join those spans; else OpenTelemetry's
    (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``) with ours and ``mlmon.version``, named
    ``mlmon`` when nothing names it. ``service_name``, when set, names either."""
    if app is not None:
        extra = {} if "service.instance.id" in app.resource.attributes else {"service.instance.id": instance_id}
        resource = app.resource.merge(Resource(extra))
    else:
        resource = Resource.create({"service.instance.id": instance_id, "mlmon.version": __version__})
    name = config.service_name or str(resource.attributes.get("service.name", ""))
    if not name or (app is None and name.startswith("unknown_service")):
        name = "mlmon"
    return resource.merge(Resource({"service.name": name}))


class Telemetry:
    """Meter and tracer of one process, with the instruments of ``INSTRUMENTS``.

    Created lazily in the serving process (after any fork), so each worker gets its own
    ``service.instance.id`` and its own exporter threads. ``merged``, when this worker shares
    with others, gives the server's families: then a scrape (``/metrics``, the metrics port)
    answers with those rather than this process's own (:attr:`registry`).
    """

    def __init__(self, config: MonitorConfig, *, flush: Callable[[], None],
                 observe: Callable[[str], Iterable[tuple[float, Mapping[str, Any]]]],
                 merged: Callable[[], list[Any]] | None = None, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        app = app_tracer_provider()
        spans_through = config.tracer_provider if isinstance(config.tracer_provider, TracerProvider) else app
        self.resource = _resource(config, str(uuid.uuid4()), spans_through)
        self.instance_id = str(self.resource.attributes["service.instance.id"])
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FlushBeforeCollect(flush))
        self._histograms: list[PreaggregatedHistogram] = []
        self.registry.register(HistogramCollector(self._histograms))
        self._sdk_registry = CollectorRegistry(auto_describe=False)  # the OTel exporter's, read through:
        self.registry.register(_WithInfinities(self._sdk_registry, observe))
        self.scraped = self.registry  # what /metrics and the metrics port answer with
        if merged is not None:
            self.scraped = CollectorRegistry(auto_describe=False)
            self.scraped.register(MergedCollector(merged))
        self._owned: list[Any] = []  # providers and servers we created and must shut down
        self._http_server: WSGIServer | None = None
        self.problems: list[str] = []  # what could not be set up (health lists it)
        self.tracer = self._tracer(config, app, environ)  # given, else the app's, else ours
        #: exemplars (trace ids on the latency and prediction histograms) when tracing, unless turned off
        self.exemplars = self.tracer is not None and exemplars_allowed(environ)
        self.meter_provider = self._meter_provider(config, environ)
        given: Any = config.meter_provider
        if given is None and config.metric_readers:
            given = MeterProvider(metric_readers=list(config.metric_readers), resource=self.resource,
                                  exemplar_filter=TraceBasedExemplarFilter() if self.exemplars else AlwaysOffExemplarFilter())
            self._owned.append(given)
        meters = [self.meter_provider.get_meter(SCOPE, __version__)]
        if given is not None:
            meters.append(given.get_meter(SCOPE, __version__))
        self.predictions = self._counter(meters, names.PREDICTIONS)
        self.capture_errors = self._counter(meters, names.CAPTURE_ERRORS)
        self.labels = self._counter(meters, names.LABELS)
        self.explanations = self._counter(meters, names.EXPLANATIONS)
        self.explanation_duration = self._histogram(meters, names.EXPLANATION_DURATION)
        self.label_delay = self._histogram(meters, names.LABEL_DELAY)
        self.inference_duration = self._histogram(meters, names.INFERENCE_DURATION)
        self.prediction_value = self._histogram(meters, names.PREDICTION_VALUE)
        for spec in INSTRUMENTS.values():  # observable instruments read the monitor's state at collection
            if spec.kind.startswith("observable"):
                for meter in meters:
                    _create(meter, spec.name, callbacks=[_observer(observe, spec.name)])
        if config.prometheus_port is not None:
            self._serve_prometheus(config.prometheus_addr, config.prometheus_port)

    @staticmethod
    def _counter(meters: list[otel_metrics.Meter], name: str) -> Any:
        ours = _create(meters[0], name)
        return ours if len(meters) == 1 else _Tee(ours, _create(meters[1], name))

    def _histogram(self, meters: list[otel_metrics.Meter], name: str) -> HistogramSink:
        ours = PreaggregatedHistogram(INSTRUMENTS[name], start_ns=time.time_ns())
        self._histograms.append(ours)
        return ours if len(meters) == 1 else _Tee(ours, SdkHistogram(_create(meters[1], name)))

    def _meter_provider(self, config: MonitorConfig, environ: Mapping[str, str]) -> MeterProvider:
        readers: list[Any] = [PrometheusMetricReader(registry=self._sdk_registry, scope_info_enabled=False)]
        # with a meter provider of the user's, that one exports: no OTLP of ours beside it
        exporter = build_exporter("metrics", config, environ, self.problems) if config.meter_provider is None else None
        if exporter is not None:
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(
                WithHistograms(exporter, self._histograms, self.resource, temporality_preference(environ))))
        provider = MeterProvider(metric_readers=readers, resource=self.resource, exemplar_filter=AlwaysOffExemplarFilter())
        self._owned.append(provider)
        if config.set_global_providers:
            otel_metrics.set_meter_provider(provider)
        return provider

    def _tracer(self, config: MonitorConfig, app: TracerProvider | None,
                environ: Mapping[str, str]) -> otel_trace.Tracer | None:
        if config.tracing is False:
            return None
        if config.tracer_provider is not None:
            given: otel_trace.TracerProvider = config.tracer_provider
            return given.get_tracer(SCOPE, __version__)
        if app is not None:  # the app's: its resource, sampler and exporters
            return app.get_tracer(SCOPE, __version__)
        exporter = build_exporter("traces", config, environ, self.problems)
        if exporter is not None:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=self.resource)
            provider.add_span_processor(BatchSpanProcessor(exporter))
            self._owned.append(provider)
            if config.set_global_providers:
                otel_trace.set_tracer_provider(provider)
            return provider.get_tracer(SCOPE, __version__)
        return otel_trace.get_tracer(SCOPE, __version__) if config.tracing else None

    def _serve_prometheus(self, addr: str, port: int) -> None:
        """Serve ``/metrics`` on ``port``, or on the next free one of :data:`PORT_SPAN`: each
        worker of a multi-process server (``uvicorn --workers N``) takes its own, once, at
        start-up. When none is free the app's own ``/metrics`` route still answers; the problem
        is logged once and listed by health, never retried per request."""
        from prometheus_client import start_http_server

        for candidate in range(port, port + PORT_SPAN) if port else (0,):
            try:
                server, _ = start_http_server(candidate, addr=addr, registry=self.scraped)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    self.problems.append(f"metrics port {candidate} on {addr}: {exc}")
                    logger.warning("mlmon: cannot serve metrics on %s:%d (%s)", addr, candidate, exc)
                    return
                continue
            self._http_server = server
            logger.info("mlmon: Prometheus metrics on http://%s:%d/metrics%s", addr, server.server_port,
                        "" if candidate == port else f" (port {port} and up were taken, by other workers?)")
            return
        self.problems.append(f"metrics ports {port} to {port + PORT_SPAN - 1} on {addr} are all in use")
        logger.warning("mlmon: %s; this process serves no metrics port", self.problems[-1])

    def current_context(self) -> object | None:
        """The OTel context to parent our span on, or None when not tracing (a contextvar read)."""
        return get_current_context() if self.tracer is not None else None

    def span(self, name: str, parent: object | None, attributes: dict[str, Any], start_ns: int, end_ns: int,
             error_type: str | None = None) -> tuple[int, int] | None:
        """Record a finished span (the pipeline creates spans after the fact, with their real
        times). Returns its ``(trace_id, span_id)`` for an exemplar when exemplars are on and the
        span is sampled (a span under an unsampled parent, BentoML's default, gives none)."""
        if self.tracer is None:
            return None
        span = self.tracer.start_span(name, context=parent if isinstance(parent, Context) else None,
                                      attributes=attributes, start_time=start_ns)
        if error_type:
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(end_time=end_ns)
        if not self.exemplars:
            return None
        context = span.get_span_context()
        return (context.trace_id, context.span_id) if context.is_valid and context.trace_flags.sampled else None

    @property
    def prometheus_port(self) -> int | None:
        """The port of our own metrics server, when ``prometheus_port`` is set (useful with 0)."""
        return None if self._http_server is None else self._http_server.server_port

    def prometheus_text(self, accept: str | None = None) -> tuple[bytes, str]:
        """What a scrape sees (this worker's registry, or every worker's when they share) and its
        content type: OpenMetrics, exemplars included, when ``accept`` (the request's ``Accept``
        header) asks for ``application/openmetrics-text``; the Prometheus text format otherwise."""
        if accept and "application/openmetrics-text" in accept:
            encoder, content_type = choose_encoder(accept)
            return encoder(self.scraped), content_type
        return generate_latest(self.scraped), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
        for owned in self._owned:
            owned.shutdown()


def _create(meter: otel_metrics.Meter, name: str,
            callbacks: list[Callable[[CallbackOptions], Iterable[Observation]]] | None = None) -> Any:
    spec = INSTRUMENTS[name]
    if spec.kind == "counter":
        return meter.create_counter(name, unit=spec.unit, description=spec.description)
    if spec.kind == "histogram":
        return meter.create_histogram(name, unit=spec.unit, description=spec.description,
                                      explicit_bucket_boundaries_advisory=list(spec.buckets or ()))
    if spec.kind == "observable_counter":
        return meter.create_observable_counter(name, callbacks, unit=spec.unit, description=spec.description)
    return meter.create_observable_gauge(name, callbacks, unit=spec.unit, description=spec.description)


def _observer(observe: Callable[[str], Iterable[tuple[float, Mapping[str, Any]]]], name: str
              ) -> Callable[[CallbackOptions], list[Observation]]:
    def callback(_: CallbackOptions) -> list[Observation]:  # the SDK takes finite values only (see _WithInfinities)
        return [Observation(value, dict(attrs)) for value, attrs in observe(name) if math.isfinite(value)]

    return callback
