"""The drift check: engine values against scipy, the policy's calibration by simulation, alerts."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import binomtest, chi2_contingency, false_discovery_control, ks_2samp, kstwobign, wasserstein_distance

from mlmon_middleware import Baseline, ConfigError
from mlmon_middleware.alerts import Alerts
from mlmon_middleware.drift import stats
from mlmon_middleware.drift.engine import compare
from mlmon_middleware.drift.policy import DriftPolicy, Thresholds, adjust_pvalues
from mlmon_middleware.schema import FeatureSchema

CATS = ["north", "south", "east", "west"]


def reference(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"a": float(a), "b": float(b), "c": float(c), "region": r}
            for a, b, c, r in zip(rng.normal(0, 1, n), rng.normal(5, 2, n), rng.exponential(1, n), rng.choice(CATS, n))]
    return Baseline.from_data(rows, model="m")


def window(n, rng, shift=0.0, scale=1.0, region_p=None):
    numeric = np.column_stack([rng.normal(shift, scale, n), rng.normal(5, 2, n), rng.exponential(1, n)])
    categorical = rng.choice(CATS, n, p=region_p).astype(object).reshape(n, 1)
    return {"numeric": numeric, "categorical": categorical}


@pytest.fixture(scope="module")
def base():
    return reference()


def test_engine_values_agree_with_scipy(base):
    rng = np.random.default_rng(7)
    current = window(3000, rng, shift=0.3, region_p=[0.4, 0.2, 0.2, 0.2])
    current["numeric"][:50, 1] = np.nan  # missing values are left out of the statistics
    current["categorical"][:7, 0] = "atlantis"  # a category the baseline never saw
    result = compare(base.features, base.schema, current)
    for j, name in enumerate(("a", "b", "c")):
        profile, values = base.features[name], current["numeric"][:, j]
        values = values[~np.isnan(values)]
        sample = np.asarray(profile["sample"])  # the 20,000 rows' quantile grid
        ks = ks_2samp(sample, values, method="asymp")
        r = result[name]
        assert r["ks"] == pytest.approx(ks.statistic, abs=1e-12)
        # the p-value is the whole reference's: its size, the grid's statistic made cautious by its bound
        assert (profile["reference_rows"], profile["grid_error"]) == (20_000, 0.5 / 2000)
        effective = round(20_000 * len(values) / (20_000 + len(values)))  # past 50: Stephens' formula
        root = np.sqrt(effective)
        expected_p = kstwobign.sf((root + 0.12 + 0.11 / root) * (ks.statistic - 0.5 / 2000))
        assert r["p_value"] == pytest.approx(expected_p, abs=1e-9)
        assert r["wasserstein"] == pytest.approx(wasserstein_distance(sample, values), rel=1e-9)
        assert r["wasserstein_norm"] == pytest.approx(r["wasserstein"] / profile["std"], rel=1e-12)
        edges = np.asarray(profile["bin_edges"])
        cur = stats.bin_counts(values, edges[1:-1]) / len(values)
        ref = np.asarray(profile["bin_proportions"])
        expected_psi = np.sum((np.clip(cur, 1e-4, None) - np.clip(ref, 1e-4, None))
                              * np.log(np.clip(cur, 1e-4, None) / np.clip(ref, 1e-4, None)))
        assert r["psi"] == pytest.approx(expected_psi, abs=1e-9)
        assert r["js"] == pytest.approx(jensenshannon(ref, cur, base=2), abs=1e-9)
        assert r["rows"] == len(values)
    assert result["b"]["missing_ratio"] == pytest.approx(50 / 3000)
    region = result["region"]
    freqs = base.features["region"]["frequencies"]
    counts = {c: int(np.sum(current["categorical"][:, 0] == c)) for c in [*freqs, "atlantis"]}
    table = np.array([[freqs[c] * 20_000 for c in freqs] + [0.0], list(counts.values())])
    # "atlantis" (7 rows: under 1 expected in the window) gets its own exact test; the p-value is
    # the smaller of the two (the chi² of the other categories here), doubled
    expected = chi2_contingency(table[:, :4], correction=False)
    rare = binomtest(7, 7, 3000 / 23_000).pvalue
    assert expected.pvalue < rare
    assert region["chi2"] == pytest.approx(expected.statistic, rel=1e-9)
    assert region["p_value"] == pytest.approx(2 * expected.pvalue, abs=1e-9)
    assert region["new_category_ratio"] == pytest.approx(7 / 3000)
    assert np.isfinite(region["psi"]) and region["categories"]["names"][-1] == "atlantis"


def test_rare_categories_that_surge_are_not_diluted_and_stay_calibrated_when_they_do_not():
    # a category at 0.1 % of 200,000 training rows is 80 % of a window
    assert stats.categories_test(np.array([199_800.0, 200.0]), np.array([200.0, 800.0]))[1] < 1e-100
    # three categories, the rarest (0.05 %) at 5 % of the window
    p = stats.categories_test(np.array([180_000.0, 19_900.0, 100.0]), np.array([900.0, 50.0, 50.0]))[1]
    assert p < 1e-30
    # no drift, 100-row windows over 3 common and 5 rare categories (expected 0.1 each): p-values
    # from the pooled exact test are not too small (at most ~1.5 % under 1 %, over 3,000 windows)
    shares = np.array([0.4, 0.3, 0.295, 0.001, 0.001, 0.001, 0.001, 0.001])
    rng = np.random.default_rng(1)
    ref = shares * 100_000
    p = np.array([stats.categories_test(ref, rng.multinomial(100, shares).astype(float))[1] for _ in range(3000)])
    assert np.mean(p < 0.01) <= 0.015 and np.mean(p < 0.05) <= 0.06


def test_values_the_baseline_pooled_as_other_count_there():
    names, ref, cur = stats.category_counts({"a": 0.5, "b": 0.3, "__other__": 0.2}, 1000, ["a", "zz", "yy", "b", None])
    assert names == ["a", "b", "__other__"] and cur.tolist() == [1, 1, 2]


def test_corrections_match_scipy_and_the_formula():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.random(rng.integers(1, 30)) ** 3
        np.testing.assert_allclose(adjust_pvalues(p, "bh"), false_discovery_control(p, method="bh"), atol=1e-12)
        np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), np.minimum(p * len(p), 1), atol=1e-12)
        # Holm: the i-th smallest times (m - i), made monotone, capped at 1
        order = np.argsort(p)
        holm = np.minimum(np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))), 1)
        np.testing.assert_allclose(adjust_pvalues(p, "holm")[order], holm, atol=1e-12)


def false_alarm_rate(base, n, checks, seed):
    rng = np.random.default_rng(seed)
    policy = DriftPolicy()
    alarms = 0
    for _ in range(checks):
        verdicts = policy.judge(compare(base.features, base.schema, window(n, rng)))
        alarms += any(v != "none" for v in verdicts.values())
    return alarms / checks


@pytest.mark.parametrize("n, checks", [(200, 1000), (20_000, 300)])
def test_no_drift_raises_at_most_one_percent_of_checks(base, n, checks):
    assert false_alarm_rate(base, n, checks, seed=n) <= 0.01


@pytest.mark.parametrize("shift, feature", [
    ({"shift": 0.25}, "a"),                         # mean + 0.25 sigma
    ({"scale": 1.5 ** 0.5}, "a"),                   # variance x 1.5
    ({"region_p": [0.35, 0.65 / 3, 0.65 / 3, 0.65 / 3]}, "region"),  # a category's share + 10 points
])
def test_injected_shifts_are_caught_in_the_first_check(base, shift, feature):
    for seed in range(20):
        current = window(5000, np.random.default_rng(100 + seed), **shift)
        verdicts = DriftPolicy().judge(compare(base.features, base.schema, current))
        assert verdicts[feature] in ("warning", "critical")
        assert [f for f, v in verdicts.items() if v != "none"] == [feature]


def test_severity_follows_the_effect_size_and_per_feature_thresholds(base):
    rng = np.random.default_rng(5)
    tiny = compare(base.features, base.schema, window(20_000, rng, shift=0.04))
    assert tiny["a"]["p_value"] < 1e-4 and tiny["a"]["effect"] < 0.05  # significant, but no real effect
    assert DriftPolicy().judge(tiny)["a"] == "info"
    big = compare(base.features, base.schema, window(20_000, rng, shift=1.0))
    assert DriftPolicy().judge(big)["a"] == "critical"  # PSI and effect far above their levels
    moderate = compare(base.features, base.schema, window(20_000, rng, shift=0.26))
    assert 0.05 <= moderate["a"]["effect"] < 0.5 and moderate["a"]["psi"] < 0.25
    assert DriftPolicy().judge(moderate)["a"] == "warning"
    assert DriftPolicy(thresholds=Thresholds(effect=0.3)).judge(moderate)["a"] == "info"
    lenient = DriftPolicy(overrides={"a": {"effect": 5, "effect_critical": 10, "psi_critical": 10}})
    assert lenient.judge(big)["a"] == "info"


def test_policy_configuration_errors():
    with pytest.raises(ConfigError, match="correction must be one of 'holm', 'bonferroni', 'bh'"):
        DriftPolicy(correction="fdr")
    with pytest.raises(ConfigError, match=r"overrides\['a'\]: unknown thresholds \['psi'\]"):
        DriftPolicy(overrides={"a": {"psi": 0.2}})
    with pytest.raises(ConfigError, match="alpha must be in"):
        DriftPolicy(alpha=0)


def test_adaptive_thresholds_follow_a_features_own_history():
    policy = DriftPolicy(adaptive_k=3.0, adaptive_min_history=30)
    noisy = [(0.15 + 0.01 * (i % 5), 0.2 + 0.02 * (i % 3)) for i in range(40)]
    history = {"noisy": noisy, "short": [(0.5, 0.5)] * 5}
    adapted = policy.adapted(history)
    effects, psis = np.array(noisy).T
    assert adapted.thresholds_for("noisy").effect == pytest.approx(effects.mean() + 3 * effects.std())
    assert adapted.thresholds_for("noisy").effect_critical == 0.5  # the adapted floor is still below it
    assert adapted.thresholds_for("noisy").psi_critical == pytest.approx(max(0.25, psis.mean() + 3 * psis.std()))
    assert adapted.thresholds_for("short").effect == 0.05  # not enough history yet
    assert DriftPolicy().adapted(history) == DriftPolicy()


def test_alerts_sustain_deduplicate_and_survive_a_broken_callback():
    seen = []

    def callback(event):
        seen.append((event["state"], event["severity"]))
        raise RuntimeError("pager down")

    alerts = Alerts(fire_after=2, resolve_after=2, callback=callback, model="m")
    key = ("FeatureDrift", "a")
    assert alerts.update({key: "warning"}) == []  # one check is not sustained
    assert alerts.update({key: "none"}) == []  # and the streak is broken
    alerts.update({key: "warning"})
    [event] = alerts.update({key: "warning"})
    assert (event["state"], event["model"]) == ("firing", "m")
    assert alerts.update({key: "warning"}) == []  # no repeat while the state holds
    assert [e["state"] for e in alerts.update({key: "critical"})] == ["severity_changed"]
    assert alerts.update({}) == []  # one clean check is not enough to resolve
    assert [e["state"] for e in alerts.update({})] == ["resolved"]
    assert seen == [("firing", "warning"), ("severity_changed", "critical"), ("resolved", "critical")]
    assert alerts.errors == 3 and alerts.active() == []


def test_schema_and_profiles_line_up(base):
    assert base.schema == FeatureSchema(["a", "b", "c", "region"], ["numeric"] * 3 + ["categorical"])
