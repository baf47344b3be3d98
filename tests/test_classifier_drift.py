"""The domain classifier (mlmon_middleware.drift.classifier): its test and AUC against scipy and
scikit-learn on the held-out scores, the baseline keeping its reference rows (missing values
too), a correlation flip and a dependence no correlation shows caught at n = 1,000 through a real
check, few false alarms, the exported score, and what happens without scikit-learn."""

import sys

import numpy as np
import pytest
from scipy import stats
from test_multivariate import NAMES, checks, correlated

from mlmon_middleware import Baseline, ConfigError
from mlmon_middleware.drift import classifier
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.gauges import observe
from mlmon_middleware.instruments import MULTIVARIATE_DRIFT


def test_the_p_value_and_auc_are_scipys_and_scikit_learns_on_the_held_out_scores():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    reference = classifier.fit(correlated(rng, 5000), NAMES, seed=1)
    assert reference.rows.shape == (classifier.MAX_REFERENCE, 4)
    for sign, n in ((1.0, 300), (-1.0, 300), (-0.3, 5000)):
        rows = correlated(rng, n, sign=sign)
        found = classifier.check(reference, rows, seed=4)
        window = classifier.window_rows(reference, rows, seed=4)
        assert found["rows"] == len(window) == min(n, classifier.rows_tested(reference))
        current, baseline = classifier.held_out_scores(reference, window, seed=4)
        assert len(current) == len(window) - len(window) // 2 and len(baseline) == len(reference.rows) - len(window) // 2
        expected = stats.mannwhitneyu(current, baseline, alternative="greater", method="asymptotic").pvalue
        assert found["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-300)
        auc = roc_auc_score(np.r_[np.ones(len(current)), np.zeros(len(baseline))], np.r_[current, baseline])
        assert found["auc"] == pytest.approx(auc, rel=1e-9)


def test_the_baseline_keeps_the_reference_rows_with_their_gaps(tmp_path):
    rng = np.random.default_rng(1)
    rows = correlated(rng, 3000)
    rows[::7, 2] = np.nan
    baseline = Baseline.from_data(rows, features=NAMES)
    baseline.save(tmp_path / "b.json")
    loaded = Baseline.load(tmp_path / "b.json")
    assert loaded.classifier.features == tuple(NAMES)
    assert np.array_equal(loaded.classifier.rows, baseline.classifier.rows, equal_nan=True)
    assert np.isnan(loaded.classifier.rows[:, 2]).any()
    assert Baseline.from_data(rng.normal(size=(3000, 1)), features=["x"]).classifier is None  # one feature
    assert Baseline.from_data(correlated(rng, 300), features=NAMES).classifier is None  # too few rows
    constant = classifier.fit(np.column_stack([rng.normal(size=(900, 2)), np.ones(900)]), ["x", "y", "const"])
    assert constant.features == ("x", "y")  # a constant says nothing
    wide = classifier.fit(rng.normal(size=(3000, 200)), [f"f{j}" for j in range(200)])
    assert wide.rows.size <= classifier.MAX_CELLS and len(wide.rows) == classifier.MAX_CELLS // 200
    assert classifier.fit(rng.normal(size=(3000, 300)), [f"f{j}" for j in range(300)]) is None  # 333 rows: too few


ON = DriftPolicy(fire_after=1, classifier=True)


def test_a_correlation_flip_is_caught_at_1000_rows_and_exported():
    rng = np.random.default_rng(4)
    for report, model in checks([correlated(rng, 1000, sign=-1.0)], ON):
        found = report["multivariate"]["classifier"]
        assert found["severity"] == "warning" and found["p_value"] < 1e-10 and found["auc"] > 0.8
        assert ("MultivariateDrift", "classifier", "warning") in model.checker.alerts.active()
        scores = {attrs["method"]: value for value, attrs in observe(MULTIVARIATE_DRIFT, [model], model.registry.errors)}
        assert scores["classifier"] == found["auc"]


def test_a_dependence_without_correlation_is_caught():
    """b = a inside |a| < c and −a outside: b stays N(0, 1) and uncorrelated with a (c chosen so),
    yet the two are tied together: what a covariance cannot see, a classifier can."""
    c = 1.5381
    rng = np.random.default_rng(6)
    a = rng.normal(size=1000)
    b = np.where(np.abs(a) < c, a, -a)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1 and stats.kstest(b, "norm").pvalue > 0.01
    rows = np.column_stack([a, b, rng.normal(size=1000), rng.normal(size=1000)])
    independent = Baseline.from_data(rng.normal(size=(20_000, 4)), features=NAMES)
    found = classifier.check(independent.classifier, rows)
    assert found["p_value"] < 1e-6 and found["auc"] > 0.6


def test_no_drift_windows_rarely_raise_it():
    rng = np.random.default_rng(5)
    raised = sum(report["multivariate"]["classifier"]["severity"] == "warning"
                 for report, _ in checks([correlated(rng, n) for n in [100, 1000, 5000] * 40], ON))
    assert raised <= 3  # of 120 checks: the design rate is alpha = 0.005 (binomial margin)


def test_it_runs_only_when_the_policy_asks_and_its_floor_is_bounded():
    rng = np.random.default_rng(8)
    for report, _ in checks([correlated(rng, 500, sign=-1.0)]):  # the default policy: PCA only
        assert set(report["multivariate"]) == {"pca"}
    with pytest.raises(ConfigError, match="classifier_auc"):
        DriftPolicy(classifier_auc=0.4)


def test_without_scikit_learn_the_check_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)  # import fails as if not installed
    rng = np.random.default_rng(9)
    found = classifier.check(classifier.fit(correlated(rng, 2000), NAMES), correlated(rng, 500))
    assert found["p_value"] is None and found["rows"] == 0 and "pip install" in found["note"]
