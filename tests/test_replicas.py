"""Two replicas of the example service (two uvicorn processes on two ports) sharing one real
PostgreSQL prediction log: labels posted to one join the predictions the other logged, and both
report the performance that scikit-learn computes on the union, checked by one of them."""

import time

import httpx
import numpy as np
import psycopg
import pytest
from sklearn import metrics as skm

from data import make_rows  # examples/fastapi_sklearn, on sys.path via conftest
from demo import free_port, start_service
from train import train

pytestmark = pytest.mark.integration
MODEL = "credit-risk"


def predict(url: str, rows: list[dict]) -> list[tuple[str, float]]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for row in rows:
            response = client.post("/predict", json=row)
            assert response.status_code == 200
            out.append((response.headers["x-prediction-id"], response.json()["prediction"]))
    return out


def test_labels_join_across_replicas_and_performance_is_checked_once_for_both(tmp_path, postgres_url):
    demo = tmp_path / "demo"
    train(demo, rows=1500)
    env = {"MLMON_STORE_URL": postgres_url, "MLMON_CHECK_INTERVAL": "1", "MLMON_ALLOW_ANONYMOUS_WRITES": "true"}
    services = [start_service(demo, port := free_port(0), tmp_path / f"replica{port}.log", env=env) for _ in range(2)]
    a, b = (f"http://127.0.0.1:{int(s.args[s.args.index('--port') + 1])}" for s in services)
    try:
        rng = np.random.default_rng(14)
        made = predict(b, make_rows(200, rng)) + predict(a, make_rows(100, rng))  # most of them on replica B
        truth = [int(rng.random() < p) for _, p in made]  # labels that follow the model, noisily
        httpx.get(f"{b}/mlmon/predictions?model={MODEL}&limit=1", timeout=30)  # B's queued rows are in the log now
        answer = httpx.post(f"{a}/mlmon/feedback?model={MODEL}", timeout=30,
                            json=[{"prediction_id": pid, "actual": y} for (pid, _), y in zip(made, truth)]).json()
        assert answer["labelled"] == 300 and answer["unknown"] == 0  # B's 200 joined through A
        expected = skm.accuracy_score(truth, [p >= 0.5 for _, p in made])
        deadline = time.monotonic() + 60
        while True:
            reports = [httpx.get(f"{url}/mlmon/performance?model={MODEL}", timeout=30).json()[MODEL] for url in (a, b)]
            overall = [r.get("windows", {}).get("last_1000", {}).get("overall") or {} for r in reports]
            if all(o.get("count") == 300 for o in overall) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert [o.get("count") for o in overall] == [300, 300]
        assert [o["accuracy"] for o in overall] == [pytest.approx(expected, abs=1e-12)] * 2
        auc = skm.roc_auc_score(truth, [p for _, p in made])
        assert [o["roc_auc"] for o in overall] == [pytest.approx(auc, abs=1e-9)] * 2
        with psycopg.connect(postgres_url) as db:  # one replica leads the label-based checks
            leaders = db.execute("SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                 "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            assert leaders.fetchone() == (1,)
    finally:
        for service in services:
            service.terminate()
            service.wait(timeout=30)
