"""The example service under real multi-process servers (uvicorn --workers, gunicorn with uvicorn
workers) on 127.0.0.1: every acknowledged prediction reaches the log after SIGTERM, and each
worker serves its own metrics port, set up once (never retried per request)."""

import concurrent.futures
import signal
import sqlite3
import time

import httpx
import numpy as np
import pytest
from test_integration_uvicorn import samples, value

from data import make_rows  # examples/fastapi_sklearn, on sys.path via conftest
from demo import free_port, start_service
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
    def one(row: dict) -> str | None:
        response = httpx.post(f"{url}/predict", json=row, timeout=30, headers={"Connection": "close"})
        return response.headers["x-prediction-id"] if response.status_code == 200 else None

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
            proc.kill()
    with sqlite3.connect(log_dir / "predictions.sqlite") as db:
        logged = {pid for (pid,) in db.execute("SELECT prediction_id FROM predictions")}
    assert len(acknowledged) == 300
    missing = set(acknowledged) - logged
    assert not missing, f"{len(missing)} acknowledged predictions are not in the log"


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_each_worker_serves_its_own_metrics_port(trained, tmp_path, server):
    port = free_port(0)
    metrics = free_port(0)
    while not all(free_port(p) == p for p in (metrics, metrics + 1)):
        metrics = free_port(0)
    proc = start_service(trained, port, tmp_path / "service.log", server=server, workers=2,
                         env={"MLMON_PROMETHEUS_PORT": str(metrics), "MLMON_CHECK_INTERVAL": "0"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (ready(metrics) and ready(metrics + 1)):
            time.sleep(0.2)
        assert ready(metrics) and ready(metrics + 1), "each of the two workers should serve a metrics port"
        acknowledged = post_many(f"http://127.0.0.1:{port}", make_rows(200, np.random.default_rng(2)))
        scraped = [samples(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text) for p in (metrics, metrics + 1)]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert len(acknowledged) == 200
    per_worker = [value(found, "mlmon_predictions_total", outcome="ok") for found in scraped]
    assert sum(per_worker) == 200 and all(n > 0 for n in per_worker), per_worker  # both served, all counted
    assert all(value(found, "mlmon_capture_errors_total") == 0 for found in scraped)
    assert all(value(found, "mlmon_monitor_errors_total") == 0 for found in scraped)
    log = (tmp_path / "service.log").read_text()
    assert "all in use" not in log and "Traceback" not in log
