"""Label-free performance estimation (mlmon_middleware.estimation): the expected metrics against
scikit-learn where they must agree exactly, the band's coverage when the calibration holds, a
covariate shift followed without labels, and the estimator's round trip."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from mlmon_middleware import estimation
from mlmon_middleware.metrics import classification_metrics


def binary_data(rng, n, shift=0.0):
    """A score that is the true probability of the positive class (calibrated), its mass moved
    towards confident rows by ``shift`` (a covariate shift: p(y | score) unchanged)."""
    scores = rng.beta(2 + shift, 2 + shift, n) if shift >= 0 else rng.beta(2, 2, n)
    if shift > 0:
        scores = np.where(rng.random(n) < 0.5, scores ** (1 + shift), 1 - (1 - scores) ** (1 + shift))
    labels = np.where(rng.random(n) < scores, "1", "0")
    return scores, labels


def test_weighted_auc_is_scikit_learns_with_sample_weights():
    rng = np.random.default_rng(0)
    for n in (2, 17, 500):
        scores = np.round(rng.random(n), 2)  # ties
        weights = rng.random(n)
        expected = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[scores, scores], sample_weight=np.r_[weights, 1 - weights])
        assert estimation.weighted_auc(scores, weights, 1 - weights) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_known_labels_give_exactly_the_realized_metrics():
    """With calibrated probabilities of exactly 0 or 1 (the labels), the expected confusion matrix
    is the realized one: every estimate equals scikit-learn's metric, and the band is a point."""
    rng = np.random.default_rng(1)
    window = rng.random(400)
    y = (window >= 0.5).astype(int)
    window_scores = np.where(rng.random(400) < 0.3, 1.0 - window, window)  # the model is wrong on 30 %
    known = y.astype(float)  # "calibrated" probabilities that are the labels themselves
    expected = estimation._binary_expected(known, window_scores >= 0.5, window_scores)
    predicted = (window_scores >= 0.5).astype(int)
    assert expected["accuracy"] == pytest.approx(accuracy_score(y, predicted), rel=1e-12)
    assert expected["precision"] == pytest.approx(precision_score(y, predicted), rel=1e-12)
    assert expected["recall"] == pytest.approx(recall_score(y, predicted), rel=1e-12)
    assert expected["f1"] == pytest.approx(f1_score(y, predicted), rel=1e-12)
    assert expected["roc_auc"] == pytest.approx(roc_auc_score(y, window_scores), rel=1e-9)
    draws = estimation._binary_draws(known, window_scores >= 0.5, window_scores, seed=0)
    assert np.ptp(draws["accuracy"]) == 0 and draws["roc_auc"][0] == pytest.approx(roc_auc_score(y, window_scores), rel=1e-9)


def test_the_reference_metrics_are_the_realized_ones():
    rng = np.random.default_rng(2)
    scores, labels = binary_data(rng, 2000)
    model = estimation.fit(labels, scores[:, None], classes=["0", "1"], positive="1", threshold=0.4)
    predicted = np.where(scores >= 0.4, "1", "0").astype(object)
    realized = classification_metrics(labels.astype(object), predicted, scores=scores, positive="1")
    assert model.reference == {m: pytest.approx(realized[m], rel=1e-12) for m in estimation.METRICS}


def test_the_band_covers_the_realized_metric_when_the_calibration_holds():
    rng = np.random.default_rng(3)
    scores, labels = binary_data(rng, 20_000)
    model = estimation.fit(labels, scores[:, None], classes=["0", "1"], positive="1")
    covered = {m: 0 for m in estimation.METRICS}
    errors = {m: [] for m in estimation.METRICS}
    windows = 60
    for i in range(windows):
        s, y = binary_data(rng, 500)
        found = model.estimate(s[:, None], seed=i)
        realized = classification_metrics(y.astype(object), np.where(s >= 0.5, "1", "0").astype(object), scores=s,
                                          positive="1")
        for m in estimation.METRICS:
            covered[m] += found[m]["low"] <= realized[m] <= found[m]["high"]
            errors[m].append(abs(found[m]["value"] - realized[m]))
    assert all(covered[m] >= 0.85 * windows for m in estimation.METRICS), covered  # nominal 95 %
    assert np.mean(errors["accuracy"]) < 0.03, np.mean(errors["accuracy"])


