"""Drift checks inside a Monitor: reports, gauges, fleet bins, warm-up baselines, the analyzer thread."""

import time

import numpy as np
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Baseline, ConfigError, MonitorConfig, monitor
from mlmon_middleware.drift import stats
from mlmon_middleware.drift.policy import DriftPolicy

CATS = ["n", "s", "e", "w"]


def rows(n, rng, shift=0.0, region_p=None):
    return [{"a": float(a), "b": float(b), "region": str(r)}
            for a, b, r in zip(rng.normal(shift, 1, n), rng.normal(0, 1, n), rng.choice(CATS, n, p=region_p))]


@pytest.fixture
def baseline():
    rng = np.random.default_rng(0)
    data = rows(5000, rng)
    return Baseline.from_data(data, predictions=[r["a"] > 0 for r in data], model="m")


def feed(mm, data):
    for row in data:
        mm.record(row, {"prediction": float(row["a"] > 0)})


def test_report_gauges_and_alerts(harness_factory, baseline):
    h = harness_factory(tracing=False, check_interval=0)
    events = []
    mm = h.monitor.model("m", baseline=baseline, drift_policy=DriftPolicy(fire_after=1), on_alert=events.append)
    rng = np.random.default_rng(1)
    feed(mm, rows(2000, rng, shift=1.0))
    report = mm.check_now()
    assert report["status"] == "ok" and report["rows"] == 2000
    assert report["drifted"] == ["a"] and report["share"] == pytest.approx(1 / 3)
    assert report["features"]["a"]["severity"] == "critical" and report["features"]["b"]["severity"] == "none"
    assert not report["dataset_drift"]
    assert report["predictions"]["prediction"]["severity"] != "none"  # the prediction follows feature a
    assert {(e["alertname"], e["subject"], e["state"]) for e in events} >= {("FeatureDrift", "a", "firing")}
    detected = {a["feature"]: (p.value, a["severity"]) for a, p in h.points("mlmon.feature.drift.detected")}
    assert detected == {"a": (1, "critical"), "b": (0, "none"), "region": (0, "none")}
    scores = {(a["feature"], a["method"]): p.value for a, p in h.points("mlmon.feature.drift.score")}
    assert scores[("a", "psi")] == pytest.approx(report["features"]["a"]["psi"])
    assert set(m for f, m in scores if f == "a") == {"psi", "js", "ks", "wasserstein"}
    assert set(m for f, m in scores if f == "region") == {"psi", "js", "chi2"}
    [(_, share)] = h.points("mlmon.dataset.drift.share")
    assert share.value == pytest.approx(1 / 3)
    active = {(a["alertname"], a["subject"], a["severity"]) for a, _ in h.points("mlmon.alert.active")}
    assert ("FeatureDrift", "a", "critical") in active
    assert [p.value for _, p in h.points("mlmon.analysis.last_run")][0] == pytest.approx(time.time(), abs=60)
    assert h.points("mlmon.baseline.age")[0][1].value >= 0
    missing = {a["feature"]: p.value for a, p in h.points("mlmon.feature.missing.ratio")}
    assert missing == {"a": 0.0, "b": 0.0, "region": 0.0}
    assert mm.drift_report() is report
    mm.record({"a": "high", "b": 0.1}, 0.5)  # a type mismatch in a, region absent
    second = mm.check_now()
    assert second["features"]["a"]["capture_errors_since_last_check"] == {"type_mismatch": 1}
    assert second["features"]["region"]["capture_errors_since_last_check"] == {"missing_feature": 1}
    assert second["features"]["b"]["capture_errors_since_last_check"] == {}
    assert second["quality"]["capture_errors_since_last_check"] == {"type_mismatch": 1, "missing_feature": 1}
    assert mm.check_now()["features"]["a"]["capture_errors_since_last_check"] == {}


def test_fleet_bin_counters_match_the_baseline_bins(harness_factory, baseline):
    h = harness_factory(tracing=False, check_interval=0)
    mm = h.monitor.model("m", baseline=baseline)
    data = rows(1234, np.random.default_rng(2), shift=0.5)
    feed(mm, data)
    bins = {(a["feature"], int(a["bin"])): p.value for a, p in h.points("mlmon.feature.bin")}
    ratios = {(a["feature"], int(a["bin"])): p.value for a, p in h.points("mlmon.baseline.bin.ratio")}
    for name in ("a", "b"):  # the fleet PSI's reference, bin for bin
        proportions = baseline.features[name]["bin_proportions"]
        assert [ratios[(name, b)] for b in range(len(proportions))] == pytest.approx(proportions)
    for name in ("a", "b"):
        cuts = np.asarray(baseline.features[name]["bin_edges"][1:-1])
        expected = stats.bin_counts(np.array([r[name] for r in data]), cuts)
        assert [bins[(name, b)] for b in range(len(expected))] == expected.tolist()


def test_warm_up_baseline_from_the_first_rows(harness_factory):
    h = harness_factory(tracing=False, check_interval=0)
    mm = h.monitor.model("w", warmup_rows=500)
    rng = np.random.default_rng(3)
    feed(mm, rows(300, rng))
    assert mm.check_now()["status"] == "warming_up"
    feed(mm, rows(300, rng))
    report = mm.check_now()
    assert report["status"] == "ok" and report["baseline"]["warmup"] is True and report["drifted"] == []
    assert mm.baseline.row_count == 600 and mm.health()["baseline"]["warmup"] is True
    with pytest.raises(ConfigError, match="warmup_rows must be an integer >= 10"):
        h.monitor.model("x", warmup_rows=5)


