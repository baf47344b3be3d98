"""Multivariate drift (mlmon_middleware.drift.multivariate): the reconstruction against
scikit-learn's PCA, the test against scipy, the baseline keeping it, a correlation flip with
unchanged marginals caught at n = 1,000 through a real check (and no feature flagged), few
false alarms, and the exported score."""

import numpy as np
import pytest
from scipy import stats

from mlmon_middleware import Baseline, Monitor, MonitorConfig
from mlmon_middleware.analyzer import CheckInputs
from mlmon_middleware.drift import multivariate
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.gauges import observe
from mlmon_middleware.instruments import MULTIVARIATE_DRIFT

NAMES = ["a", "b", "c", "d"]


def correlated(rng, n, sign=1.0):
    """Four features: a and b correlated (0.9, or −0.9 with ``sign`` −1), c and d independent;
    every marginal N(0, 1) whatever the sign."""
    a = rng.normal(size=n)
    b = sign * 0.9 * a + np.sqrt(1 - 0.81) * rng.normal(size=n)
    return np.column_stack([a, b, rng.normal(size=n), rng.normal(size=n)])


def test_the_reconstruction_error_is_scikit_learns_and_the_test_is_scipys():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    rows = correlated(rng, 4000)
    model = multivariate.fit(rows, NAMES, seed=3)
    order = np.random.default_rng(3).permutation(len(rows))
    fitted = rows[order[:2000]]
    z = (fitted - fitted.mean(axis=0)) / fitted.std(axis=0)
    pca = PCA(n_components=len(model.components)).fit(z)
    window = correlated(rng, 300, sign=-1.0)  # fewer than a check tests: all of them
    zw = (window - fitted.mean(axis=0)) / fitted.std(axis=0)
    expected = np.sum((zw - pca.inverse_transform(pca.transform(zw))) ** 2, axis=1)
    assert model.errors(window) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert np.cumsum(pca.explained_variance_ratio_)[-1] >= multivariate.VARIANCE
    found = multivariate.check(model, window)
    assert found["p_value"] == pytest.approx(stats.mannwhitneyu(expected, model.reference_errors, alternative="greater",
                                                                method="asymptotic").pvalue, rel=1e-9, abs=1e-300)
    assert found["error_ratio"] == pytest.approx(expected.mean() / model.reference_errors.mean(), rel=1e-9)


def test_the_baseline_keeps_it_and_skips_what_it_cannot_fit(tmp_path):
    rng = np.random.default_rng(1)
    baseline = Baseline.from_data(correlated(rng, 3000), features=NAMES)
    baseline.save(tmp_path / "b.json")
    loaded = Baseline.load(tmp_path / "b.json")
    assert loaded.pca is not None and loaded.pca.features == tuple(NAMES)
    assert np.array_equal(loaded.pca.components, baseline.pca.components)
    assert Baseline.from_data(rng.normal(size=(3000, 1)), features=["x"]).pca is None  # one feature: nothing joint
    assert Baseline.from_data(correlated(rng, 100), features=NAMES).pca is None  # too few rows
    assert multivariate.fit(np.column_stack([rng.normal(size=500), np.ones(500)]), ["x", "const"]) is None


def checks(windows, policy=None):
    rng = np.random.default_rng(2)
    baseline = Baseline.from_data(correlated(rng, 20_000), features=NAMES)
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    model = mon.model("m", baseline=baseline, drift_policy=policy or DriftPolicy(fire_after=1))
    try:
        for i, rows in enumerate(windows):
            window = {"time": np.full(len(rows), 1e9 + i), "numeric": rows,
                      "categorical": np.empty((len(rows), 0), dtype=object)}
            yield model.checker.check(CheckInputs("m", "1", 1e9 + i, window, schema=baseline.schema,
                                                  baseline=baseline)).report, model
    finally:
        mon.shutdown()


def test_a_correlation_flip_with_unchanged_marginals_is_caught_at_1000_rows():
    rng = np.random.default_rng(4)
    for report, model in checks([correlated(rng, 1000, sign=-1.0)]):
        assert report["drifted"] == []  # no feature alone moved
        pca = report["multivariate"]["pca"]
        assert pca["severity"] == "warning" and pca["p_value"] < 1e-10
        assert ("MultivariateDrift", "pca", "warning") in model.checker.alerts.active()
        scores = {attrs["method"]: value for value, attrs in observe(MULTIVARIATE_DRIFT, [model], model.registry.errors)}
        assert scores["pca"] == pca["error_ratio"] > 2


def test_no_drift_windows_rarely_raise_it():
    rng = np.random.default_rng(5)
    raised = sum(report["multivariate"]["pca"]["severity"] == "warning"
                 for report, _ in checks([correlated(rng, n) for n in [100, 1000, 5000] * 60]))
    assert raised <= 4  # of 180 checks: the design rate is alpha = 0.005 (binomial margin)


def test_a_large_reference_keeps_its_held_out_errors_and_a_partial_feature_is_left_out():
    """Found by review: a reference of 40,000 rows or more once kept no held-out errors at all,
    and a feature present in part of the rows made the reference a subgroup of the traffic."""
    rng = np.random.default_rng(7)
    rows = correlated(rng, 50_000)
    model = multivariate.fit(rows, NAMES)
    assert len(model.reference_errors) == multivariate.MAX_REFERENCE
    flag = np.where(rows[:, 0] > 0.5, 1.0, np.nan)  # 1 where present, present in 31 % of the rows
    model = multivariate.fit(np.column_stack([rows, flag]), [*NAMES, "flag"])
    assert model.features == tuple(NAMES)
    window = correlated(rng, 2000)
    assert multivariate.check(model, np.column_stack([window, np.full(2000, np.nan)]), columns=[0, 1, 2, 3])[
        "p_value"] > 0.005  # the whole traffic, not the rows where the flag is present
    holes = window.copy()
    holes[::3, 1] = np.nan
    assert multivariate.check(model, holes)["rows"] == pytest.approx(multivariate.rows_tested(model) * 2 / 3, abs=40)


def test_a_baseline_saved_before_the_reconstruction_existed_loads_without_it(tmp_path):
    import json

    rng = np.random.default_rng(8)
    baseline = Baseline.from_data(correlated(rng, 3000), features=NAMES)
    payload = json.loads(baseline.to_json())
    del payload["multivariate"]
    (tmp_path / "old.json").write_text(json.dumps(payload))
    assert Baseline.load(tmp_path / "old.json").pca is None
