"""The BentoML adapter: in-process with Service.to_asgi(), and real `bentoml serve` with two workers,
and with one worker and BentoML's tracing configuration (one trace per request, BentoML's and ours)."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import bentoml
import httpx
import numpy as np
import pytest
import yaml
from mlmon_bentoml import monitored
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from mlmon_middleware import Monitor, MonitorConfig

from http_helpers import PortTaken, free_port, free_ports, wait_ready

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "bentoml_iris"


def make_service(mon, **options):
    @monitored(model="iris", version="1", features=["a", "b", "c", "d"], registry=mon, **options)
    @bentoml.service
    class Iris:
        @bentoml.api
        def predict(self, input_data: np.ndarray) -> np.ndarray:
            return input_data.sum(axis=1, keepdims=True) / 10

        @bentoml.api(batchable=True)
        def classify(self, input_data: np.ndarray) -> np.ndarray:
            return (input_data[:, 0] > 5).astype(int)

        @bentoml.api
        def score(self, input_data: np.ndarray) -> dict:
            return {"prediction": float(input_data.sum() / 10)}

        @bentoml.api
        def ping(self) -> str:
            return "pong"

    return Iris


def test_in_process(harness_factory):
    """One service per process: BentoML registers its own metrics globally, once."""
    from mlmon_middleware.explain import Explain

    import explainers_for_tests as helpers

    h = harness_factory(tracing=False, check_interval=0)
    svc = make_service(h.monitor, apis=["predict", "classify", "score"], explain=Explain(helpers.halves))
    h.monitor.start()
    assert h.monitor.model("iris").explainer.warm.wait(60)
    with TestClient(svc.to_asgi()) as client:
        one = client.post("/predict", json={"input_data": [[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 5.0, 2.0]]})
        batch = client.post("/classify", json={"input_data": [[5.1, 3.5, 1.4, 0.2]]})
        ping = client.post("/ping", json={})
        health = client.get("/mlmon/health").json()
        text = client.get("/mlmon/metrics").text
        page, alerts = client.get("/mlmon/"), client.get("/mlmon/alerts").json()
        bare = client.get("/mlmon", follow_redirects=False)
        no_log = client.get("/mlmon/predictions")
        no_registry = client.get("/mlmon/registry")  # mounted under /mlmon, not /mlmon/mlmon
        row, ask = {"input_data": [[1.0, 2.0, 3.0, 4.0]]}, {"X-MLMon-Explain": "true"}
        explained = client.post("/score", json=row, headers=ask)
        listed = client.post("/predict", json=row, headers=ask)
    assert one.status_code == 200 and len(one.headers["x-prediction-id"]) == 32
    assert batch.json() == [1] and ping.text == "pong" and "x-prediction-id" not in ping.headers
    assert health["models"]["iris"]["predictions"] == {"ok": 2, "error": 0}
    assert health["models"]["iris"]["rows_in_window"] == 3  # two rows, then one
    assert 'mlmon_predictions_total{http_route="/predict",mlmon_model_name="iris"' in text
    assert page.status_code == 200 and "<title>mlmon dashboard</title>" in page.text  # the page, under /mlmon/
    assert alerts == {"iris": {"active": [], "recent": [], "acknowledged": {}}}
    assert bare.status_code in (307, 308) and bare.headers["location"].endswith("/mlmon/")
    assert no_log.status_code == 409 and "MLMON_STORE_DIR" in no_log.json()["detail"]
    assert no_registry.status_code == 403 and "MLMON_API_TOKEN" in no_registry.json()["detail"]  # no token: off
    snap = h.monitor.model("iris").window_snapshot()
    assert snap["features"]["numeric"][:, 0].tolist()[:3] == [5.1, 6.0, 5.1]
    explanation = explained.json()["explanation"]  # an API answering a JSON object: explained
    assert explanation["base_value"] == 1.0 and explanation["prediction"] == pytest.approx(6.0)
    assert int(explained.headers["content-length"]) == len(explained.content)
    # an API answering an array (a JSON list) has nowhere to put it: the answer goes out as it was
    assert listed.status_code == 200 and listed.headers["x-mlmon-explain-status"] == "error"
    assert {a["status"]: p.value for a, p in h.points("mlmon.explanations")} == {"ok": 1, "error": 1}


def test_placement_and_api_names():
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    with pytest.raises(TypeError, match="goes above @bentoml.service"):
        monitored(model="x", registry=mon)(object)
    with pytest.raises(ValueError, match=r"apis \['nope'\] are not APIs"):
        make_service(mon, apis=["nope"])


def test_bentomls_tracer_provider_is_read_where_this_bentoml_keeps_it(monkeypatch, caplog):
    """The one private path of BentoML the adapter reads (``mlmon_bentoml.worker``): this fails
    when a BentoML of the pinned range moves it, or the pin and the checked release part."""
    from mlmon_bentoml import worker
    from opentelemetry.sdk.trace import TracerProvider

    pin = re.search(r'"bentoml>=(\d+)\.(\d+),<(\d+)\.(\d+)"', (EXAMPLE.parent.parent / "pyproject.toml").read_text())
    low, high = (int(pin[1]), int(pin[2])), (int(pin[3]), int(pin[4]))
    assert low == worker.CHECKED and high == (low[0], low[1] + 1) and worker.checked(bentoml.__version__)
    provider = worker.bentoml_tracer_provider()
    assert isinstance(provider, TracerProvider) and not caplog.records
    mon = Monitor(MonitorConfig(check_interval=0))
    worker.lend_tracer_provider(mon)  # outside a worker (in-process, tests): nothing changes
    assert mon.config.tracer_provider is None
    monkeypatch.setattr(bentoml.server_context, "worker_index", 1)
    monkeypatch.setattr(bentoml.server_context, "service_name", "IrisClassifier")
    worker.lend_tracer_provider(mon)  # BentoML's tracing is off (sample_rate 0 by default): nothing lent
    assert not worker.samples(provider) and mon.config.tracer_provider is None
    assert mon.config.service_name == "IrisClassifier"  # but the metrics carry the service's name
    tracing, read = TracerProvider(), worker.bentoml_tracer_provider  # as with a sample_rate above 0
    monkeypatch.setattr(worker, "bentoml_tracer_provider", lambda: tracing)
    worker.lend_tracer_provider(mon)
    assert mon.config.tracer_provider is tracing
    monkeypatch.setattr(worker, "bentoml_tracer_provider", read)
    own = TracerProvider()
    mine = Monitor(MonitorConfig(check_interval=0, tracer_provider=own))
    worker.lend_tracer_provider(mine)  # a provider the config names is kept
    assert mine.config.tracer_provider is own
    # outside the checked range, or with the private path gone: a warning, and mlmon's own choice
    monkeypatch.setattr(bentoml, "__version__", "1.5.0")
    assert worker.bentoml_tracer_provider() is None and "is not 1.4" in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr("bentoml._internal.configuration.containers.BentoMLContainer", None)
    assert worker.bentoml_tracer_provider() is None and "cannot be read (AttributeError" in caplog.text


def serve(working_dir: pathlib.Path, env: dict) -> tuple[subprocess.Popen, str]:
    """``bentoml serve`` of the service in ``working_dir``, once it is ready."""
    return ready_or_again(*start(working_dir, env), working_dir, env)


def ready_or_again(proc: subprocess.Popen, base: str, working_dir: pathlib.Path, env: dict) -> tuple[subprocess.Popen, str]:
    """:func:`ready`, with a server that lost a race for a port at start-up started again (twice
    at most): a port chosen free may be taken before the server binds it, by a server of another
    test file, or by another ``bentoml serve`` starting at the same time (BentoML picks free ports
    for its own process manager, the same way)."""
    for attempt in range(3):
        try:
            return ready(proc, base)
        except PortTaken:
            if attempt == 2:
                raise
            proc, base = start(working_dir, env)
    raise AssertionError("unreachable")


def start(working_dir: pathlib.Path, env: dict) -> tuple[subprocess.Popen, str]:
    """Start ``bentoml serve`` on a free port (not waiting: see :func:`ready`); its output goes to
    a file that :func:`ready` quotes if the server exits before it is ready."""
    port = free_port()
    bentoml_bin = shutil.which("bentoml", path=os.path.dirname(sys.executable))
    log = tempfile.NamedTemporaryFile(prefix="bentoml-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([bentoml_bin, "serve", "service:IrisClassifier", "--working-dir", str(working_dir),
                             "--host", "127.0.0.1", "--port", str(port)], env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc, f"http://127.0.0.1:{port}"


def ready(proc: subprocess.Popen, base: str) -> tuple[subprocess.Popen, str]:
    """Wait until the server answers ``/readyz`` (killed after 90 s); a server that exits first
    fails at once, with the end of its output."""
    log = pathlib.Path(proc.log_path)  # type: ignore[attr-defined]
    try:
        wait_ready(proc, f"{base}/readyz", log, 90, kill=lambda: os.killpg(proc.pid, 9))
    except RuntimeError:
        log.unlink(missing_ok=True)
        raise
    return proc, base


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:  # gone already (ready() killed it)
        pass
    proc.wait(timeout=30)
    pathlib.Path(proc.log_path).unlink(missing_ok=True)  # type: ignore[attr-defined]


REQUESTS = [
    ("/predict", {"input_data": [[5.1, 3.5, 1.4, 0.2]]}),
    ("/predict", {"input_data": [[6.7, 3.0, 5.2, 2.3], [5.0, 3.4, 1.5, 0.2]]}),
    ("/classify", {"input_data": [[6.7, 3.0, 5.2, 2.3]]}),
    ("/predict", {"wrong_field": [[1, 2, 3, 4]]}),       # rejected by BentoML: 400
    ("/predict", {"input_data": "not an array"}),         # reaches the model, which fails
    ("/predict", b"{not json"),
]


def scraped_totals(url: str) -> tuple[dict, list]:
    """``mlmon_predictions_total`` by (route, outcome), and the (service name, instance id) of ``target_info``."""
    totals, instances = {}, []
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            if s.name == "mlmon_predictions_total":
                key = (s.labels["http_route"], s.labels["outcome"])
                totals[key] = totals.get(key, 0) + s.value
            if s.name == "target_info":
                instances.append((s.labels["service_name"], s.labels["service_instance_id"]))
    return totals, instances


@pytest.mark.integration
def test_real_bentoml_serve_with_two_workers(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    source = (EXAMPLE / "service.py").read_text()
    (bare / "service.py").write_text(source.replace("@monitored(", "@(lambda **kw: (lambda svc: svc))("))
    metrics_port = free_ports(2)  # worker i serves metrics_port + i - 1
    env = {"MLMON_PROMETHEUS_PORT": str(metrics_port), "MLMON_CHECK_INTERVAL": "0"}
    monitored_proc, monitored_url = start(EXAMPLE, env)
    bare_proc, bare_url = start(bare, {})  # both start at once: their imports overlap
    try:
        monitored_proc, monitored_url = ready_or_again(monitored_proc, monitored_url, EXAMPLE, env)
        bare_proc, bare_url = ready_or_again(bare_proc, bare_url, bare, {})
        answers = {}
        for url in (monitored_url, bare_url):
            with httpx.Client(base_url=url, timeout=30) as client:
                got = []
                for path, body in REQUESTS:
                    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
                        else {"json": body}
                    response = client.post(path, **kwargs)
                    got.append((response.status_code, response.content))
                for _ in range(60):
                    assert client.post("/predict", json={"input_data": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
                answers[url] = got
                if url == monitored_url:
                    bentoml_metrics = client.get("/metrics")
        assert answers[monitored_url] == answers[bare_url]  # BentoML's behaviour, byte for byte
        assert [s for s, _ in answers[monitored_url]] == [200, 200, 200, 400, 500, 400]
        assert bentoml_metrics.status_code == 200 and b"bentoml_service_request_total" in bentoml_metrics.content
        assert b"mlmon_" not in bentoml_metrics.content  # not on BentoML's registry
        expected = {("/predict", "ok"): 2 + 60, ("/classify", "ok"): 1, ("/predict", "error"): 1}
        # Right after the last answer, with no wait: a scrape asks the other worker for its
        # counts (flushed first), so each worker answers for both, exactly.
        # Worker i serves MLMON_PROMETHEUS_PORT + i - 1, from its start; each port counts every
        # worker (the error is the model's own failure; BentoML's 400s never reached it).
        scrapes = [scraped_totals(f"http://127.0.0.1:{metrics_port + worker}/metrics") for worker in range(2)]
        assert [totals for totals, _ in scrapes] == [expected, expected]
        with httpx.Client(base_url=monitored_url, timeout=30) as client:  # one request, scraped at once, in turn
            for i in range(8):                                            # through each worker's port
                assert client.post("/predict", json={"input_data": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
                expected[("/predict", "ok")] += 1
                assert scraped_totals(f"http://127.0.0.1:{metrics_port + i % 2}/metrics")[0] == expected
        healths = [httpx.get(f"{monitored_url}/mlmon/health", headers={"Connection": "close"}, timeout=10).json()
                   for _ in range(4)]  # a connection each: both workers answer, alike
        assert all(h["workers"]["running"] == 2 for h in healths)
        assert all(h["models"]["iris"]["predictions"] == {"ok": 71, "error": 1} for h in healths)
        instances = scrapes[0][1]
        assert len(instances) == len(set(instances)) >= 1  # one service.instance.id per worker with data
        assert {name for name, _ in instances} == {"IrisClassifier"}  # BentoML's resource, with no tracing setting
    finally:
        stop(monitored_proc)
        stop(bare_proc)


@pytest.mark.integration
def test_sigterm_loses_no_acknowledged_prediction_under_bentoml(tmp_path):
    """At each worker's stop the queue and the prediction log are written before it exits (the
    writer waits 5 s between batches). BentoML ends the mounted /mlmon app's lifespan, where the
    adapter shuts monitoring down; its workers also exit normally, so atexit would too."""
    log_dir = tmp_path / "log"
    proc, url = serve(EXAMPLE, {"MLMON_STORE_DIR": str(log_dir), "MLMON_STORE_INTERVAL": "5",
                                "MLMON_CHECK_INTERVAL": "0"})
    try:
        acknowledged = []
        for _ in range(40):  # a connection each: both workers answer
            response = httpx.post(f"{url}/predict", json={"input_data": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30,
                                  headers={"Connection": "close"})
            assert response.status_code == 200
            acknowledged.append(response.headers["x-prediction-id"])
    finally:
        stop(proc)
    import sqlite3

    with sqlite3.connect(log_dir / "predictions.sqlite") as db:
        logged = {pid for (pid,) in db.execute("SELECT prediction_id FROM predictions")}
    assert set(acknowledged) <= logged, f"{len(set(acknowledged) - logged)} acknowledged predictions missing"


def documented_tracing_config(endpoint: str) -> dict:
    """The BentoML configuration docs/bentoml.md gives for traces, sent to ``endpoint``."""
    text = (EXAMPLE.parent.parent / "docs" / "bentoml.md").read_text()
    config = yaml.safe_load(re.search(r"^## Traces\n.*?^```yaml\n(.*?)^```", text, re.M | re.S).group(1))
    tracing = config["services"]["IrisClassifier"]["tracing"]
    assert tracing["exporter_type"] == "otlp" and tracing["otlp"]["protocol"] == "http"
    tracing["otlp"]["endpoint"] = f"{endpoint}/v1/traces"
    return config


def exported_spans(collector) -> list[tuple[str, object]]:
    """``(service.name, span)`` of every span the collector received."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    found = []
    for path, body in list(collector.received):
        assert path == "/v1/traces"
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
            name = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
            found.extend((name, span) for ss in rs.scope_spans for span in ss.spans)
    return found


