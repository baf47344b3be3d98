"""Every OpenTelemetry instrument and span of mlmon, their names, and the exporters.

The table ``INSTRUMENTS`` is the single place metric names, units and descriptions live;
``docs/metrics.md`` documents the same list. OTel names use dots and UCUM units; the
Prometheus exporter turns ``mlmon.inference.duration`` (unit ``s``) into
``mlmon_inference_duration_seconds``, counters get ``_total``, and attribute names such as
``mlmon.model.name`` become labels such as ``mlmon_model_name``.

Exporters:
* Prometheus text from a *private* ``CollectorRegistry`` (BentoML and others own the global
  one); served by the FastAPI adapter at ``/metrics`` or on ``MLMON_PROMETHEUS_PORT``.
* OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``MonitorConfig.otlp_endpoint`` is set
  (extra ``[otlp]``).
* Any reader passed in ``MonitorConfig.metric_readers`` (tests use ``InMemoryMetricReader``).
A provider passed in the config is used as it is; global providers are never set unless
``set_global_providers=True``.

Instruments are fed by the background pipeline, never on the request path: an SDK
``Counter.add`` or ``Histogram.record`` costs about 5 µs (attribute cleaning and hashing),
more than the whole capture on the request path.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mlmon_middleware._version import __version__
from mlmon_middleware.config import MonitorConfig

logger = logging.getLogger("mlmon_middleware")

SCOPE = "mlmon_middleware"

# Semantic-conventions buckets for HTTP server durations (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Predictions are mostly probabilities or class indices; the tail covers small regressions.
PREDICTION_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0,
                      2.0, 5.0, 10.0, 100.0, 1000.0, 10000.0)

# Attribute keys (OTel names; Prometheus labels replace the dots with underscores).
MODEL_NAME = "mlmon.model.name"
MODEL_VERSION = "mlmon.model.version"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
PREDICTION_ID = "mlmon.prediction.id"


@dataclasses.dataclass(frozen=True)
class InstrumentSpec:
    """One metric: OTel name, kind, UCUM unit, meaning, and the Prometheus name it exports as."""

    name: str
    kind: str  # counter | histogram | observable_counter | observable_gauge
    unit: str
    description: str
    prometheus: str
    buckets: tuple[float, ...] | None = None


INSTRUMENTS: dict[str, InstrumentSpec] = {spec.name: spec for spec in (
    InstrumentSpec("mlmon.predictions", "counter", "{prediction}",
                   "Monitored inference calls, by route and outcome (ok/error).",
                   "mlmon_predictions_total"),
    InstrumentSpec("mlmon.inference.duration", "histogram", "s",
                   "Duration of monitored inference calls, by route, status code and error type.",
                   "mlmon_inference_duration_seconds", DURATION_BUCKETS),
    InstrumentSpec("mlmon.prediction.value", "histogram", "1",
                   "Numeric prediction values, one observation per row and output.",
                   "mlmon_prediction_value", PREDICTION_BUCKETS),
    InstrumentSpec("mlmon.capture.errors", "counter", "{error}",
                   "Inputs or outputs that could not be captured, by reason; the response is unaffected.",
                   "mlmon_capture_errors_total"),
    InstrumentSpec("mlmon.monitor.errors", "observable_counter", "{error}",
                   "Failures inside monitoring itself, by stage; serving continued.",
                   "mlmon_monitor_errors_total"),
    InstrumentSpec("mlmon.reservoir.size", "observable_gauge", "{row}",
                   "Rows currently held in the model's analysis window.",
                   "mlmon_reservoir_size"),
)}


class _FlushBeforeCollect:
    """Registered first on the private registry, so every scrape first drains the pipeline
    and sees exact counts."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def describe(self) -> list:
        return []

    def collect(self) -> list:
        self._flush()
        return []


