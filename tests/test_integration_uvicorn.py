"""The example service in a real uvicorn process on 127.0.0.1: exact counts over HTTP, and no
process of its left behind however it stops."""

import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from data import make_rows  # examples/fastapi_sklearn, on sys.path via conftest
from demo import free_port, start_service
from train import train

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels without le): value} of a Prometheus exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    demo_dir = tmp_path_factory.mktemp("demo")
    train(demo_dir, rows=1500)
    port = free_port(0)
    proc = start_service(demo_dir, port, demo_dir / "service.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_exact_counts_over_real_http(service):
    import numpy as np

    rng = np.random.default_rng(3)
    ids = []
    with httpx.Client(base_url=service, timeout=10) as client:
        for row in make_rows(30, rng):
            response = client.post("/predict", json=row)
            assert response.status_code == 200
            ids.append(response.headers["x-prediction-id"])
        for _ in range(5):
            response = client.post("/predict/batch", json=make_rows(4, rng, drift=1.0))
            assert response.status_code == 200 and len(response.json()) == 4
            ids.append(response.headers["x-prediction-id"])
        bad = {**make_rows(1, rng)[0], "age": "old"}
        for _ in range(3):
            assert client.post("/predict", json=bad).status_code == 422  # rejected by FastAPI: not an inference
        for _ in range(2):
            response = client.post("/predict/batch", json=[])
            assert response.status_code == 422 and "x-prediction-id" not in response.headers
        found = samples(client.get("/metrics").text)
        health = client.get("/mlmon/health").json()
    assert len(set(ids)) == 35
    model = {"mlmon_model_name": "credit-risk", "mlmon_model_version": "1.0.0"}
    assert value(found, "mlmon_predictions_total", http_route="/predict", outcome="ok", **model) == 30
    assert value(found, "mlmon_predictions_total", http_route="/predict", outcome="error") == 0
    assert value(found, "mlmon_predictions_total", http_route="/predict/batch", outcome="ok") == 5
    assert value(found, "mlmon_predictions_total", http_route="/predict/batch", outcome="error") == 2
    assert value(found, "mlmon_inference_duration_seconds_count", http_route="/predict",
                 http_response_status_code="200") == 30
    assert value(found, "mlmon_inference_duration_seconds_count", http_route="/predict/batch",
                 http_response_status_code="422", error_type="HTTPException") == 2
    assert value(found, "mlmon_prediction_value_count", output="prediction") == 50
    assert value(found, "mlmon_reservoir_size", **model) == 50
    assert value(found, "mlmon_capture_errors_total") == 0
    credit = health["models"]["credit-risk"]
    assert credit["predictions"] == {"ok": 35, "error": 2} and credit["rows_in_window"] == 50
    assert credit["baseline"]["features"] == 16 and credit["outputs"] == {"prediction": "numeric"}


NOT_DRIFTING = {"age", "employment_years", "num_accounts", "loan_amount", "loan_term_months", "dependents",
                "years_at_address"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    demo_dir = tmp_path_factory.mktemp("drift-demo")
    train(demo_dir, rows=3000)
    return demo_dir


def test_drifted_traffic_flags_exactly_the_drifted_features(trained):
    import numpy as np

    port = free_port(0)
    proc = start_service(trained, port, trained / "service.log",
                         env={"MLMON_CHECK_INTERVAL": "0", "MLMON_API_TOKEN": "t0ken"})
    try:
        rng = np.random.default_rng(21)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(20):
                assert client.post("/predict/batch", json=make_rows(50, rng, drift=1.0)).status_code == 200
            report = client.get("/mlmon/drift", params={"refresh": "true"},
                                headers={"Authorization": "Bearer t0ken"}).json()["credit-risk"]
            closed = client.get("/metrics").status_code  # with a token, a scrape sends it too
            found = samples(client.get("/metrics", headers={"Authorization": "Bearer t0ken"}).text)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    from data import FEATURES

    drifting = set(FEATURES) - NOT_DRIFTING
    assert closed == 401
    assert report["rows"] == 1000 and set(report["drifted"]) == drifting
    detected = {dict(labels)["feature"]: v for (name, labels), v in found.items() if name == "mlmon_feature_drift_detected"}
    assert detected == {f: (1.0 if f in drifting else 0.0) for f in FEATURES}
    assert report["prediction_drift"] is True
    assert value(found, "mlmon_dataset_drift_share") == pytest.approx(len(drifting) / len(FEATURES))


def children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc: the explanation worker and its resource tracker)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_explanation_workers_never_outlive_the_server(tmp_path, stop, server):
    """SIGTERM: the lifespan shutdown stops them; kill -9: each notices it lost its parent.

    gunicorn's uvicorn worker keeps serving when its master is killed -9 (it does not watch its
    parent), and the explanation worker rightly stays with the process it explains for; so the
    kill -9 there takes the master and its serving processes, as the OOM killer or a container
    stop would, and nothing of ours may remain."""
    demo_dir = tmp_path / "demo"
    train(demo_dir, rows=1500)
    proc = start_service(demo_dir, free_port(0), tmp_path / "service.log", server=server)
    deadline = time.monotonic() + 30
    workers: set[int] = set()
    serving: set[int] = set()
    while time.monotonic() < deadline and not (workers - serving):  # the worker starts with the server
        workers = children(proc.pid)
        serving = {p for p in workers if server == "gunicorn" and parent_of(p) == proc.pid}
        time.sleep(0.2)
    assert workers - serving, "the example service should run an explanation worker"
    proc.send_signal(stop)
    if stop == signal.SIGKILL:
        for pid in serving:
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    stopped = time.monotonic()
    while time.monotonic() < stopped + 30 and alive(workers):
        time.sleep(0.2)
    assert alive(workers) == set(), f"still alive {time.monotonic() - stopped:.0f} s after the server stopped"


def parent_of(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