def test_a_covariate_shift_is_followed_without_labels():
    """The issue's case: realized accuracy moves from about 0.65 to about 0.85 while p(y | score)
    stays; the estimate follows it within its band."""
    rng = np.random.default_rng(4)
    scores, labels = binary_data(rng, 20_000)
    model = estimation.fit(labels, scores[:, None], classes=["0", "1"], positive="1")
    for shift, expected in ((0.0, 0.69), (2.0, 0.84)):
        s, y = binary_data(rng, 2000, shift)
        realized = float(np.mean(np.where(s >= 0.5, "1", "0") == y))
        assert realized == pytest.approx(expected, abs=0.04)
        found = model.estimate(s[:, None])["accuracy"]
        assert found["low"] <= realized <= found["high"] and found["value"] == pytest.approx(realized, abs=0.03)


def test_multiclass_estimates_with_macro_averages():
    rng = np.random.default_rng(5)
    k, n = 3, 9000
    logits = rng.normal(size=(n, k)) * 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([str(rng.choice(k, p=p)) for p in proba])
    classes = [str(j) for j in range(k)]
    model = estimation.fit(labels, proba, classes=classes)
    assert model.task == "multiclass" and model.outputs == tuple(classes)
    window = proba[:1000]
    found = model.estimate(window)
    realized = classification_metrics(labels[:1000].astype(object), np.array(classes, dtype=object)[window.argmax(axis=1)],
                                      proba=window, classes=classes)
    for m in estimation.METRICS:
        assert found[m]["low"] - 0.02 <= realized[m] <= found[m]["high"] + 0.02, (m, found[m], realized[m])
    assert found["roc_auc"]["value"] == pytest.approx(np.mean([roc_auc_score(labels[:1000] == c, window[:, j])
                                                                for j, c in enumerate(classes)]), abs=0.03)


def test_round_trip_and_bad_input():
    rng = np.random.default_rng(6)
    scores, labels = binary_data(rng, 1000)
    model = estimation.fit(labels, scores[:, None], classes=["0", "1"], positive="1", outputs=["probability"])
    again = estimation.CBPE.from_dict(model.to_dict())
    probe = rng.random((50, 1))
    assert again.estimate(probe) == model.estimate(probe) and again.outputs == ("probability",)
    assert model.estimate(np.empty((0, 1)))["accuracy"] == {"value": None, "low": None, "high": None}
    with pytest.raises(ValueError, match="positive"):
        estimation.fit(labels, scores[:, None], classes=["0", "1"])
    with pytest.raises(ValueError, match="columns"):
        estimation.fit(labels, np.column_stack([scores, 1 - scores]), classes=["0", "1", "2"])


def monitored(baseline):
    from mlmon_middleware import DriftPolicy, Monitor, MonitorConfig

    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    return mon, mon.model("m", baseline=baseline, performance={"degradation": (0.05, 0.10)},
                          drift_policy=DriftPolicy(fire_after=1))


def test_a_check_estimates_alerts_and_exports_from_the_service_outputs():
    """Through a served model: a baseline built from a labelled reference with its probability
    column named as the service's output; windows whose rows move towards the threshold lower
    the estimate, raise EstimatedPerformanceDrop and export the estimate with its band."""
    from mlmon_middleware import Baseline
    from mlmon_middleware.gauges import observe
    from mlmon_middleware.instruments import PERFORMANCE_ESTIMATED

    rng = np.random.default_rng(7)
    x = rng.normal(size=5000)
    score = 1 / (1 + np.exp(-2 * x))
    labels = (rng.random(5000) < score).astype(int)
    rows = [{"x": float(a), "probability": float(p)} for a, p in zip(x, score)]
    baseline = Baseline.from_data(rows, labels=labels, proba=["probability"])
    assert baseline.estimator.outputs == ("prediction",) and list(baseline.features) == ["x"]  # as captured
    mon, model = monitored(baseline)
    try:
        for a in rng.normal(scale=0.25, size=1000):  # most rows near the threshold: a worse model
            model.record({"x": float(a)}, {"probability": float(1 / (1 + np.exp(-2 * a)))})
        report = model.check_now()
        found = report["performance_estimated"]
        accuracy = found["metrics"]["accuracy"]
        assert found["rows"] == 1000 and accuracy["reference"] == pytest.approx(baseline.payload["performance"]["accuracy"])
        assert accuracy["high"] < accuracy["reference"] and accuracy["severity"] == "critical"
        assert ("EstimatedPerformanceDrop", "accuracy", "critical") in model.checker.alerts.active()
        exported = {(a["metric"], a["bound"]): v for v, a in observe(PERFORMANCE_ESTIMATED, [model], mon.errors)}
        assert exported[("accuracy", "estimate")] == accuracy["value"] and exported[("accuracy", "low")] == accuracy["low"]
    finally:
        mon.shutdown()


