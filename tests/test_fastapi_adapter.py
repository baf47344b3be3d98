"""instrument_app: middleware, /metrics, /mlmon/health, route templates, status codes, providers."""

import shutil
import subprocess
import sys
import textwrap

import httpx
import orjson
import pytest
from fastapi import FastAPI, HTTPException
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Monitor, MonitorConfig, monitor


def make_app(mon) -> FastAPI:
    app = FastAPI()

    @app.post("/models/{name}/predict")
    @monitor(model="iris", version="1.0", registry=mon)
    async def predict(name: str, row: dict) -> dict:
        if row.get("petal_length", 0) < 0:
            raise HTTPException(status_code=400, detail="negative length")
        if row.get("petal_length") == 99:
            raise ValueError("model failure")
        return {"prediction": "setosa" if row["petal_length"] < 2.5 else "virginica", "score": 0.9}

    @app.get("/plain")
    def plain() -> dict:
        return {"ok": True}

    instrument_app(app, registry=mon)
    return app


def test_routes_statuses_and_headers(harness):
    with TestClient(make_app(harness.monitor), raise_server_exceptions=False) as client:
        ok = client.post("/models/a/predict", json={"petal_length": 1.4})
        bad = client.post("/models/a/predict", json={"petal_length": -1})
        crash = client.post("/models/b/predict", json={"petal_length": 99})
        plain = client.get("/plain")
    assert ok.json() == {"prediction": "setosa", "score": 0.9} and len(ok.headers["x-prediction-id"]) == 32
    assert bad.status_code == 400 and "x-prediction-id" not in bad.headers
    assert crash.status_code == 500 and "x-prediction-id" not in crash.headers
    assert "x-prediction-id" not in plain.headers
    seen = {(a["http.route"], a["http.response.status_code"], a.get("error.type")): p.count
            for a, p in harness.points("mlmon.inference.duration")}
    assert seen == {("/models/{name}/predict", 200, None): 1, ("/models/{name}/predict", 400, "HTTPException"): 1,
                    ("/models/{name}/predict", 500, "ValueError"): 1}
    assert harness.total("mlmon.predictions", outcome="error") == 2
    snap = harness.monitor.model("iris").window_snapshot()
    assert snap["outputs"]["categorical"].tolist() == [["setosa"]]  # text predictions are kept as labels
    assert snap["outputs"]["numeric"].shape == (1, 0)  # "prediction" is read; "score" is not a prediction


def test_metrics_and_health_endpoints(harness):
    with TestClient(make_app(harness.monitor)) as client:
        client.post("/models/a/predict", json={"petal_length": 1.4, "petal_width": 0.2})
        client.post("/models/a/predict", json={"petal_length": 5.1, "petal_width": "wide"})
        metrics_response = client.get("/metrics")
        health = client.get("/mlmon/health")
    assert metrics_response.headers["content-type"].startswith("text/plain; version=")
    text = metrics_response.text
    assert 'mlmon_predictions_total{http_route="/models/{name}/predict",mlmon_model_name="iris",' \
           'mlmon_model_version="1.0",outcome="ok"} 2.0' in text
    assert 'mlmon_capture_errors_total{mlmon_model_name="iris",mlmon_model_version="1.0",reason="type_mismatch"} 1.0' in text
    assert "mlmon_inference_duration_seconds_bucket{" in text and 'le="0.005"' in text
    assert 'mlmon_reservoir_size{mlmon_model_name="iris",mlmon_model_version="1.0"} 2.0' in text
    body = orjson.loads(health.content)
    assert body["status"] == "ok" and body["queue"] == 0 and body["monitor_errors"] == {}
    iris = body["models"]["iris"]
    assert iris["predictions"] == {"ok": 2, "error": 0}
    assert iris["rows_in_window"] == 2 and iris["window_capacity"] == 10_000
    assert iris["features"] == {"petal_length": "numeric", "petal_width": "numeric"}
    assert iris["capture_errors"] == {"type_mismatch": 1}


def test_promtool_accepts_our_metrics(harness):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    harness.monitor.errors.report("ingest", message="synthetic failure")  # so the errors counter is there
    with TestClient(make_app(harness.monitor), raise_server_exceptions=False) as client:
        for length in (1.0, 3.0, -1, 99):
            client.post("/models/x/predict", json={"petal_length": length, "petal_width": 0.2})
        client.post("/models/x/predict", json={"petal_length": 1.0, "petal_width": "wide"})
        text = client.get("/metrics").content
    for name in (b"mlmon_monitor_errors_total", b"mlmon_capture_errors_total",
                 b"mlmon_inference_duration_seconds_bucket", b"mlmon_predictions_total", b"mlmon_reservoir_size"):
        assert name in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""  # not even lint warnings


def test_metrics_on_a_port_of_their_own(monkeypatch):
    monkeypatch.setenv("MLMON_PROMETHEUS_PORT", "0")  # 0: any free port, read back below
    mon = Monitor(MonitorConfig(tracing=False))
    try:
        @monitor(model="m", registry=mon)
        def predict(row: dict) -> float:
            return 1.0

        predict({"a": 1.0})
        port = mon.telemetry.prometheus_port
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'mlmon_predictions_total{http_route="",mlmon_model_name="m",mlmon_model_version="unknown",outcome="ok"} 1.0' in text
    finally:
        mon.shutdown()


