"""OpenTelemetry as its users expect it (issue 16.2): the SDK's environment variables for
exporters and endpoints, the app's global providers, a missing exporter package, exemplars."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import types

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from mlmon_middleware import Monitor, MonitorConfig, monitor, otlp_export
from mlmon_middleware.otel_env import otlp_target

from http_helpers import RecordingServer

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each test sees mlmon's once-per-process start-up warnings afresh."""
    monkeypatch.setattr(otlp_export, "_warned", set())


def serve(config: MonitorConfig, calls: int = 2, prediction: float = 0.25) -> Monitor:
    """A monitor that has served ``calls`` predictions (flushed)."""
    mon = Monitor(config)
    predict = monitor(model="m", registry=mon)(lambda row: {"prediction": prediction})
    for i in range(calls):
        predict({"x": float(i)})
    mon.flush()
    return mon


def posted(collector: RecordingServer) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for path, body in collector.received:
        out.setdefault(path, []).append(body)
    return out


def exported_via(monkeypatch, env: dict[str, str], config: MonitorConfig | None = None) -> RecordingServer:
    """Serve two predictions with ``env`` set (``{url}``: a local OTLP receiver) and shut down,
    which flushes the exporters; the receiver, stopped, with what it got."""
    collector = RecordingServer()
    try:
        for name, value in env.items():
            monkeypatch.setenv(name, value.format(url=collector.url))
        serve(config or MonitorConfig()).shutdown()
    finally:
        collector.shutdown()
    return collector


# ---------------------------------------------------------------------------- exporters, endpoints

def test_a_traces_endpoint_alone_exports_traces_and_only_traces(monkeypatch):
    collector = exported_via(monkeypatch, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "{url}/v1/traces"})
    assert set(posted(collector)) == {"/v1/traces"}


@pytest.mark.parametrize("off, still", [("TRACES", "/v1/metrics"), ("METRICS", "/v1/traces")])
def test_exporter_none_turns_one_signal_off(monkeypatch, off, still):
    collector = exported_via(monkeypatch, {"OTEL_EXPORTER_OTLP_ENDPOINT": "{url}", f"OTEL_{off}_EXPORTER": "none"})
    assert set(posted(collector)) == {still}


@pytest.mark.parametrize("env, base, expected", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None, ("http/protobuf", "http://c:4318/v1/traces", 10.0)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"}, "http://m:2",
     ("http/protobuf", "http://t:1/x", 10.0)),  # the signal's own endpoint first
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://m:2/", ("http/protobuf", "http://m:2/v1/traces", 10.0)),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None,
     ("grpc", "http://c:4317", 10.0)),  # gRPC takes the endpoint as it is
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None, ("http/protobuf", "http://c:4318/v1/traces", 10.0)),
    ({"OTEL_TRACES_EXPORTER": "console,otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None,
     ("grpc", "http://localhost:4317", 10.0)),  # named explicitly: the specification's default endpoint
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
      "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "700"}, None, ("http/protobuf", "http://c:4318/v1/traces", 0.7)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}, None,
     ("http/protobuf", "http://c:4318/v1/traces", 2.5)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "console"}, None, None),
    ({"OTEL_METRICS_EXPORTER": "otlp"}, None, None),  # another signal's switch
    ({}, None, None),
])
def test_where_traces_go_as_the_variables_say(env, base, expected):
    target = otlp_target("traces", base, env)
    assert (None if target is None else (target.protocol, target.endpoint, target.timeout)) == expected


def test_variables_a_python_user_may_misread_are_warned_about_once(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="mlmon_middleware")
    for name, value in {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "10",
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_METRICS_EXPORTER": "none"}.items():
        monkeypatch.setenv(name, value)
    target = otlp_target("traces", None, dict(os.environ))
    assert target is not None and (target.protocol, target.timeout) == ("http/protobuf", 0.01)
    mon = Monitor(MonitorConfig(tracing=False))  # no exporter is built: nothing to warn about
    mon.start()
    mon.shutdown()
    assert not caplog.records
    mon = Monitor(MonitorConfig())  # traces are exported: both notes, once each
    mon.start()
    mon.shutdown()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "read as 10 ms" in messages[0] + messages[1] and "http/json" in messages[0] + messages[1]


def fake_grpc_exporters(monkeypatch) -> dict[str, tuple[dict, object]]:
    """gRPC exporter modules standing in for ``opentelemetry-exporter-otlp-proto-grpc`` (not a
    dependency): each class records the arguments it was built with, and what it exported."""
    built: dict[str, tuple[dict, object]] = {}

    class SpanExporter(InMemorySpanExporter):
        def __init__(self, **kwargs):
            super().__init__()
            built["traces"] = (kwargs, self)

    class MetricsExporter(MetricExporter):
        def __init__(self, **kwargs):
            super().__init__()
            self.exported = []
            built["metrics"] = (kwargs, self)

        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            self.exported.append(metrics_data)
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis=10_000):
            return True

        def shutdown(self, timeout_millis=30_000, **kwargs):
            pass

    for suffix, cls, attr in (("trace_exporter", SpanExporter, "OTLPSpanExporter"),
                              ("metric_exporter", MetricsExporter, "OTLPMetricExporter")):
        module = types.ModuleType(f"opentelemetry.exporter.otlp.proto.grpc.{suffix}")
        setattr(module, attr, cls)
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return built