def test_a_baseline_without_probabilities_or_with_unnamed_outputs_has_no_estimator_or_says_why():
    from mlmon_middleware import Baseline
    from mlmon_middleware.estimated import estimated_performance
    from mlmon_middleware.schema import FeatureSchema

    rng = np.random.default_rng(8)
    x = rng.normal(size=500)
    labels = (x > 0).astype(int)
    assert Baseline.from_data(rng.normal(size=(500, 1)), predictions=labels, labels=labels).estimator is None  # labels
    rows = [{"x": float(a), "p": float(1 / (1 + np.exp(-a)))} for a in x]
    baseline = Baseline.from_data(rows, labels=labels, proba=["p"])
    window = {"time": np.zeros(5), "numeric": np.ones((5, 1)), "categorical": np.empty((5, 0), dtype=object)}
    report, conditions = estimated_performance(baseline.estimator, {}, baseline.schema, window,
                                               FeatureSchema(["label"], ["numeric"]), (0.05, 0.1))
    assert conditions == {} and "'prediction'" in report["note"] and report["rows"] == 0
    with pytest.raises(ValueError, match="not in the data"):
        Baseline.from_data(rows, labels=labels, proba=["q"])


def test_the_labelled_sample_of_a_file_read_in_chunks_is_uniform():
    from mlmon_middleware.training_file import LabelledSample

    counts = np.zeros(10)
    for seed in range(20):
        sample = LabelledSample(1000, seed=seed)
        for chunk in range(10):  # chunks of different sizes, in order
            n = 500 + 100 * chunk
            sample.add(np.full(n, str(chunk), dtype=object), np.full((n, 1), 0.5))
        assert len(sample.labels) == 1000 and sample.seen == sum(500 + 100 * c for c in range(10))
        counts += np.bincount(sample.labels.astype(int), minlength=10)
    expected = 20 * 1000 * np.array([500 + 100 * c for c in range(10)]) / 9500
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), (counts, expected)
    sample = LabelledSample(10)
    sample.add(np.array([None, "1", "0"], dtype=object), np.array([[0.1], [0.9], [0.2]]))
    assert sample.labels.tolist() == ["1", "0"]  # a row without its label is left out


@pytest.mark.parametrize("classes", [None, ["cat", "dog", "fish"]])
def test_the_cli_builds_the_estimator_from_labels_and_probability_columns(tmp_path, capsys, classes):
    import pandas as pd

    from mlmon_middleware import Baseline
    from mlmon_middleware.cli import main

    rng = np.random.default_rng(9)
    n = 3000
    frame = pd.DataFrame({"x": rng.normal(size=n)})
    if classes is None:
        frame["score"] = 1 / (1 + np.exp(-2 * frame["x"]))
        frame["label"] = (rng.random(n) < frame["score"]).astype(int)
        proba = ["score"]
    else:
        logits = np.column_stack([frame["x"], -frame["x"], np.zeros(n)])
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        for j, c in enumerate(classes):
            frame[c] = p[:, j]
        frame["label"] = [classes[rng.choice(3, p=row)] for row in p]
        proba = classes
    frame.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "b.json"
    assert main(["baseline", "build", str(tmp_path / "train.csv"), "--model", "m", "--out", str(out), "--quiet",
                 "--labels", "label", "--proba", *proba, "--chunk-rows", "700"]) == 0
    assert "label-free estimator" in capsys.readouterr().out
    baseline = Baseline.load(out)
    assert list(baseline.features) == ["x"] and baseline.estimator is not None
    assert baseline.estimator.outputs == (("prediction",) if classes is None else tuple(classes))
    assert list(baseline.predictions) == list(baseline.estimator.outputs)  # profiled under the captured names
    assert baseline.payload["performance"]["accuracy"] == baseline.estimator.reference["accuracy"]
    assert main(["baseline", "build", str(tmp_path / "train.csv"), "--model", "m", "--out", str(out), "--quiet",
                 "--proba", *proba]) == 2
    assert "--proba needs --labels" in capsys.readouterr().err


def heteroscedastic(rng, n, centre=0.0):
    """y = x + noise whose σ grows with |x|; the model predicts x: its errors are larger away from 0."""
    x = rng.normal(loc=centre, size=n)
    return x, x + rng.normal(scale=0.3 + np.abs(x), size=n)


