"""The example service under real multi-process servers (uvicorn --workers, gunicorn with uvicorn
workers) on 127.0.0.1: every acknowledged prediction reaches the log after SIGTERM, and each
worker serves its own metrics port, set up once (never retried per request)."""

import concurrent.futures
import http.client
import pathlib
import signal
import sqlite3
import time

import httpx
import numpy as np
import orjson
import pytest
from test_integration_uvicorn import samples, value

from data import make_rows  # examples/fastapi_sklearn, on sys.path via conftest
from demo import free_port, kill_service, start_service
from http_helpers import free_ports
from train import train

pytestmark = pytest.mark.integration

SERVERS = [("uvicorn", 1), ("uvicorn", 2), ("gunicorn", 2)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    demo_dir = tmp_path_factory.mktemp("servers")
    train(demo_dir, rows=1500)
    return demo_dir


def post_many(url: str, rows: list[dict], threads: int = 8) -> list[str]:
    """POST each row to /predict on its own connection (so that the kernel spreads them over the
    workers); the prediction ids of the answers that were 200."""
    host, port = url.removeprefix("http://").split(":")

    def one(row: dict) -> str | None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)  # lighter than a client per call
        try:
            connection.request("POST", "/predict", body=orjson.dumps(row), headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.getheader("x-prediction-id") if response.status == 200 else None
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return [pid for pid in pool.map(one, rows) if pid is not None]


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("server, workers", SERVERS, ids=[f"{s}-{w}" for s, w in SERVERS])
def test_sigterm_loses_no_acknowledged_prediction(trained, tmp_path, server, workers):
    log_dir = tmp_path / "log"
    port = free_port(0)
    proc = start_service(trained, port, tmp_path / "service.log", server=server, workers=workers,
                         env={"MLMON_STORE_DIR": str(log_dir), "MLMON_CHECK_INTERVAL": "0",
                              "MLMON_STORE_INTERVAL": "5"})  # the log writes late: shutdown must flush it
    try:
        time.sleep(2 if workers > 1 else 0)  # every worker up
        acknowledged = post_many(f"http://127.0.0.1:{port}", make_rows(300, np.random.default_rng(1)))
        proc.send_signal(signal.SIGTERM)  # right after the last answer
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            kill_service(proc)
    with sqlite3.connect(log_dir / "predictions.sqlite") as db:
        logged = {pid for (pid,) in db.execute("SELECT prediction_id FROM predictions")}
    assert len(acknowledged) == 300
    missing = set(acknowledged) - logged
    assert not missing, f"{len(missing)} acknowledged predictions are not in the log"


@pytest.mark.parametrize("server, per_worker", [("uvicorn", False), ("gunicorn", True)])
def test_each_worker_serves_its_own_metrics_port(trained, tmp_path, server, per_worker):
    """Each worker serves a port, and each port answers for the whole server (the workers share
    their counts); with ``MLMON_METRICS_PER_WORKER`` the counts keep a ``worker`` label."""
    port = free_port(0)
    metrics = free_ports(2)  # worker i serves metrics + i - 1
    proc = start_service(trained, port, tmp_path / "service.log", server=server, workers=2,
                         env={"MLMON_PROMETHEUS_PORT": str(metrics), "MLMON_CHECK_INTERVAL": "0",
                              "MLMON_METRICS_PER_WORKER": str(per_worker).lower()})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (ready(metrics) and ready(metrics + 1)):
            time.sleep(0.2)
        assert ready(metrics) and ready(metrics + 1), "each of the two workers should serve a metrics port"
        acknowledged = post_many(f"http://127.0.0.1:{port}", make_rows(200, np.random.default_rng(2)))
        deadline = time.monotonic() + 30
        while True:  # the other worker's counts arrive within its share interval (1 s)
            scraped = [samples(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text) for p in (metrics, metrics + 1)]
            totals = [value(found, "mlmon_predictions_total", outcome="ok") for found in scraped]
            if totals == [200, 200] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert len(acknowledged) == 200
    assert totals == [200, 200]  # through either port: every worker's predictions
    workers = {dict(labels).get("worker") for (name, labels), v in scraped[0].items()
               if name == "mlmon_predictions_total" and v > 0}
    assert workers == ({None} if not per_worker else workers - {None, "exited"}) and len(workers) == (2 if per_worker else 1)
    assert all(value(found, "mlmon_capture_errors_total") == 0 for found in scraped)
    assert all(value(found, "mlmon_monitor_errors_total") == 0 for found in scraped)
    log = (tmp_path / "service.log").read_text()
    assert "all in use" not in log and "Traceback" not in log


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def fuzz(url: str) -> None:
    """Hostile but well-formed bodies: a first request of 20,000 fields, field names of 256 kB,
    category values of 5 MB, 500 model names from traffic, oversized feedback."""
    import orjson

    with httpx.Client(base_url=url, timeout=60) as client:
        def post(path: str, body: object) -> None:
            client.post(path, content=orjson.dumps(body),
                        headers={"content-type": "application/json", "authorization": "Bearer t"})

        post("/predict", {"city": "paris", **{f"k{i}": float(i) for i in range(20_000)}})
        for i in range(50):
            post("/predict", {"k0": 1.0, ("n" * 256_000) + str(i): 1.0})
        for i in range(20):
            post("/predict", {"k0": 1.0, "city": ("v" * 5_000_000) + str(i)})
        for i in range(500):
            post("/dynamic", {"model": f"tenant-{i}", "x": float(i)})
        for _ in range(20):
            post("/mlmon/feedback", [{"prediction_id": "p" * 100, "actual": "a" * 4000}] * 500)
        for i in range(200):
            post("/predict", {"k0": float(i), "k2": 2.0})


def test_memory_under_hostile_input_stays_near_the_unmonitored_twin(tmp_path):
    """The same corpus to the monitored app and to its twin without monitoring, one at a time:
    the monitored server's RSS grows by at most 96 MB more than the twin's. The window of an
    inferred 256-feature schema is 20 MB by design (``reservoir_size`` × features). What the
    5 MB values held until the pipeline read them is handed back to the system after their batch
    (without it, a slow run kept 152 MB). Before the bounds, one request of 20,000 fields alone
    added about a gigabyte."""
    growth = {}
    for name, env in (("twin", {"FUZZ_TWIN": "1"}), ("monitored", {"MLMON_API_TOKEN": "t", "MLMON_CHECK_INTERVAL": "0"})):
        port = free_port(0)
        proc = start_service(tmp_path, port, tmp_path / f"{name}.log", app="fuzz_app:app",
                             app_dir=pathlib.Path(__file__).parent, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(20):  # warm the server (the corpus's first request must be the first inference)
                httpx.get(f"{url}/openapi.json", timeout=30)
            before = rss_bytes(proc.pid)
            fuzz(url)
            time.sleep(1.2)  # a heap trim owed after the last oversized batch runs within TRIM_INTERVAL
            if name == "monitored":
                health = httpx.get(f"{url}/mlmon/health", headers={"Authorization": "Bearer t"}, timeout=60).json()
            growth[name] = rss_bytes(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    model = health["models"]["fuzz"]
    assert len(model["features"]) == 256 and model["capture_errors"]["too_wide"] == 20_001 - 256
    assert model["capture_errors"]["value_truncated"] == 20
    assert health["limit_hits"]["models"] == 500 - 100 + 1 and health["limit_hits"]["feedback_body"] == 20
    # measured on the project's VM: twin +3 MB, monitored +52 MB (20 MB of it the window, by design)
    assert growth["monitored"] <= growth["twin"] + (96 << 20), {k: v >> 20 for k, v in growth.items()}
