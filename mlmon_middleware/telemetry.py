"""Every OpenTelemetry instrument and span of mlmon, their names, and the exporters.

The only module of the package that imports OpenTelemetry. Names, units and buckets come
from the one table in :mod:`~mlmon_middleware.instruments`.

Exporters:
* Prometheus text from a *private* ``CollectorRegistry`` (BentoML and others own the global
  one); served by the FastAPI adapter at ``/metrics`` or on ``MLMON_PROMETHEUS_PORT``.
* OTLP/HTTP when ``MonitorConfig.otlp_endpoint`` or OpenTelemetry's variables say so
  (:meth:`~mlmon_middleware.config.MonitorConfig.otlp_exports`; extra ``[otlp]``), each process
  as its own ``service.instance.id``: a backend sums the instances.
* Any reader passed in ``MonitorConfig.metric_readers`` (tests use ``InMemoryMetricReader``).
A provider passed in the config is used as it is; global providers are never set unless
``set_global_providers=True``.

Instruments are fed by the background pipeline, never on the request path. Counters go
through the SDK once per flush and attribute set. Histograms are aggregated by
:class:`PreaggregatedHistogram` (numpy, a whole flush at once) and merged into what every
reader of our provider receives: the SDK's ``Histogram.record`` costs about 6 µs per value
(attribute cleaning and hashing), which at two values per request was the largest cost of
monitoring. With a meter provider of the user's own we cannot reach its readers, so there the
SDK's histograms are used value by value (:class:`SdkHistogram`).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.context import get_current as get_current_context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

from mlmon_middleware import instruments as names
from mlmon_middleware._version import __version__
from mlmon_middleware.config import ConfigError, MonitorConfig
from mlmon_middleware.instruments import INSTRUMENTS, InstrumentSpec
from mlmon_middleware.merge import MergedCollector

logger = logging.getLogger("mlmon_middleware")

SCOPE = "mlmon_middleware"
#: ports tried from ``prometheus_port`` up: one per worker process of a multi-process server
PORT_SPAN = 64


class HistogramSink(Protocol):
    """Where the pipeline puts a flush's worth of values for one attribute set."""

    def observe(self, values: np.ndarray, attributes: Mapping[str, Any]) -> None: ...


MAX_SERIES = 2000  # attribute sets per histogram, as the SDK's default cardinality limit
OVERFLOW = (("otel.metric.overflow", True),)


class PreaggregatedHistogram:
    """An explicit-bucket histogram aggregated by mlmon, cumulative since ``start_ns``.

    Same semantics as the SDK's explicit-bucket aggregation (bucket ``i`` holds values in
    ``(bounds[i-1], bounds[i]]``, plus count, sum, min and max), but a whole array of values
    is added with one ``searchsorted``. Unlike the SDK it keeps negative values (regression
    predictions); NaN and infinities are skipped. Past ``MAX_SERIES`` attribute sets, values
    go to one overflow series, as in the SDK.

    >>> h = PreaggregatedHistogram(INSTRUMENTS["mlmon.inference.duration"], start_ns=0)
    >>> h.observe(np.array([0.003, 0.02, 0.02, 20.0]), {"http.route": "/p"})
    >>> point = h.metric(now_ns=1).data.data_points[0]
    >>> point.count, point.sum, point.bucket_counts[:3], point.bucket_counts[-1], point.max
    (4, 20.043, [1, 0, 2], 1, 20.0)
    """

    def __init__(self, spec: InstrumentSpec, start_ns: int) -> None:
        self.spec = spec
        self.bounds = np.asarray(spec.buckets, dtype=np.float64)
        self._start_ns = start_ns
        self._lock = threading.Lock()
        # attributes (sorted items) -> [bucket counts, count, sum, min, max]
        self._series: dict[tuple[tuple[str, Any], ...], list[Any]] = {}

    def observe(self, values: np.ndarray, attributes: Mapping[str, Any]) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        key = tuple(sorted(attributes.items()))
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds) + 1)
        total, low, high = float(values.sum()), float(values.min()), float(values.max())
        with self._lock:
            series = self._series.get(key)
            if series is None:
                if len(self._series) >= MAX_SERIES:
                    key = OVERFLOW
                    series = self._series.get(key)
                if series is None:
                    series = self._series[key] = [np.zeros(len(self.bounds) + 1, dtype=np.int64), 0, 0.0,
                                                  np.inf, -np.inf]
            series[0] += counts
            series[1] += values.size
            series[2] += total
            series[3] = min(series[3], low)
            series[4] = max(series[4], high)

    def metric(self, now_ns: int) -> Metric | None:
        """The cumulative histogram as an OTel ``Metric``, or None before the first value."""
        with self._lock:
            points = [HistogramDataPoint(attributes=dict(key), start_time_unix_nano=self._start_ns,
                                         time_unix_nano=now_ns, count=count, sum=total,
                                         bucket_counts=buckets.tolist(), explicit_bounds=list(self.spec.buckets or ()),
                                         min=low, max=high)
                      for key, (buckets, count, total, low, high) in self._series.items()]
        if not points:
            return None
        return Metric(name=self.spec.name, description=self.spec.description, unit=self.spec.unit,
                      data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE))