def test_direct_loss_estimation_covers_the_realized_loss_and_follows_a_covariate_shift():
    """Its band covers the rows' own noise (windows like the reference: about 95 %); moved where
    the errors are larger, the estimate rises with the realized loss, a little short of it (the
    loss model learnt the edges of the reference from few rows)."""
    from mlmon_middleware import direct_loss

    rng = np.random.default_rng(10)
    x, y = heteroscedastic(rng, 5000)
    model = direct_loss.fit(x[:, None], ["x"], x, y)
    assert model.reference["mae"] == pytest.approx(np.mean(np.abs(y - x)), rel=1e-12)
    covered, windows = 0, 40
    for _ in range(windows):
        xs, ys = heteroscedastic(rng, 1000)
        found = model.estimate(xs[:, None], xs)
        covered += found["mae"]["low"] <= float(np.mean(np.abs(ys - xs))) <= found["mae"]["high"]
        assert found["rmse"]["low"] <= found["rmse"]["value"] <= found["rmse"]["high"]
    assert covered >= 0.8 * windows, covered
    for _ in range(10):
        xs, ys = heteroscedastic(rng, 1000, centre=0.8)  # moved where the errors are larger
        found, realized = model.estimate(xs[:, None], xs)["mae"], float(np.mean(np.abs(ys - xs)))
        assert found["low"] > model.reference["mae"] and found["value"] == pytest.approx(realized, rel=0.15)
    again = direct_loss.DLE.from_dict(model.to_dict())
    assert again.estimate(x[:50, None], x[:50]) == model.estimate(x[:50, None], x[:50])
    assert direct_loss.fit(x[:100, None], ["x"], x[:100], y[:100]) is None  # too few labelled rows


def test_a_regressors_check_estimates_its_loss_and_alerts_when_it_grows():
    from mlmon_middleware import Baseline

    rng = np.random.default_rng(11)
    x, y = heteroscedastic(rng, 4000)
    baseline = Baseline.from_data([{"x": float(v)} for v in x], predictions=x, labels=y)
    assert baseline.estimator.task == "regression"
    mon, model = monitored(baseline)
    try:
        for v in rng.normal(loc=2.0, size=800):
            model.record({"x": float(v)}, {"prediction": float(v)})
        report = model.check_now()["performance_estimated"]
        assert report["method"] == "dle" and report["rows"] == 800
        mae = report["metrics"]["mae"]
        assert mae["low"] > mae["reference"] and mae["relative_change"] > 0.5 and mae["severity"] == "critical"
        assert ("EstimatedPerformanceDrop", "mae", "critical") in model.checker.alerts.active()
    finally:
        mon.shutdown()


def test_the_cli_keeps_a_regressors_loss_estimator(tmp_path, capsys):
    import pandas as pd

    from mlmon_middleware import Baseline
    from mlmon_middleware.cli import main

    rng = np.random.default_rng(12)
    x, y = heteroscedastic(rng, 3000)
    pd.DataFrame({"x": x, "noise": rng.normal(size=3000), "price": y, "predicted": x}).to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "b.json"
    assert main(["baseline", "build", str(tmp_path / "t.csv"), "--model", "m", "--out", str(out), "--quiet",
                 "--labels", "price", "--prediction", "predicted", "--chunk-rows", "800"]) == 0
    assert "(regression, DLE)" in capsys.readouterr().out
    estimator = Baseline.load(out).estimator
    assert estimator.task == "regression" and estimator.features == ("x", "noise") and len(estimator.rows) == 3000
    assert estimator.reference["mae"] == pytest.approx(np.mean(np.abs(y - x)), rel=1e-9)


def test_multiclass_with_known_labels_gives_scikit_learns_macro_averages_even_for_a_class_unseen():
    """One-hot calibrated probabilities (the labels themselves): every label draw is the realized
    labels, so the estimate is scikit-learn's macro precision, recall and F1, averaged over the
    classes present in the labels or the predictions (a fourth class never seen is left out)."""
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(13)
    k, n = 4, 600
    truth = rng.choice(3, n)  # class 3 is never true ...
    proba = rng.dirichlet(np.ones(k), n) * 0.5
    proba[np.arange(n), truth] += 0.5
    proba[:, 3] = 0.0  # ... and never predicted
    proba[rng.random(n) < 0.3] = rng.dirichlet(np.ones(k), 1)[0] * [1, 1, 1, 0]  # some wrong predictions
    predicted = proba.argmax(axis=1)
    known = np.eye(k)[truth]
    draws = estimation._multiclass_draws(known, predicted, proba, seed=0)
    expected = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    for metric, value in zip(("precision", "recall", "f1"), expected[:3]):
        assert np.nanmean(draws[metric]) == pytest.approx(value, rel=1e-12) and np.ptp(draws[metric]) == 0
    assert draws["accuracy"][0] == pytest.approx(np.mean(truth == predicted), rel=1e-12)
    expected_values = estimation._multiclass_expected(known, predicted, proba)  # the full-window value
    for metric, value in zip(("precision", "recall", "f1"), expected[:3]):
        assert expected_values[metric] == pytest.approx(value, rel=1e-12)
