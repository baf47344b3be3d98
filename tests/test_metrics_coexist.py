"""mlmon's metrics beside an app's own ``/metrics``: prometheus-fastapi-instrumentator (exposed
before or after ``instrument_app``), OpenTelemetry's FastAPIInstrumentor with a
PrometheusMetricReader on ``prometheus_client``'s global registry, mounts, plain ASGI apps.
mlmon never takes a path from the app: its metrics are always at ``/mlmon/metrics`` and at
``/metrics`` only while the app has nothing there."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Endpoint, MLMonitorMiddleware, Monitor, MonitorConfig, monitor


def families(text: str) -> set[str]:
    """The family names of a scrape (counters without their ``_total``)."""
    return {family.name for family in text_string_to_metric_families(text)}


def predictions(text: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "mlmon_predictions_total")


def model_app(mon: Monitor) -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    @monitor(model="iris", registry=mon)
    def predict(row: dict) -> dict:
        return {"prediction": 1}

    return app


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mlmon_middleware" and r.levelno == logging.WARNING]


def test_without_a_metrics_route_of_the_app_mlmon_answers_at_both_paths(harness, caplog):
    app = model_app(harness.monitor)
    with caplog.at_level(logging.WARNING, logger="mlmon_middleware"):
        instrument_app(app, registry=harness.monitor)
        with TestClient(app) as client:
            client.post("/predict", json={"x": 1.0})
            texts = [client.get(path).text for path in ("/metrics", "/mlmon/metrics")]
    assert predictions(texts[0]) == predictions(texts[1]) == 1
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("order", ["instrumentator first", "mlmon first"])
def test_prometheus_fastapi_instrumentator_keeps_metrics_and_mlmon_moves_to_its_own_path(harness, caplog, order):
    app = model_app(harness.monitor)
    theirs = Instrumentator(registry=CollectorRegistry())
    with caplog.at_level(logging.WARNING, logger="mlmon_middleware"):
        if order == "instrumentator first":
            theirs.instrument(app).expose(app)
            instrument_app(app, registry=harness.monitor)
            assert len(warnings_of(caplog)) == 1  # at once: the route was there
        else:
            instrument_app(app, registry=harness.monitor)
            theirs.instrument(app).expose(app)  # its route comes after mlmon's in the route table
            assert warnings_of(caplog) == []  # not yet: at the first scrape
        with TestClient(app) as client:
            for _ in range(3):
                assert client.post("/predict", json={"x": 1.0}).headers["x-prediction-id"]
            client.get("/mlmon/health")
            client.post("/mlmon/health")  # 405: our path, another method
            scrapes = [client.get("/metrics").text for _ in range(3)]
            ours = client.get("/mlmon/metrics").text
    assert "http_requests" in families(scrapes[-1]) and not any("mlmon" in f for f in families(scrapes[-1]))
    assert 'handler="/predict"' in scrapes[-1]  # its middleware still sees every request
    # mlmon's routes share one entry of the route table; each still has its own name
    assert 'handler="/mlmon/health",method="GET",status="2xx"' in scrapes[-1]
    assert 'handler="/mlmon/health",method="POST",status="4xx"' in scrapes[-1]
    assert 'handler="/mlmon/"' not in scrapes[-1]
    assert "mlmon_predictions" in families(ours) and "http_requests" not in families(ours)
    assert predictions(ours) == 3
    (warning,) = warnings_of(caplog)  # once, however often /metrics is scraped
    assert "'/metrics'" in warning and "prometheus_fastapi_instrumentator" in warning
    assert "served at /mlmon/metrics" in warning


def test_opentelemetry_fastapi_instrumentor_and_prometheus_reader_beside_mlmon(harness, caplog):
    """The user's OpenTelemetry metrics go to prometheus_client's global registry, served by a
    mount at /metrics added after instrument_app (GET /metrics redirects to /metrics/, as
    without mlmon); mlmon's stay in its private registry, at /mlmon/metrics. No family is in both
    but ``target_info``, each with its own service."""
    reader = PrometheusMetricReader()  # registers on REGISTRY
    provider = MeterProvider(metric_readers=[reader])
    app = model_app(harness.monitor)
    with caplog.at_level(logging.WARNING, logger="mlmon_middleware"):
        instrument_app(app, registry=harness.monitor)
        FastAPIInstrumentor.instrument_app(app, meter_provider=provider, tracer_provider=TracerProvider())
        app.mount("/metrics", make_asgi_app())
        try:
            with TestClient(app) as client:
                for _ in range(2):
                    client.post("/predict", json={"x": 1.0})
                client.get("/mlmon/health")
                scraped = client.get("/metrics")
                ours = client.get("/mlmon/metrics").text
        finally:
            FastAPIInstrumentor.uninstrument_app(app)
            provider.shutdown()  # takes the reader off REGISTRY
    assert scraped.history[0].status_code == 307 and scraped.url.path == "/metrics/"
    otel = families(scraped.text)
    assert 'http_target="/mlmon/health"' in scraped.text  # its own route name, though it shares a table entry
    assert any(f.startswith("http_server_") for f in otel) and not any(f.startswith("mlmon_") for f in otel)
    mine = families(ours)
    assert "mlmon_predictions" in mine and not any(f.startswith("http_server_") for f in mine)
    assert otel & mine <= {"target_info"}
    assert "mlmon_" not in generate_latest(REGISTRY).decode()
    (warning,) = warnings_of(caplog)
    assert "Mount '/metrics'" in warning and "prometheus_client" in warning


def test_a_route_of_a_mounted_app_is_the_apps_but_a_catch_all_static_mount_is_not(harness, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mlmon_middleware"):
        app = FastAPI()
        instrument_app(app, registry=harness.monitor)
        app.mount("/", StaticFiles(directory=tmp_path))  # holds no /metrics: mlmon keeps it
        with TestClient(app) as client:
            assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=")
            assert warnings_of(caplog) == []
            app.router.routes.pop()  # while serving: the next request sees the new table
            app.mount("/", Starlette(routes=[Route("/metrics", lambda _: PlainTextResponse("sub-app"))]))
            assert client.get("/metrics").text == "sub-app"
            assert client.get("/mlmon/metrics").headers["content-type"].startswith("text/plain; version=")
    assert len(warnings_of(caplog)) == 1


@pytest.mark.parametrize("env, argument, served", [
    ("/internal/metrics", ..., ["/internal/metrics", "/mlmon/metrics"]),
    ("/mlmon/metrics", ..., ["/mlmon/metrics"]),
    ("off", ..., []),  # scrape MLMON_PROMETHEUS_PORT instead
    ("/internal/metrics", None, []),  # the argument wins
    ("off", "/m", ["/m", "/mlmon/metrics"]),
])
def test_metrics_path_from_the_environment_or_the_argument(harness_factory, monkeypatch, env, argument, served):
    monkeypatch.setenv("MLMON_METRICS_PATH", env)
    mon = harness_factory(tracing=False).monitor
    app = FastAPI()
    instrument_app(app, registry=mon, metrics_path=argument)
    paths = ["/metrics", "/internal/metrics", "/m", "/mlmon/metrics"]
    with TestClient(app) as client:
        assert [p for p in paths if client.get(p).status_code == 200] == served


def test_the_config_refuses_a_metrics_path_that_is_not_one():
    from mlmon_middleware import ConfigError

    with pytest.raises(ConfigError, match="metrics_path must be a path starting with '/'"):
        MonitorConfig(metrics_path="metrics")
    with pytest.raises(ConfigError, match="got '/m/{name}'"):
        MonitorConfig().with_env({"MLMON_METRICS_PATH": "/m/{name}"})
    assert MonitorConfig().with_env({"MLMON_METRICS_PATH": "off"}).metrics_path is None


def test_a_plain_asgi_app_keeps_its_metrics_path(harness):
    """MLMonitorMiddleware serves no path: whatever the app answers at /metrics passes through."""
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b"theirs at " + scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    wrapped = MLMonitorMiddleware(app, registry=harness.monitor, endpoints=[Endpoint("/metrics", "m", methods=["PUT"])])
    with TestClient(wrapped) as client:
        assert client.get("/metrics").text == "theirs at /metrics"
        assert client.get("/mlmon/metrics").text == "theirs at /mlmon/metrics"


@pytest.mark.parametrize("order", ["fallback first", "mlmon first"])
def test_a_single_page_apps_catch_all_route_claims_no_metrics_path(harness, caplog, order):
    """``/{full_path:path}`` matches every path and means none: mlmon keeps both of its paths
    (registered after it, the fallback comes after mlmon's routes in the table; before, it would
    take every path mlmon did not claim first)."""
    app = model_app(harness.monitor)

    def add_fallback() -> None:
        @app.get("/{full_path:path}")
        def spa(full_path: str) -> dict:
            return {"page": full_path}

    with caplog.at_level(logging.WARNING, logger="mlmon_middleware"):
        if order == "fallback first":
            add_fallback()
        instrument_app(app, registry=harness.monitor)
        if order == "mlmon first":
            add_fallback()
        with TestClient(app) as client:
            client.post("/predict", json={"x": 1.0})
            texts = [client.get(path).text for path in ("/metrics", "/mlmon/metrics")]
            assert client.get("/about").json() == {"page": "about"}  # the fallback still serves the rest
    assert predictions(texts[0]) == predictions(texts[1]) == 1
    assert warnings_of(caplog) == []