def test_a_meter_provider_passed_in_is_used():
    reader = InMemoryMetricReader()
    mon = Monitor(MonitorConfig(meter_provider=MeterProvider(metric_readers=[reader]), tracing=False))
    try:
        monitor(model="m", registry=mon)(lambda row: 1.0)({"a": 1.0})
        mon.flush()
        names = {m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
                 for m in sm.metrics}
        assert {"mlmon.predictions", "mlmon.inference.duration", "mlmon.prediction.value"} <= names
    finally:
        mon.shutdown()


def test_global_providers_are_untouched_unless_asked(harness):
    meter_before, tracer_before = metrics.get_meter_provider(), trace.get_tracer_provider()
    harness.monitor.model("m").record({"a": 1}, 1.0)
    harness.monitor.flush()
    assert metrics.get_meter_provider() is meter_before and trace.get_tracer_provider() is tracer_before
    script = textwrap.dedent("""
        from opentelemetry import metrics
        from mlmon_middleware import Monitor, MonitorConfig
        mon = Monitor(MonitorConfig(set_global_providers=True, tracing=False))
        mon.flush(); _ = mon.telemetry
        assert metrics.get_meter_provider() is mon.telemetry.meter_provider
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_instrument_app_can_leave_metrics_to_someone_else(harness):
    app = FastAPI()

    @app.get("/metrics")
    def theirs() -> dict:
        return {"theirs": True}

    instrument_app(app, registry=harness.monitor, metrics_path=None, health_path="/_health")
    with TestClient(app) as client:
        assert client.get("/metrics").json() == {"theirs": True}
        assert client.get("/_health").json()["status"] == "ok"
        assert client.get("/mlmon/health").status_code == 404


@pytest.mark.parametrize("payload", [{"petal_length": 1.0}])
def test_decorator_without_the_middleware_still_records(harness, payload):
    app = FastAPI()

    @app.post("/p")
    @monitor(model="bare", registry=harness.monitor)
    def predict(row: dict) -> dict:
        return {"prediction": 1}

    with TestClient(app) as client:
        response = client.post("/p", json=payload)
    assert "x-prediction-id" not in response.headers  # the header needs the middleware
    assert harness.total("mlmon.predictions", outcome="ok") == 1


def test_instrument_app_twice_is_a_no_op_and_uninstrument_app_takes_it_back(harness, caplog):
    from mlmon_fastapi import uninstrument_app

    app = make_app(harness.monitor)
    other = Monitor(MonitorConfig(tracing=False))
    with caplog.at_level("WARNING", logger="mlmon_middleware"):
        assert instrument_app(app, registry=other) is harness.monitor  # the first call's monitor
    assert "already called" in caplog.text
    assert sum(m.cls.__name__ == "MLMonitorMiddleware" for m in app.user_middleware) == 1
    assert [getattr(r, "name", None) for r in app.router.routes].count("mlmon") == 1  # one entry holds all of ours
    with TestClient(app) as client:
        assert "x-prediction-id" in client.post("/models/a/predict", json={"petal_length": 1.0}).headers
        uninstrument_app(app)  # while serving: the stack is rebuilt without the middleware
        response = client.post("/models/a/predict", json={"petal_length": 1.0})
        assert response.status_code == 200 and "x-prediction-id" not in response.headers
        assert client.get("/metrics").status_code == 404
        assert client.get("/mlmon/health").status_code == 404
    uninstrument_app(app)  # again: nothing to take back
    other.shutdown()


def test_the_apps_requests_pass_mlmons_routes_without_trying_them(harness, monkeypatch):
    """Starlette tries every route in front of the one that matches; mlmon's routes (sixteen,
    the two metrics routes among them) sit first, as one entry. A request to the app's own
    endpoint must not pay a call per route of ours, and every route of ours must still answer,
    also under a root_path."""
    from starlette.routing import Route

    from mlmon_fastapi import _GivingWay

    tried = []

    def counting(cls):
        original = cls.matches

        def matches(self, scope):
            if self.path.startswith("/mlmon/") or self.path == "/metrics":
                tried.append(self.path)
            return original(self, scope)
        monkeypatch.setattr(cls, "matches", matches)

    app = make_app(harness.monitor)
    counting(Route)
    counting(_GivingWay)
    assert sum(getattr(r, "name", None) == "mlmon" for r in app.router.routes) == 1
    with TestClient(app) as client:
        assert client.post("/models/a/predict", json={"petal_length": 1.0}).status_code == 200
        assert client.get("/plain").status_code == 200
        assert tried == []  # neither request tried a route of ours
        assert client.get("/metrics").status_code == 200 and tried == ["/metrics", "/metrics"]  # ours, then its super()
        assert client.get("/mlmon/health").status_code == 200 and "/mlmon/health" in tried
        assert client.post("/mlmon/health").status_code == 405  # our path, another method
        by_id = client.get("/mlmon/predictions/abc")  # a path parameter: ours answers (no log in this harness)
        assert by_id.status_code == 409 and "log" in by_id.json()["detail"]
        behind_a_proxy = TestClient(app, root_path="/api")  # no lifespan: the monitor started above
        assert b"mlmon_predictions_total" in behind_a_proxy.get("/api/metrics").content
    assert orjson.loads(behind_a_proxy.get("/api/mlmon/health").content)["status"]
    assert behind_a_proxy.get("/api/mlmon/").headers["content-type"].startswith("text/html")