def test_time_based_window(harness_factory, baseline):
    h = harness_factory(tracing=False, check_interval=0, window_seconds=60)
    mm = h.monitor.model("m", baseline=baseline)
    rng = np.random.default_rng(4)
    for row in rows(500, rng, shift=2.0):  # drifted, but two minutes old
        mm.record(row, 0.5, latency=0.001)
    h.monitor.flush()
    mm.window._time[:500] -= 120  # age the rows in place
    feed(mm, rows(1500, rng))
    report = mm.check_now()
    assert report["rows"] == 1500 and report["drifted"] == []


def test_the_analyzer_thread_checks_by_itself(harness_factory, baseline):
    h = harness_factory(tracing=False, check_interval=0.05)
    mm = h.monitor.model("m", baseline=baseline)
    feed(mm, rows(300, np.random.default_rng(5)))
    deadline = time.monotonic() + 10
    while mm.checker.report is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mm.checker.report is not None and mm.checker.report["rows"] == 300


def test_a_failing_check_is_counted_and_serving_goes_on(harness_factory, baseline, monkeypatch):
    h = harness_factory(tracing=False, check_interval=0)
    mm = h.monitor.model("m", baseline=baseline)
    monkeypatch.setattr(mm.checker, "check", lambda: 1 / 0)
    h.monitor.check_all()
    assert h.monitor.errors.counts() == {"analysis": 1}


def test_drift_route(harness_factory, baseline):
    h = harness_factory(tracing=False, check_interval=0, allow_anonymous_writes=True)
    app = FastAPI()

    @app.post("/predict")
    @monitor(model="m", baseline=baseline, registry=h.monitor)
    def predict(row: dict) -> dict:
        return {"prediction": 1.0}

    instrument_app(app, registry=h.monitor)
    with TestClient(app) as client:
        for row in rows(200, np.random.default_rng(6), region_p=[0.7, 0.1, 0.1, 0.1]):
            client.post("/predict", json=row)
        fresh = client.get("/mlmon/drift", params={"refresh": "true", "model": "m"}).json()
        cached = client.get("/mlmon/drift").json()
        missing = client.get("/mlmon/drift", params={"model": "nope"})
    assert fresh["m"]["drifted"] == ["region"] and cached["m"]["checked_at"] == fresh["m"]["checked_at"]
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_config_errors_for_the_analysis():
    with pytest.raises(ConfigError, match="check_interval must be a number of seconds >= 0"):
        MonitorConfig(check_interval=-1)
    with pytest.raises(ConfigError, match="window_seconds must be a number of seconds > 0 or None"):
        MonitorConfig(window_seconds=0)
    assert MonitorConfig().with_env({"MLMON_WINDOW_SECONDS": "300", "MLMON_CHECK_INTERVAL": "5"}).window_seconds == 300


def test_health_lists_the_monitors_own_issues_in_words(harness_factory, baseline):
    h = harness_factory(tracing=False, check_interval=0)
    mm = h.monitor.model("m", baseline=baseline, drift_policy=DriftPolicy(fire_after=1))
    assert h.monitor.health()["issues"] == [] and h.monitor.health()["status"] == "ok"
    feed(mm, rows(2000, np.random.default_rng(9), shift=1.0))
    mm.record({"a": 1.0, "b": 1.0, "region": "n", "extra": 5}, 0.5)
    mm.check_now()
    h.monitor.errors.report("queue_full", message="test")
    health = h.monitor.health()
    assert health["status"] == "degraded"
    assert "m: monitors 3 of the 4 fields it receives (coverage 75%); not monitored: extra" in health["issues"]
    assert health["models"]["m"]["coverage"] == {"monitored": 3, "received": 4, "ratio": 0.75,
                                                 "unmonitored_fields": {"extra": 1}}
    assert [p.value for _, p in h.points("mlmon.feature.coverage")] == [0.75]
    assert any(i.startswith("m: ") and "alert(s) firing" in i for i in health["issues"])
    assert health["models"]["m"]["alerts_firing"] == 2
    assert "1 captured inference(s) dropped: the pipeline queue was full" in health["issues"]
    events = {(a["alertname"], a["state"]): p.value for a, p in h.points("mlmon.alert.events")}
    assert events[("FeatureDrift", "firing")] == 1
    recent = mm.checker.alerts.summary()
    assert {a["alertname"] for a in recent["active"]} == {e["alertname"] for e in recent["recent"]} == {"FeatureDrift",
                                                                                                      "PredictionDrift"}
    assert all(e["state"] == "firing" and e["model"] == "m" for e in recent["recent"])


def test_coverage_is_one_when_inputs_hold_only_features_and_names_many_unmonitored_fields(harness_factory, baseline):
    h = harness_factory(tracing=False, check_interval=0)
    mm = h.monitor.model("m", baseline=baseline)
    mm.record({"a": 1.0, "b": 2.0, "region": "n"}, 0.5)
    h.monitor.flush()
    assert mm.coverage()["ratio"] == 1.0 and not any("coverage" in i for i in h.monitor.health()["issues"])
    mm.record([{"a": 1.0, "b": 2.0, "region": "n", **{f"x{i}": i for i in range(7)}}] * 3, [0.5] * 3)
    h.monitor.flush()
    coverage = mm.coverage()
    assert coverage["received"] == 10 and coverage["ratio"] == 0.3
    assert coverage["unmonitored_fields"] == {f"x{i}": 3 for i in range(7)}
    assert any(i.endswith("not monitored: x0, x1, x2, x3, x4 and 2 more") for i in h.monitor.health()["issues"])
