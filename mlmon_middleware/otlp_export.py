"""mlmon's own OTLP exporters: which class a signal's protocol needs, and how the
pre-aggregated histograms join what the SDK exports.

:func:`build_exporter` builds the exporter :func:`~mlmon_middleware.otel_env.otlp_target` asks for
(OTLP/HTTP from the ``[otlp]`` extra, or gRPC from ``opentelemetry-exporter-otlp-proto-grpc``)
with the endpoint and timeout resolved there; the exporter itself reads the headers,
compression and certificates. A package that is missing is a warning logged once, naming what
to install, never an error: the service runs on without that export (health lists it).

:class:`WithHistograms` wraps the OTLP metric exporter (public ``MetricExporter`` API only) and
adds mlmon's pre-aggregated histograms, with their exemplars, to every export.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import Counter as SdkCounter
from opentelemetry.sdk.metrics import Exemplar as OtelExemplar
from opentelemetry.sdk.metrics import Histogram as SdkHistogramInstrument
from opentelemetry.sdk.metrics import ObservableCounter as SdkObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from mlmon_middleware._version import __version__
from mlmon_middleware.config import MonitorConfig
from mlmon_middleware.histograms import PreaggregatedHistogram
from mlmon_middleware.otel_env import GRPC, OtlpTarget, otlp_target
from mlmon_middleware.pacing import switching

logger = logging.getLogger("mlmon_middleware")

SCOPE = "mlmon_middleware"  # the instrumentation scope of every mlmon instrument and span

#: (protocol, signal) -> the exporter class's module and name
EXPORTERS = {
    ("http/protobuf", "traces"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("http/protobuf", "metrics"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("grpc", "traces"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("grpc", "metrics"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
}
_warned: set[str] = set()  # start-up warnings already logged by this process


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning("mlmon: %s", message)


def exporter_class(target: OtlpTarget) -> Any | None:
    """The OTLP exporter class ``target``'s protocol needs, or None when its package is not
    installed: then a warning naming the package is logged once and the service runs without
    that export (a missing optional package never stops a service)."""
    module, name = EXPORTERS[(target.protocol, target.signal)]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        if target.protocol == GRPC:
            _warn_once("OTLP export over grpc is configured (OTEL_EXPORTER_OTLP_PROTOCOL) but the gRPC exporter is "
                       "not installed: pip install opentelemetry-exporter-otlp-proto-grpc (or set http/protobuf and "
                       "pip install 'mlmon-middleware[otlp]'); mlmon runs without that OTLP export")
        else:
            _warn_once("OTLP export is configured (otlp_endpoint / OTEL_EXPORTER_OTLP_*) but its exporter is not "
                       "installed: pip install 'mlmon-middleware[otlp]'; mlmon runs without OTLP export")
        return None


def app_tracer_provider() -> TracerProvider | None:
    """The global tracer provider when the app installed an SDK one (else None)."""
    provider = otel_trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def check_exporters(config: MonitorConfig, environ: Mapping[str, str] | None = None) -> None:
    """At start-up, warn (once) about each OTLP exporter the config asks mlmon to build that is
    not installed, and about variables read otherwise than a Python user may think."""
    environ = os.environ if environ is None else environ
    signals = [] if config.meter_provider is not None else ["metrics"]
    if config.tracing is not False and config.tracer_provider is None and app_tracer_provider() is None:
        signals.append("traces")
    for signal in signals:
        target = otlp_target(signal, config.otlp_endpoint, environ)
        if target is not None:
            for note in target.notes:
                _warn_once(note)
            exporter_class(target)


def build_exporter(signal: str, config: MonitorConfig, environ: Mapping[str, str], problems: list[str]) -> Any | None:
    """Our OTLP exporter of ``signal`` when one is configured and installed (else None,
    the reason warned once and listed by health)."""
    target = otlp_target(signal, config.otlp_endpoint, environ)
    if target is None:
        return None
    for note in target.notes:
        _warn_once(note)
    cls = exporter_class(target)
    if cls is None:
        problems.append(f"OTLP {signal} to {target.endpoint}: the {target.protocol} exporter is not installed")
        return None
    logger.info("mlmon: OTLP %s to %s (%s, timeout %g s)", signal, target.endpoint, target.protocol, target.timeout)
    return cls(endpoint=target.endpoint, timeout=target.timeout)


class WithHistograms(MetricExporter):
    """An exporter (OTLP) that sends our pre-aggregated histograms, with their exemplars, under
    our scope beside what the SDK collected: public ``MetricExporter`` API only. They are
    cumulative whatever the temporality preference (OTLP carries each metric's own)."""

    def __init__(self, exporter: MetricExporter, histograms: list[PreaggregatedHistogram], resource: Resource,
                 temporality: str) -> None:
        delta = {"delta": (SdkCounter, SdkHistogramInstrument, SdkObservableCounter),
                 "lowmemory": (SdkCounter, SdkHistogramInstrument)}.get(temporality, ())
        super().__init__(preferred_temporality={kind: AggregationTemporality.DELTA for kind in delta})
        self._exporter, self._histograms, self._resource = exporter, histograms, resource

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        with switching.working():  # the SDK's exporting thread: background work like the pipeline's
            result: MetricExportResult = self._exporter.export(self._with_histograms(metrics_data),
                                                               timeout_millis=timeout_millis, **kwargs)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return bool(self._exporter.force_flush(timeout_millis=timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis, **kwargs)

    def _with_histograms(self, metrics_data: MetricsData) -> MetricsData:
        now = time.time_ns()
        extra = [m for m in (_metric(h, now) for h in self._histograms) if m is not None]
        if not extra:
            return metrics_data
        resource_metrics = list(metrics_data.resource_metrics)
        if not resource_metrics:
            resource_metrics = [ResourceMetrics(resource=self._resource, scope_metrics=[], schema_url="")]
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


def _metric(histogram: PreaggregatedHistogram, now_ns: int) -> Metric | None:
    """A pre-aggregated histogram as the SDK's cumulative ``Metric``, or None before the first value."""
    spec, bounds = histogram.spec, list(histogram.spec.buckets or ())
    points = [HistogramDataPoint(
        attributes=p.attributes, start_time_unix_nano=histogram.start_ns, time_unix_nano=now_ns, count=p.count,
        sum=p.sum, bucket_counts=p.bucket_counts, explicit_bounds=bounds, min=p.min, max=p.max,
        exemplars=[OtelExemplar({}, e.value, e.time_ns, e.span_id, e.trace_id) for e in p.exemplars if e is not None])
        for p in histogram.points()]
    if not points:
        return None
    return Metric(name=spec.name, description=spec.description, unit=spec.unit,
                  data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE))