@pytest.mark.integration
def test_bentomls_tracing_config_gives_one_trace_with_our_span_under_its_server_span(tmp_path):
    """The one setting of docs/bentoml.md: BentoML's server span and mlmon's span, one trace,
    one service name, through BentoML's exporter (one worker: enough, and fast)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from http_helpers import RecordingServer

    collector = RecordingServer()
    config = documented_tracing_config(collector.url)
    config["services"]["IrisClassifier"]["workers"] = 1
    (tmp_path / "bentoml_configuration.yaml").write_text(yaml.safe_dump(config))
    proc, url = serve(EXAMPLE, {"BENTOML_CONFIG": str(tmp_path / "bentoml_configuration.yaml"),
                                "MLMON_CHECK_INTERVAL": "0", "OTEL_BSP_SCHEDULE_DELAY": "200"})
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(3):
                assert client.post("/predict", json={"input_data": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200
            target_info = [s for f in text_string_to_metric_families(client.get("/mlmon/metrics").text)
                           for s in f.samples if s.name == "target_info"]
        deadline = time.monotonic() + 20  # the pipeline (0.5 s), then the batch span processor (0.2 s)
        while time.monotonic() < deadline and sum(s.name == "mlmon.inference iris" for _, s in exported_spans(collector)) < 3:
            time.sleep(0.2)
    finally:
        stop(proc)
        collector.shutdown()
    spans = exported_spans(collector)
    assert {name for name, _ in spans} == {"IrisClassifier"}  # one service name: BentoML's, for every span
    by_id = {s.span_id: s for _, s in spans}
    ours = [s for _, s in spans if s.name == "mlmon.inference iris"]
    assert len(ours) == 3
    for span in ours:
        parent = by_id[span.parent_span_id]  # exported too
        assert parent.kind == Span.SPAN_KIND_SERVER and parent.name == "POST /predict"  # BentoML's request span
        assert parent.trace_id == span.trace_id and not parent.parent_span_id
    assert len({s.trace_id for s in ours}) == 3  # a trace per request
    # mlmon's metrics carry the same resource
    assert [(s.labels["service_name"], s.labels["service_instance_id"]) for s in target_info] == [("IrisClassifier", "1")]
