"""OTLP export, child spans of the server span, fork safety, light imports."""

import multiprocessing
import subprocess
import sys

import pytest
from fastapi import FastAPI
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Monitor, MonitorConfig, monitor

from http_helpers import RecordingServer


@pytest.mark.parametrize("via_env", [False, True])
def test_otlp_export_of_metrics_and_spans(monkeypatch, via_env):
    collector = RecordingServer()
    try:
        if via_env:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
            config = MonitorConfig()
        else:
            config = MonitorConfig(otlp_endpoint=collector.url + "/")
        mon = Monitor(config)
        predict = monitor(model="otlp-model", version="3", registry=mon)(lambda row: {"prediction": 0.4})
        for _ in range(3):
            predict({"x": 1.0})
        mon.shutdown()  # flushes the periodic metric reader and the batch span processor
    finally:
        collector.shutdown()
    paths = {path for path, _ in collector.received}
    assert paths == {"/v1/metrics", "/v1/traces"}
    counts = {}
    for path, body in collector.received:
        if path != "/v1/metrics":
            continue
        request = ExportMetricsServiceRequest.FromString(body)
        for rm in request.resource_metrics:
            resource = {a.key: a.value.string_value for a in rm.resource.attributes}
            assert resource["service.instance.id"] and resource["service.name"] == "mlmon"
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == "mlmon.predictions":
                        counts["predictions"] = max(p.as_int for p in metric.sum.data_points)
    assert counts == {"predictions": 3}
    spans = [span for path, body in collector.received if path == "/v1/traces"
             for rs in ExportTraceServiceRequest.FromString(body).resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    assert [s.name for s in spans] == ["mlmon.inference otlp-model"] * 3


def test_our_span_is_a_child_of_the_server_span(harness):
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = FastAPI()

    @app.post("/predict")
    @monitor(model="m", registry=harness.monitor)
    async def predict(row: dict) -> dict:
        return {"prediction": 1.0}

    instrument_app(app, registry=harness.monitor)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=harness.tracer_provider)
    try:
        with TestClient(app) as client:
            pid = client.post("/predict", json={"a": 1.0}).headers["x-prediction-id"]
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    spans = harness.finished_spans()
    server = [s for s in spans if s.kind.name == "SERVER"]
    ours = [s for s in spans if s.name == "mlmon.inference m"]
    assert len(server) == 1 and len(ours) == 1
    assert ours[0].parent.span_id == server[0].context.span_id
    assert ours[0].attributes["mlmon.prediction.id"] == pid


def _child(mon, conn):
    mon.model("forked").record({"a": 1.0}, 0.5)
    mon.flush()
    health = mon.health()
    conn.send((mon.telemetry.instance_id, health["models"]["forked"]["predictions"], mon.pipeline.running))
    conn.close()


def test_after_fork_the_child_starts_its_own_telemetry_and_drops_the_parents_queue():
    mon = Monitor(MonitorConfig(tracing=False, flush_interval=3600))
    mon.model("forked").record({"a": 1.0}, 0.5)
    mon.model("forked").record({"a": 2.0}, 0.5)  # both still queued in the parent at the fork
    parent_instance = mon.telemetry.instance_id
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(mon, sender))
    proc.start()
    child_instance, child_counts, child_thread_alive = receiver.recv()
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert child_instance != parent_instance and child_thread_alive
    assert child_counts == {"ok": 1, "error": 0}  # the parent's queued records stay the parent's
    mon.flush()
    assert mon.model("forked").health()["predictions"] == {"ok": 2, "error": 0}
    mon.shutdown()


def test_importing_and_using_the_core_loads_no_framework_or_ml_library():
    script = (
        "import sys\n"
        "from mlmon_middleware import Monitor, MonitorConfig, monitor\n"
        "mon = Monitor(MonitorConfig(tracing=False))\n"
        "f = monitor(model='m', registry=mon)(lambda row: {'prediction': 0.5})\n"
        "f({'a': 1.0, 'b': 'x'}); mon.flush(); mon.telemetry.prometheus_text(); mon.shutdown()\n"
        "heavy = ['fastapi', 'starlette', 'pydantic', 'pandas', 'sklearn', 'shap', 'bentoml', 'scipy']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def _child_ids(conn):
    from mlmon_middleware.ids import new_prediction_id

    conn.send([new_prediction_id() for _ in range(300)])
    conn.close()


def test_prediction_ids_are_unique_across_threads_and_forked_workers():
    import concurrent.futures

    from mlmon_middleware.ids import new_prediction_id

    new_prediction_id()  # the parent holds a partly used buffer when it forks
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [ctx.Process(target=_child_ids, args=(sender,)) for _, sender in pipes]
    for p in procs:
        p.start()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ours = list(pool.map(lambda _: new_prediction_id(), range(5000)))
    children = [receiver.recv() for receiver, _ in pipes]
    for p in procs:
        p.join(timeout=30)
    every = ours + children[0] + children[1]
    assert len(set(every)) == len(every) == 5600
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in every)