class SdkHistogram:
    """A histogram of a meter provider we do not own: the SDK aggregates value by value
    (it drops negative values, as OTel histograms require)."""

    def __init__(self, instrument: Any) -> None:
        self._record = instrument.record

    def observe(self, values: np.ndarray, attributes: Mapping[str, Any]) -> None:
        for value in np.asarray(values, dtype=np.float64).tolist():
            if value >= 0 and value != np.inf:
                self._record(value, attributes)


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


class Telemetry:
    """Meter and tracer of one process, with the instruments of ``INSTRUMENTS``.

    Created lazily in the serving process (after any fork), so each worker gets its own
    ``service.instance.id`` and its own exporter threads. ``merged``, when this worker shares
    with others, gives the server's families: then a scrape (``/metrics``, the metrics port)
    answers with those rather than this process's own (:attr:`registry`).
    """

    def __init__(self, config: MonitorConfig, *, flush: Callable[[], None],
                 observe: Callable[[str], Iterable[tuple[float, Mapping[str, Any]]]],
                 merged: Callable[[], list[Any]] | None = None) -> None:
        self.instance_id = str(uuid.uuid4())
        self.resource = Resource.create({
            "service.name": config.resolved_service_name(),
            "service.instance.id": self.instance_id,
            "mlmon.version": __version__,
        })
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FlushBeforeCollect(flush))
        self.scraped = self.registry  # what /metrics and the metrics port answer with
        if merged is not None:
            self.scraped = CollectorRegistry(auto_describe=False)
            self.scraped.register(MergedCollector(merged))
        self._owned: list[Any] = []  # providers and servers we created and must shut down
        self._http_server: WSGIServer | None = None
        self.problems: list[str] = []  # what could not be set up (health lists it)
        self._histograms: list[PreaggregatedHistogram] = []
        self.meter_provider = self._meter_provider(config)
        meter = self.meter_provider.get_meter(SCOPE, __version__)
        self.predictions = self._create(meter, names.PREDICTIONS)
        self.capture_errors = self._create(meter, names.CAPTURE_ERRORS)
        self.labels = self._create(meter, names.LABELS)
        self.explanations = self._create(meter, names.EXPLANATIONS)
        own = config.meter_provider is None  # our readers: histograms pre-aggregated by us
        self.explanation_duration = self._histogram(meter, names.EXPLANATION_DURATION, own)
        self.label_delay = self._histogram(meter, names.LABEL_DELAY, own)
        self.inference_duration = self._histogram(meter, names.INFERENCE_DURATION, own)
        self.prediction_value = self._histogram(meter, names.PREDICTION_VALUE, own)

        for spec in INSTRUMENTS.values():  # observable instruments read the monitor's state at collection
            if spec.kind.startswith("observable"):
                self._create(meter, spec.name, callbacks=[_observer(observe, spec.name)])
        self.tracer = self._tracer(config)
        if config.prometheus_port is not None:
            self._serve_prometheus(config.prometheus_addr, config.prometheus_port)

    @staticmethod
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

    def _histogram(self, meter: otel_metrics.Meter, name: str, own: bool) -> HistogramSink:
        if not own:
            return SdkHistogram(self._create(meter, name))
        histogram = PreaggregatedHistogram(INSTRUMENTS[name], start_ns=time.time_ns())
        self._histograms.append(histogram)
        return histogram

    def _merge_histograms(self, reader: MetricReader) -> MetricReader:
        """Make ``reader`` receive our pre-aggregated histograms with every collection.

        ``_receive_metrics`` is the method every SDK reader implements and ``collect()``
        calls with the SDK's data; wrapping it on the instance adds our histograms to that
        data under our scope, whatever the reader (Prometheus, OTLP, in-memory, ...).
        """
        receive = reader._receive_metrics

        def receive_with_histograms(metrics_data: MetricsData, *args: Any, **kwargs: Any) -> Any:
            return receive(self._with_histograms(metrics_data), *args, **kwargs)

        reader._receive_metrics = receive_with_histograms  # type: ignore[method-assign]
        return reader

    def _with_histograms(self, metrics_data: MetricsData) -> MetricsData:
        now = time.time_ns()
        extra = [m for m in (h.metric(now) for h in self._histograms) if m is not None]
        if not extra:
            return metrics_data
        resource_metrics = list(metrics_data.resource_metrics)
        if not resource_metrics:
            resource_metrics = [ResourceMetrics(resource=self.resource, scope_metrics=[], schema_url="")]
        first = resource_metrics[0]
        scopes = list(first.scope_metrics)
        # Into our scope's entry when the SDK has one: exporters key scopes by name (OTLP keeps one).
        ours = next((i for i, sm in enumerate(scopes) if sm.scope.name == SCOPE), None)
        if ours is None:
            scopes.append(ScopeMetrics(scope=InstrumentationScope(SCOPE, __version__), metrics=extra, schema_url=""))
        else:
            sm = scopes[ours]
            scopes[ours] = ScopeMetrics(scope=sm.scope, metrics=[*sm.metrics, *extra], schema_url=sm.schema_url)
        resource_metrics[0] = ResourceMetrics(resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url)
        return MetricsData(resource_metrics=resource_metrics)

    def _meter_provider(self, config: MonitorConfig) -> otel_metrics.MeterProvider:
        if config.meter_provider is not None:
            provider: otel_metrics.MeterProvider = config.meter_provider
            return provider
        readers = [PrometheusMetricReader(registry=self.registry, scope_info_enabled=False), *config.metric_readers]
        if config.otlp_exports("metrics"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            # without an endpoint of ours the exporter reads the OTEL_EXPORTER_OTLP_* variables itself
            exporter = OTLPMetricExporter(endpoint=_otlp_endpoint(config, "metrics"))
            readers.append(PeriodicExportingMetricReader(exporter))
        readers = [self._merge_histograms(reader) for reader in readers]
        provider = MeterProvider(metric_readers=readers, resource=self.resource,
                                 exemplar_filter=AlwaysOffExemplarFilter())
        self._owned.append(provider)
        if config.set_global_providers:
            otel_metrics.set_meter_provider(provider)
        return provider

    def _tracer(self, config: MonitorConfig) -> otel_trace.Tracer | None:
        if config.tracing is False:
            return None
        if config.tracer_provider is not None:
            given: otel_trace.TracerProvider = config.tracer_provider
            return given.get_tracer(SCOPE, __version__)
        if config.otlp_exports("traces"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=self.resource)
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_otlp_endpoint(config, "traces"))))
            self._owned.append(provider)
            if config.set_global_providers:
                otel_trace.set_tracer_provider(provider)
            return provider.get_tracer(SCOPE, __version__)
        from opentelemetry.sdk.trace import TracerProvider

        if config.tracing or isinstance(otel_trace.get_tracer_provider(), TracerProvider):
            return otel_trace.get_tracer(SCOPE, __version__)
        return None

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
             error_type: str | None = None) -> None:
        """Record a finished span (the pipeline creates spans after the fact, with their real times)."""
        if self.tracer is None:
            return
        span = self.tracer.start_span(name, context=parent if isinstance(parent, Context) else None,
                                      attributes=attributes, start_time=start_ns)
        if error_type:
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(end_time=end_ns)

    @property
    def prometheus_port(self) -> int | None:
        """The port of our own metrics server, when ``prometheus_port`` is set (useful with 0)."""
        return None if self._http_server is None else self._http_server.server_port

    def prometheus_text(self) -> tuple[bytes, str]:
        """The Prometheus exposition of what a scrape sees (this worker's registry, or every
        worker's when they share) and its content type."""
        return generate_latest(self.scraped), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
        for owned in self._owned:
            owned.shutdown()


