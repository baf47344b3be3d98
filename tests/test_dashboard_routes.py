"""The routes behind the dashboard page: alerts, logged predictions, performance history, and the
page itself (self-contained: nothing it loads comes from anywhere but the mlmon routes)."""

import re

import numpy as np
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Baseline, Explain, monitor
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.routes import MAX_LISTED

import explainers_for_tests as helpers


def rows(n, rng, shift=0.0):
    return [{"a": float(a), "b": float(b)} for a, b in zip(rng.normal(shift, 1, n), rng.normal(0, 1, n))]


@pytest.fixture
def served(tmp_path, harness_factory):
    """An app whose model explains on request, with the prediction log on."""
    def make(**config):
        if "api_token" not in config:
            config["allow_anonymous_writes"] = True  # labels posted without a token
        h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path / "log"), **config)
        rng = np.random.default_rng(4)
        base = Baseline.from_data(rows(2000, rng), predictions=rng.random(2000))
        app = FastAPI()

        @app.post("/predict")
        @monitor(model="m", version="2", baseline=base, explain=Explain(helpers.halves), registry=h.monitor,
                 drift_policy=DriftPolicy(fire_after=1, resolve_after=1))
        def predict(row: dict) -> dict:
            return {"prediction": 0.25}

        instrument_app(app, registry=h.monitor)
        h.monitor.start()
        assert h.monitor.model("m").explainer.warm.wait(60)
        return h, app

    return make


def test_predictions_are_listed_and_looked_up_with_their_explanations(served):
    h, app = served()
    with TestClient(app) as client:
        plain = client.post("/predict", json={"a": 1.0, "b": 2.0}).headers["x-prediction-id"]
        explained = client.post("/predict", json={"a": 4.0, "b": -2.0}, headers={"X-MLMon-Explain": "true"})
        assert explained.json()["explanation"]["base_value"] == 1.0
        pid = explained.headers["x-prediction-id"]
        client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1})
        newest = client.get("/mlmon/predictions").json()
        only_explained = client.get("/mlmon/predictions", params={"explained": "true", "limit": "5"}).json()
        found = client.get(f"/mlmon/predictions/{pid}", params={"model": "m"}).json()
        unknown = client.get("/mlmon/predictions/nope")
        bad_limits = [client.get("/mlmon/predictions", params={"limit": v}).status_code for v in ("0", "x", MAX_LISTED + 1)]
        unknown_model = client.get("/mlmon/predictions", params={"model": "other"})
    assert [p["prediction_id"] for p in newest["predictions"]] == [pid, plain]
    assert [p["prediction_id"] for p in only_explained["predictions"]] == [pid]
    assert found["features"] == {"a": 4.0, "b": -2.0} and found["prediction"] == {"prediction": 0.25}
    assert found["actual"] == 1 and found["label_timestamp"] >= found["timestamp"]
    top = {t["feature"]: t["contribution"] for t in found["explanation"]["top"]}
    assert top == {"a": 2.0, "b": -1.0} and found["explanation"]["text"].startswith("prediction raised mostly by a=4")
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
    assert bad_limits == [422, 422, 422]
    assert unknown_model.status_code == 404 and "['m']" in unknown_model.json()["detail"]


def test_prediction_routes_need_the_token_when_one_is_set(served):
    h, app = served(api_token="s3cret")
    with TestClient(app) as client:
        pid = client.post("/predict", json={"a": 1.0, "b": 2.0}).headers["x-prediction-id"]
        without = [client.get("/mlmon/predictions"), client.get(f"/mlmon/predictions/{pid}"),
                   client.get(f"/mlmon/predictions/{pid}", headers={"Authorization": "Bearer wrong"})]
        ok = client.get(f"/mlmon/predictions/{pid}", headers={"Authorization": "Bearer s3cret"})
    assert [r.status_code for r in without] == [401, 401, 401]
    assert ok.status_code == 200 and ok.json()["prediction_id"] == pid


def test_several_models_need_model_in_the_query(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path / "log"))
    h.monitor.model("one").record({"x": 1.0}, 0.1)
    h.monitor.model("two").record({"x": 1.0}, 0.1)
    app = FastAPI()
    instrument_app(app, registry=h.monitor)
    with TestClient(app) as client:
        vague = client.get("/mlmon/predictions")
        chosen = client.get("/mlmon/predictions", params={"model": "two"})
    assert vague.status_code == 422 and "?model=" in vague.json()["detail"]
    assert chosen.status_code == 200 and len(chosen.json()["predictions"]) == 1


def test_alerts_route_and_performance_history(served):
    h, app = served(reservoir_size=500)
    rng = np.random.default_rng(8)
    with TestClient(app) as client:
        for row in rows(300, rng, shift=2.0):
            pid = client.post("/predict", json=row).headers["x-prediction-id"]
            client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 0})
        h.monitor.model("m").check_now()  # scheduled checks (as the analyzer's) count toward alerts
        first = client.get("/mlmon/alerts").json()["m"]
        h.monitor.model("m").check_now()
        history = client.get("/mlmon/performance").json()["m"]["history"]
        for row in rows(500, rng):  # back to the baseline's population: the window (500 rows) is clean again
            client.post("/predict", json=row)
        h.monitor.model("m").check_now()
        later = client.get("/mlmon/alerts").json()["m"]
    assert {(a["alertname"], a["subject"]) for a in first["active"]} >= {("FeatureDrift", "a"), ("PredictionDrift", "prediction")}
    assert first["active"][0]["severity"] == "critical" and first["active"][0]["since"] > 0
    assert {e["state"] for e in first["recent"]} == {"firing"} and all(e["model"] == "m" for e in first["recent"])
    assert ("FeatureDrift", "a") not in {(a["alertname"], a["subject"]) for a in later["active"]}
    assert later["recent"][0]["state"] == "resolved"  # newest first
    assert len(history) == 2 and history[0]["checked_at"] < history[1]["checked_at"]
    assert history[-1]["windows"]["last_1000"]["rows"] == 300
    assert history[-1]["windows"]["last_1000"]["overall"]["accuracy"] == 1.0  # 0.25 < 0.5 predicts 0, the label


def test_the_page_is_self_contained(served):
    h, app = served()
    with TestClient(app) as client:
        page = client.get("/mlmon/")
        redirected = client.get("/mlmon", follow_redirects=False)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert re.findall(r"https?://[^\s\"'<>]+", html) == ["http://www.w3.org/2000/svg"]  # a namespace, never fetched
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=|<link[^>]*stylesheet|@import|url\(", html)
    fetched = set(re.findall(r"getJSON\([`\"]([a-z]+)", html))
    assert fetched == {"health", "drift", "performance", "alerts", "predictions"}  # relative: the routes beside the page
    assert redirected.status_code in (307, 308) and redirected.headers["location"].endswith("/mlmon/")


def test_routes_can_be_left_out(harness_factory):
    h = harness_factory(tracing=False, check_interval=0)
    app = FastAPI()
    instrument_app(app, registry=h.monitor, dashboard_path=None, predictions_path=None, alerts_path=None)
    with TestClient(app) as client:
        assert [client.get(p).status_code for p in ("/mlmon/", "/mlmon/predictions", "/mlmon/alerts")] == [404] * 3
        assert client.get("/mlmon/health").status_code == 200
