"""Performance metrics agree with scikit-learn; windows, segments, fairness and degradation from the log."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from mlmon_middleware import ConfigError
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.metrics import classification_metrics, regression_metrics, roc_auc
from mlmon_middleware.store import LogRow

seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=100, deadline=None)
@given(seeds, st.integers(2, 300), st.booleans())
def test_binary_metrics_match_sklearn(seed, n, ties):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = rng.random(n)
    if ties:
        scores = np.round(scores, 1)
    y_true, y_pred = y.astype(str).astype(object), np.where(scores >= 0.5, "1", "0").astype(object)
    got = classification_metrics(y_true, y_pred, scores=scores, positive="1")
    pred = (scores >= 0.5).astype(int)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0), abs=1e-12)
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0), abs=1e-12)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0), abs=1e-12)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, scores, labels=[0, 1]), abs=1e-9)
    if len(set(y)) == 2:
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-9)
    else:
        assert got["roc_auc"] is None


@settings(max_examples=100, deadline=None)
@given(seeds, st.integers(3, 300), st.integers(3, 6))
def test_multiclass_metrics_match_sklearn(seed, n, k):
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(k)]
    y = np.array(classes, dtype=object)[rng.integers(0, k, n)]
    proba = rng.dirichlet(np.ones(k), n)
    pred = np.array(classes, dtype=object)[proba.argmax(axis=1)]
    got = classification_metrics(y, pred, proba=proba, classes=classes)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        assert got[name] == pytest.approx(fn(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=classes), abs=1e-9)
    if len(set(y)) == k:
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(seeds, st.integers(2, 300))
def test_regression_metrics_match_sklearn(seed, n):
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 5, n)
    y[rng.random(n) < 0.05] = 0.0  # zeros: MAPE's floor
    pred = y + rng.normal(0, 2, n)
    got = regression_metrics(y, pred)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), abs=1e-9)
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)), abs=1e-9)
    assert got["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred), rel=1e-9)
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred), abs=1e-9)
    assert regression_metrics(np.ones(3), np.ones(3))["r2"] == skm.r2_score(np.ones(3), np.ones(3))


def test_auc_with_one_class_is_undefined():
    assert roc_auc(np.array([True, True]), np.array([0.1, 0.2])) is None


def labelled_model(h, n, *, rng, performance=None, segments=(), flip=False, label_fraction=1.0):
    """n predictions of a scorer whose labels arrive later, out of order; some never."""
    mm = h.monitor.model("m", segments=list(segments), performance=performance or {"task": "binary"})
    made = []
    for i in range(n):
        x = float(rng.normal())
        group = "a" if i % 3 else "b"
        score = 1 / (1 + np.exp(-3 * x))
        pid = mm.record({"x": x, "group": group, "region": f"r{i % 7}"}, {"prediction": score})
        truth = int((x > 0) != flip)
        made.append((pid, truth))
    order = rng.permutation(n)  # out of order
    now = time.time()
    labels = [(made[i][0], made[i][1], now + 60 * rng.random()) for i in order if rng.random() < label_fraction]
    mm.record_outcomes(labels)
    return mm


def test_delayed_labels_windows_and_coverage(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = labelled_model(h, 600, rng=np.random.default_rng(1), performance={"task": "binary", "count_window": 200},
                        label_fraction=0.7)
    mm.check_now()
    report = mm.performance_report()
    last, recent = report["windows"]["last_200"], report["windows"]["86400s"]
    assert last["rows"] == 200 and 380 <= recent["rows"] <= 460  # ~70 % of 600 labelled
    assert recent["overall"]["accuracy"] > 0.95 and recent["overall"]["roc_auc"] > 0.99
    assert report["reference"]["source"] == "first full window"
    coverage = mm.drift_report()["labels"]["coverage"]["1h"]
    assert coverage["predictions"] == 600 and coverage["labelled"] == recent["rows"]
    perf = {(a["metric"], a["window"], a["segment"]): p.value for a, p in h.points("mlmon.performance")}
    assert perf[("accuracy", "86400s", "__all__")] == pytest.approx(recent["overall"]["accuracy"])


def test_a_time_window_reads_at_most_its_latest_rows_and_says_it_is_capped(tmp_path, harness_factory, monkeypatch):
    from mlmon_middleware import performance

    monkeypatch.setattr(performance, "MAX_TIME_WINDOW_ROWS", 150)
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = labelled_model(h, 300, rng=np.random.default_rng(2), performance={"task": "binary", "count_window": 100})
    mm.check_now()
    windows = mm.performance_report()["windows"]
    assert windows["86400s"]["rows"] == 150 and windows["86400s"]["capped"] is True
    assert windows["last_100"]["rows"] == 100 and "capped" not in windows["last_100"]


def test_degradation_alerts_when_the_label_rule_flips(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    events = []
    rng = np.random.default_rng(2)
    mm = h.monitor.model("m", on_alert=events.append, drift_policy=DriftPolicy(fire_after=1),
                         performance={"task": "binary", "count_window": 300, "reference": {"accuracy": 0.98, "roc_auc": 0.99}})
    for flip in (False, True):
        for _ in range(300):
            x = float(rng.normal())
            pid = mm.record({"x": x}, {"prediction": 1 / (1 + np.exp(-3 * x))})
            mm.record_outcome(pid, int((x > 0) != flip))
        mm.check_now()
    report = mm.performance_report()["windows"]["last_300"]
    assert report["overall"]["accuracy"] < 0.1
    assert report["degradation"]["accuracy"]["severity"] == "critical"
    assert ("PerformanceDegradation", "accuracy@last_300", "critical") in {
        (e["alertname"], e["subject"], e["severity"]) for e in events}


def test_segment_cap_with_100000_distinct_values(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), store_max_rows=None)
    mm = h.monitor.model("m", segments=["user"], performance={"task": "binary", "count_window": 100_000,
                                                             "max_segments": 5})
    rng = np.random.default_rng(3)
    writer = h.monitor.store_writer
    now = time.time()
    heavy = [f"u{i}" for i in range(5)]
    rows = []
    for i in range(100_000):
        user = heavy[i % 5] if i < 5000 else f"user-{i}"  # 5 heavy users, then 95,000 distinct
        rows.append(LogRow(f"p{i}", "m", "unknown", now - 1 + i * 1e-6, '{"prediction": 0.9}', f'{{"user": "{user}"}}', None))
    writer.put(rows)
    writer.flush()
    writer.store.set_labels("m", [(f"p{i}", int(rng.random() < 0.9), now) for i in range(100_000)])
    mm.check_now()
    segments = mm.performance_report()["windows"]["last_100000"]["segments"]["user"]
    assert set(segments) == {*heavy, "__other__"}
    assert segments["__other__"]["count"] == 95_000
    users = {a["segment"] for a, _ in h.points("mlmon.performance") if a["segment"].startswith("user=")}
    assert len(users) == 6


def test_fairness_and_the_four_fifths_rule(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    events = []
    mm = h.monitor.model("m", segments=["group"], on_alert=events.append, drift_policy=DriftPolicy(fire_after=1),
                         performance={"task": "binary", "protected": "group"})
    rng = np.random.default_rng(4)
    for i in range(400):
        group = "a" if i % 2 else "b"
        score = 0.9 if (group == "a" and rng.random() < 0.6) or (group == "b" and rng.random() < 0.3) else 0.1
        pid = mm.record({"x": 1.0, "group": group}, {"prediction": score})
        mm.record_outcome(pid, int(rng.random() < 0.5))
    mm.check_now()
    fairness = mm.performance_report()["windows"]["last_1000"]["fairness"]
    rates = {g: v["positive_rate"] for g, v in fairness["groups"].items()}
    assert fairness["demographic_parity_ratio"] == pytest.approx(min(rates.values()) / max(rates.values()))
    assert fairness["four_fifths_violated"] and fairness["demographic_parity_ratio"] < 0.8
    assert fairness["tpr_gap"] > 0.1
    assert any(e["alertname"] == "DisparateImpact" for e in events)


def test_performance_options_are_checked(harness_factory):
    h = harness_factory(tracing=False, check_interval=0)
    with pytest.raises(ConfigError, match="task must be"):
        h.monitor.model("a", performance={"task": "ranking"})
    with pytest.raises(ConfigError, match="protected='gender' must be one of the model's segments"):
        h.monitor.model("b", performance={"protected": "gender"})
    assert h.monitor.model("c").performance_report()["status"].startswith("no prediction log")


def test_concept_drift_flips_labels_not_inputs(tmp_path, harness_factory):
    """Same inputs, different right answers: the error-stream detectors and the window metrics
    see it; the input and prediction drift checks stay quiet."""
    from mlmon_middleware import Baseline

    rng = np.random.default_rng(5)
    train = rng.normal(size=(5000, 2))
    baseline = Baseline.from_data([{"x0": float(a), "x1": float(b)} for a, b in train],
                                  predictions=1 / (1 + np.exp(-3 * train[:, 0])))
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    events = []
    mm = h.monitor.model("m", baseline=baseline, on_alert=events.append, drift_policy=DriftPolicy(fire_after=1),
                         performance={"task": "binary", "count_window": 1000})
    reports = []
    for flip in (False, True):
        labels = []
        for x0, x1 in rng.normal(size=(1500, 2)):
            pid = mm.record({"x0": float(x0), "x1": float(x1)}, {"prediction": float(1 / (1 + np.exp(-3 * x0)))})
            labels.append((pid, int((x0 > 0) != flip), None))
        mm.record_outcomes(labels)
        reports.append((mm.check_now(), mm.performance_report()))
    (drift_before, perf_before), (drift_after, perf_after) = reports
    assert perf_before["concept_drift"]["fired_this_check"] == {}
    assert {"page_hinkley", "adwin", "ddm"} <= set(perf_after["concept_drift"]["fired_this_check"])
    assert all(at >= 1500 for at in perf_after["concept_drift"]["fired_this_check"]["adwin"])
    assert perf_after["windows"]["last_1000"]["degradation"]["accuracy"]["severity"] == "critical"
    assert drift_before["drifted"] == drift_after["drifted"] == [] and not drift_after["prediction_drift"]
    assert {e["alertname"] for e in events} >= {"ConceptDrift", "PerformanceDegradation"}
    assert "FeatureDrift" not in {e["alertname"] for e in events}


def test_without_river_the_report_says_how_to_get_the_detectors(tmp_path, harness_factory, monkeypatch):
    import mlmon_middleware.performance as performance

    monkeypatch.setattr(performance, "river_available", lambda: False)
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("m", performance={"task": "binary"})
    mm.record_outcome(mm.record({"x": 1.0}, 0.9), 1)
    mm.check_now()
    assert "mlmon-middleware[concept]" in mm.performance_report()["concept_drift"]["status"]


def test_the_baseline_carries_validation_performance_as_the_reference(tmp_path, harness_factory):
    from mlmon_middleware import Baseline, BaselineError

    rng = np.random.default_rng(6)
    x = rng.normal(size=2000)
    scores = 1 / (1 + np.exp(-3 * x))
    y = (x + rng.normal(0, 0.5, 2000) > 0).astype(int)
    base = Baseline.from_data([{"x": float(v)} for v in x], predictions=scores, labels=y, task="binary")
    perf = base.payload["performance"]
    assert perf["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-9)
    assert perf["accuracy"] == pytest.approx(skm.accuracy_score(y, scores >= 0.5), abs=1e-12)
    with pytest.raises(BaselineError, match="labels need predictions"):
        Baseline.from_data([{"x": 1.0}], labels=[1])
    path = tmp_path / "b.json"
    base.save(path)
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("m", baseline=str(path), performance={"task": "binary"})
    mm.record_outcome(mm.record({"x": 1.0}, 0.9), 1)
    mm.check_now()
    reference = mm.performance_report()["reference"]
    assert reference["source"] == "baseline" and reference["metrics"]["roc_auc"] == pytest.approx(perf["roc_auc"])


def _labelled_checks(mm, rng, error_rates, per_check=100, label_age=0.0):
    """One check per error rate: ``per_check`` predictions, labelled (``label_age`` seconds back-dated)."""
    reports = []
    for rate in error_rates:
        x = rng.normal(size=per_check)
        labels = []
        for v in x:
            pid = mm.record({"x": float(v)}, {"prediction": float(1 / (1 + np.exp(-4 * v)))})
            labels.append((pid, int((v > 0) != (rng.random() < rate)), time.time() - label_age))
        mm.record_outcomes(labels)
        mm.check_now()
        reports.append(mm.performance_report())
    return reports


def test_back_dated_labels_reach_the_detectors_in_prediction_order(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("m", performance={"task": "binary"})
    rng = np.random.default_rng(11)
    for age in (0.0, 3600.0, 7200.0):  # each batch's labels carry older times than the last
        report = _labelled_checks(mm, rng, [0.1], label_age=age)[-1]
    assert report["concept_drift"]["errors_seen"] == 300


def test_an_error_jump_alerts_within_two_checks_with_the_default_policy(tmp_path, harness_factory):
    """5 % -> 30 % errors, 300 labels a check (enough for the change to show in one): both alerts
    fire by the second check after the jump, as the default policy needs two checks in a row."""
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    events = []
    mm = h.monitor.model("m", on_alert=events.append, performance={"task": "binary", "count_window": 500})
    rng = np.random.default_rng(12)
    _labelled_checks(mm, rng, [0.05] * 5, per_check=300)
    assert [e for e in events if e["state"] == "firing"] == []
    firing_at = {}
    for check in range(1, 6):
        _labelled_checks(mm, rng, [0.30], per_check=300)
        for e in events:
            firing_at.setdefault(e["alertname"], check)
    assert firing_at["ConceptDrift"] <= 2 and firing_at["PerformanceDegradation"] <= 2


@pytest.mark.parametrize("error_rate", [0.05, 0.2])
def test_stationary_streams_raise_almost_no_false_alerts(tmp_path, harness_factory, error_rate):
    """60 checks of 100 labels each at a constant error rate, the reference being the first full
    window: at most 1 % of checks may raise a performance or concept-drift condition."""
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("m", performance={"task": "binary", "count_window": 500})
    rng = np.random.default_rng(int(error_rate * 100))
    raised = 0
    for report in _labelled_checks(mm, rng, [error_rate] * 60):
        degraded = any(d["severity"] != "none" for w in report["windows"].values() for d in w.get("degradation", {}).values())
        raised += degraded or report["concept_drift"]["raised"]
    assert raised <= 1  # of 60 checks (a binomial margin over the 0.5 % design rate)


def test_the_four_fifths_rule_needs_more_than_chance_in_small_groups(tmp_path, harness_factory):
    """Groups of 12: a positive-rate ratio under 0.8 happens by chance, and raises nothing."""
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("m", segments=["group"], performance={"task": "binary", "protected": "group"})
    for i in range(24):
        group = "a" if i % 2 else "b"
        score = 0.9 if (group == "a" and i < 14) or (group == "b" and i < 6) else 0.1  # 7 of 12 vs 3 of 12
        mm.record_outcome(mm.record({"x": 1.0, "group": group}, {"prediction": score}), i % 3 == 0)
    mm.check_now()
    fairness = mm.performance_report()["windows"]["last_1000"]["fairness"]
    assert fairness["demographic_parity_ratio"] < 0.8 and fairness["rate_gap_p_value"] > 0.005
    assert not fairness["four_fifths_violated"]