class Telemetry:
    """Meter and tracer of one process, with the instruments of ``INSTRUMENTS``.

    Created lazily in the serving process (after any fork), so each worker gets its own
    ``service.instance.id`` and its own exporter threads.
    """

    def __init__(self, config: MonitorConfig, *, flush: Callable[[], None],
                 monitor_errors: Callable[[], dict[str, int]],
                 reservoir_sizes: Callable[[], Iterable[tuple[dict[str, str], int]]]) -> None:
        self.instance_id = str(uuid.uuid4())
        self.resource = Resource.create({
            "service.name": config.resolved_service_name(),
            "service.instance.id": self.instance_id,
            "mlmon.version": __version__,
        })
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FlushBeforeCollect(flush))
        self._owned: list[Any] = []  # providers and servers we created and must shut down
        self._http_server = None
        self.meter_provider = self._meter_provider(config)
        meter = self.meter_provider.get_meter(SCOPE, __version__)
        self.predictions = self._create(meter, "mlmon.predictions")
        self.inference_duration = self._create(meter, "mlmon.inference.duration")
        self.prediction_value = self._create(meter, "mlmon.prediction.value")
        self.capture_errors = self._create(meter, "mlmon.capture.errors")

        def observe_errors(_: CallbackOptions) -> list[Observation]:
            return [Observation(n, {"stage": stage}) for stage, n in monitor_errors().items()]

        def observe_sizes(_: CallbackOptions) -> list[Observation]:
            return [Observation(size, attrs) for attrs, size in reservoir_sizes()]

        self._create(meter, "mlmon.monitor.errors", callbacks=[observe_errors])
        self._create(meter, "mlmon.reservoir.size", callbacks=[observe_sizes])
        self.tracer = self._tracer(config)
        if config.prometheus_port is not None:
            self._serve_prometheus(config.prometheus_addr, config.prometheus_port)

    @staticmethod
    def _create(meter: otel_metrics.Meter, name: str, callbacks: list | None = None) -> Any:
        spec = INSTRUMENTS[name]
        if spec.kind == "counter":
            return meter.create_counter(name, unit=spec.unit, description=spec.description)
        if spec.kind == "histogram":
            return meter.create_histogram(name, unit=spec.unit, description=spec.description,
                                          explicit_bucket_boundaries_advisory=list(spec.buckets or ()))
        if spec.kind == "observable_counter":
            return meter.create_observable_counter(name, callbacks, unit=spec.unit, description=spec.description)
        return meter.create_observable_gauge(name, callbacks, unit=spec.unit, description=spec.description)

    def _meter_provider(self, config: MonitorConfig) -> otel_metrics.MeterProvider:
        if config.meter_provider is not None:
            return config.meter_provider
        readers = [PrometheusMetricReader(registry=self.registry, scope_info_enabled=False), *config.metric_readers]
        endpoint = config.resolved_otlp_endpoint()
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=_otlp_url(endpoint, "metrics"))))
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
            return config.tracer_provider.get_tracer(SCOPE, __version__)
        endpoint = config.resolved_otlp_endpoint()
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=self.resource)
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_otlp_url(endpoint, "traces"))))
            self._owned.append(provider)
            if config.set_global_providers:
                otel_trace.set_tracer_provider(provider)
            return provider.get_tracer(SCOPE, __version__)
        from opentelemetry.sdk.trace import TracerProvider

        if config.tracing or isinstance(otel_trace.get_tracer_provider(), TracerProvider):
            return otel_trace.get_tracer(SCOPE, __version__)
        return None

    def _serve_prometheus(self, addr: str, port: int) -> None:
        from prometheus_client import start_http_server

        self._http_server, _ = start_http_server(port, addr=addr, registry=self.registry)
        logger.info("mlmon: Prometheus metrics on http://%s:%d/metrics", addr, self._http_server.server_port)

    @property
    def prometheus_port(self) -> int | None:
        """The port of our own metrics server, when ``prometheus_port`` is set (useful with 0)."""
        return None if self._http_server is None else self._http_server.server_port

    def prometheus_text(self) -> tuple[bytes, str]:
        """The Prometheus exposition of our private registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
        for owned in self._owned:
            owned.shutdown()


def _otlp_url(endpoint: str, signal: str) -> str:
    """OTLP/HTTP signal URL from a base endpoint, as the OTEL_EXPORTER_OTLP_ENDPOINT spec says."""
    return f"{endpoint.rstrip('/')}/v1/{signal}"