def check_exporters(config: MonitorConfig) -> None:
    """Raise a ConfigError at start-up when the config asks for an exporter that is not installed."""
    if (config.otlp_exports("metrics") and config.meter_provider is None) or \
            (config.otlp_exports("traces") and config.tracer_provider is None and config.tracing is not False):
        try:
            import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        except ImportError:
            raise ConfigError("OTLP export is configured (otlp_endpoint / OTEL_EXPORTER_OTLP_ENDPOINT) but "
                              "its exporter is not installed: pip install 'mlmon-middleware[otlp]'") from None


def _observer(observe: Callable[[str], Iterable[tuple[float, Mapping[str, Any]]]], name: str
              ) -> Callable[[CallbackOptions], list[Observation]]:
    def callback(_: CallbackOptions) -> list[Observation]:
        return [Observation(value, dict(attrs)) for value, attrs in observe(name)]

    return callback


def _otlp_endpoint(config: MonitorConfig, signal: str) -> str | None:
    """The exporter's ``endpoint``: the signal's URL under ``otlp_endpoint`` (as the
    OTEL_EXPORTER_OTLP_ENDPOINT spec builds it), or None, so the exporter reads the variables."""
    return f"{config.otlp_endpoint.rstrip('/')}/v1/{signal}" if config.otlp_endpoint else None