def test_grpc_picks_the_grpc_exporters_with_the_endpoint_and_the_timeout_in_milliseconds(monkeypatch):
    built = fake_grpc_exporters(monkeypatch)
    for name, value in {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "3000"}.items():
        monkeypatch.setenv(name, value)
    mon = serve(MonitorConfig())
    mon.shutdown()
    assert built["traces"][0] == {"endpoint": "http://collector:4317", "timeout": 10.0}
    assert built["metrics"][0] == {"endpoint": "http://collector:4317", "timeout": 3.0}
    assert [s.name for s in built["traces"][1].get_finished_spans()] == ["mlmon.inference m"] * 2
    # our histograms reach the exporter beside the SDK's counters, under our scope
    last = built["metrics"][1].exported[-1]
    names = {m.name for rm in last.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"mlmon.predictions", "mlmon.inference.duration", "mlmon.prediction.value"} <= names
    assert len(last.resource_metrics[0].scope_metrics) == 1


def test_grpc_without_its_package_is_a_warning_and_the_service_runs_on(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="mlmon_middleware")
    for suffix in ("trace_exporter", "metric_exporter"):
        monkeypatch.setitem(sys.modules, f"opentelemetry.exporter.otlp.proto.grpc.{suffix}", None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    mon = serve(MonitorConfig())
    try:
        assert mon.health()["models"]["m"]["predictions"] == {"ok": 2, "error": 0}
        assert any("grpc exporter is not installed" in issue for issue in mon.health()["issues"])
    finally:
        mon.shutdown()
    [warning] = [r.getMessage() for r in caplog.records]
    assert "pip install opentelemetry-exporter-otlp-proto-grpc" in warning


def test_an_endpoint_without_the_otlp_extra_is_one_warning_not_a_crash(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="mlmon_middleware")
    for suffix in ("trace_exporter", "metric_exporter"):
        monkeypatch.setitem(sys.modules, f"opentelemetry.exporter.otlp.proto.http.{suffix}", None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    mon = serve(MonitorConfig(), calls=3)  # used to raise ConfigError here
    try:
        assert mon.health()["models"]["m"]["predictions"] == {"ok": 3, "error": 0}
        assert b"mlmon_predictions_total" in mon.telemetry.prometheus_text()[0]
        assert mon.telemetry.tracer is None  # tracing was on only for the OTLP export
    finally:
        mon.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pip install 'mlmon-middleware[otlp]'" in warnings[0], warnings


def test_headers_per_signal_endpoint_and_temporality_reach_the_collector(monkeypatch):
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    collector = exported_via(monkeypatch, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "{url}", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "{url}/custom/metrics",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=general", "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-api-key=metrics%20key",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}, MonitorConfig(tracer_provider=provider))
    assert {path for path, _ in collector.received} == {"/custom/metrics"}  # spans went to the provider given
    assert {h["x-api-key"] for h in collector.headers} == {"metrics key"}
    points, temporality = {}, {}
    for body in posted(collector)["/custom/metrics"]:
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics:
            for metric in (m for sm in rm.scope_metrics for m in sm.metrics):
                if metric.name == "mlmon.predictions":
                    temporality[metric.name] = metric.sum.aggregation_temporality
                elif metric.name == "mlmon.inference.duration":
                    temporality[metric.name] = metric.histogram.aggregation_temporality
                    points.setdefault("latency", []).extend(metric.histogram.data_points)
    assert temporality["mlmon.predictions"] == 1  # DELTA, as preferred
    assert temporality["mlmon.inference.duration"] == 2  # ours are CUMULATIVE, always
    # exemplars in the OTLP payload: the trace and span of the last monitored call
    last = spans.get_finished_spans()[-1]
    exemplar = points["latency"][-1].exemplars[0]
    assert int.from_bytes(exemplar.trace_id, "big") == last.context.trace_id
    assert int.from_bytes(exemplar.span_id, "big") == last.context.span_id


# -------------------------------------------------------------------------------- the app's providers

def test_the_apps_sdk_tracer_provider_is_used_and_lends_its_resource(monkeypatch):
    spans = InMemorySpanExporter()
    app = TracerProvider(resource=Resource.create({"service.name": "fraud-api", "deployment.environment": "prod"}))
    app.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: app)  # as after trace.set_tracer_provider(app)
    collector = RecordingServer()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    try:
        mon = serve(MonitorConfig())
        instance = mon.health()["instance_id"]
        mon.shutdown()
    finally:
        collector.shutdown()
    ours = [s for s in spans.get_finished_spans() if s.name == "mlmon.inference m"]
    assert len(ours) == 2 and ours[0].resource.attributes["service.name"] == "fraud-api"
    received = posted(collector)
    assert set(received) == {"/v1/metrics"}  # no tracer provider of ours: the app's exports the spans
    resources = [{a.key: a.value.string_value for a in rm.resource.attributes}
                 for body in received["/v1/metrics"] for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics]
    assert resources and all(r["service.name"] == "fraud-api" and r["deployment.environment"] == "prod"
                             and r["service.instance.id"] == instance and "mlmon.version" not in r for r in resources)


def test_with_the_apps_global_providers_mlmon_traces_into_them_and_still_serves_its_metrics():
    script = textwrap.dedent("""
        import json
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from mlmon_middleware import Monitor, MonitorConfig, monitor

        resource = Resource.create({"service.name": "app", "service.instance.id": "pod-1"})
        spans = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        app_reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[app_reader], resource=resource))
        mon = Monitor(MonitorConfig())
        predict = monitor(model="m", registry=mon)(lambda row: {"prediction": 0.25})
        with trace.get_tracer("app").start_as_current_span("request") as request:
            predict({"x": 1.0})
        text = mon.telemetry.prometheus_text("application/openmetrics-text")[0].decode()
        [ours] = [s for s in spans.get_finished_spans() if s.name == "mlmon.inference m"]
        app_data = app_reader.get_metrics_data()
        print(json.dumps({
            "parent": ours.parent.span_id == request.get_span_context().span_id,
            "span_service": ours.resource.attributes["service.name"],
            "target_info": [line for line in text.splitlines() if line.startswith("target_info")],
            "exemplar": f'trace_id="{ours.context.trace_id:032x}"' in text,
            "count": [line for line in text.splitlines() if line.startswith("mlmon_inference_duration_seconds_count")],
            "in_the_apps_provider": sorted({m.name for rm in (app_data.resource_metrics if app_data else [])
                                            for sm in rm.scope_metrics for m in sm.metrics}),
        }))
        mon.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["parent"] and found["span_service"] == "app" and found["exemplar"]
    [info] = found["target_info"]
    assert 'service_name="app"' in info and 'service_instance_id="pod-1"' in info
    assert len(found["count"]) == 1 and found["count"][0].endswith(" 1.0")
    assert found["in_the_apps_provider"] == []  # mlmon's metrics go through its own provider (docs/metrics.md)


def test_a_tracer_provider_given_lends_its_resource_to_the_metrics():
    provider = TracerProvider(resource=Resource.create({"service.name": "scorer", "service.instance.id": "worker-2"}))
    mon = serve(MonitorConfig(tracer_provider=provider))
    try:
        text, instance = mon.telemetry.prometheus_text()[0].decode(), mon.health()["instance_id"]
    finally:
        mon.shutdown()
    [info] = [line for line in text.splitlines() if line.startswith("target_info")]
    assert 'service_name="scorer"' in info and 'service_instance_id="worker-2"' in info and instance == "worker-2"


@pytest.mark.parametrize("env, service_name, expected", [
    ({}, None, "mlmon"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes,team=ml"}, None, "from-attributes"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes", "OTEL_SERVICE_NAME": "svc"}, None, "svc"),
    ({"OTEL_SERVICE_NAME": "svc"}, "explicit", "explicit"),
])
def test_our_own_resource_follows_the_otel_variables(monkeypatch, env, service_name, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mon = Monitor(MonitorConfig(tracing=False, service_name=service_name))
    try:
        attributes, instance = mon.telemetry.resource.attributes, mon.health()["instance_id"]
    finally:
        mon.shutdown()
    assert attributes["service.name"] == expected and attributes["mlmon.version"]
    assert attributes["service.instance.id"] == instance
    assert attributes.get("team") == ("ml" if "team=ml" in env.get("OTEL_RESOURCE_ATTRIBUTES", "") else None)


# ------------------------------------------------------------------------------------------ exemplars

def exemplars(text: bytes) -> dict[str, list]:
    """Exemplars of an OpenMetrics exposition by family (the parser also checks the format)."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text.decode()):
        out[family.name] = [s for s in family.samples if s.exemplar is not None]
    return out


def test_exemplars_link_the_latency_and_prediction_histograms_to_the_last_traced_call(harness):
    predict = monitor(model="m", registry=harness.monitor)(lambda row: {"prediction": 0.7})
    for i in range(3):
        predict({"x": float(i)})
    last = harness.finished_spans()[-1]
    ids = {"trace_id": f"{last.context.trace_id:032x}", "span_id": f"{last.context.span_id:016x}"}
    text, content_type = harness.monitor.telemetry.prometheus_text(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    found = exemplars(text)
    [latency] = found["mlmon_inference_duration_seconds"]
    [prediction] = found["mlmon_prediction_value"]
    assert latency.exemplar.labels == ids and prediction.exemplar.labels == ids
    assert prediction.exemplar.value == 0.7 and prediction.labels["le"] == "0.7"
    assert float(latency.labels["le"]) >= latency.exemplar.value
    assert b"trace_id" not in harness.monitor.telemetry.prometheus_text()[0]  # Prometheus text: none
    # the readers given (the SDK's own aggregation) get them too
    [(_, point)] = harness.points("mlmon.inference.duration")
    assert [(e.trace_id, e.span_id) for e in point.exemplars] == [(last.context.trace_id, last.context.span_id)]


def test_the_metrics_port_answers_openmetrics_with_exemplars(harness_factory):
    import httpx

    h = harness_factory(prometheus_port=0)
    monitor(model="m", registry=h.monitor)(lambda row: 1.0)({"x": 1.0})
    h.monitor.flush()
    url = f"http://127.0.0.1:{h.monitor.telemetry.prometheus_port}/metrics"
    answer = httpx.get(url, headers={"Accept": OPENMETRICS}, timeout=5)
    assert exemplars(answer.content)["mlmon_inference_duration_seconds"]


@pytest.mark.parametrize("how", ["tracing off", "filter off", "unsampled"])
def test_no_exemplars_without_a_sampled_trace(monkeypatch, how):
    provider = TracerProvider(sampler=ALWAYS_OFF) if how == "unsampled" else TracerProvider()
    if how == "filter off":
        monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")
    config = MonitorConfig(tracing=False) if how == "tracing off" else MonitorConfig(tracer_provider=provider)
    mon = serve(config)
    try:
        text, _ = mon.telemetry.prometheus_text(OPENMETRICS)
    finally:
        mon.shutdown()
    assert b"_count" in text and not any(exemplars(text).values())


def test_the_apps_metrics_route_answers_openmetrics_with_exemplars(harness):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mlmon_fastapi import instrument_app

    app = FastAPI()

    @app.post("/predict")
    @monitor(model="m", registry=harness.monitor)
    def predict(row: dict) -> dict:
        return {"prediction": 0.3}

    instrument_app(app, registry=harness.monitor)
    with TestClient(app) as client:
        assert client.post("/predict", json={"x": 1.0}).status_code == 200
        answer = client.get("/mlmon/metrics", headers={"Accept": OPENMETRICS})
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        assert exemplars(answer.content)["mlmon_inference_duration_seconds"]
        plain = client.get("/mlmon/metrics")
        assert plain.headers["content-type"].startswith("text/plain") and b"trace_id" not in plain.content


def test_a_tracer_provider_the_app_installs_in_its_lifespan_is_the_one_mlmon_traces_into():
    script = textwrap.dedent("""
        import contextlib, json
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from mlmon_fastapi import instrument_app
        from mlmon_middleware import Monitor, MonitorConfig, monitor

        spans = InMemorySpanExporter()

        @contextlib.asynccontextmanager
        async def lifespan(app):
            provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
            provider.add_span_processor(SimpleSpanProcessor(spans))
            trace.set_tracer_provider(provider)  # as apps do at their start-up
            yield

        app = FastAPI(lifespan=lifespan)
        mon = Monitor(MonitorConfig())

        @app.post("/predict")
        @monitor(model="m", registry=mon)
        def predict(row: dict) -> dict:
            return {"prediction": 0.5}

        instrument_app(app, registry=mon)
        with TestClient(app) as client:
            client.post("/predict", json={"x": 1.0})
            mon.flush()
        ours = [s for s in spans.get_finished_spans() if s.name == "mlmon.inference m"]
        print(json.dumps([s.resource.attributes["service.name"] for s in ours]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["shop"]
