"""The drift check: engine values against scipy, the policy's calibration by simulation, alerts."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, false_discovery_control, ks_2samp, wasserstein_distance

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
        sample = np.asarray(profile["sample"])
        ks = ks_2samp(sample, values, method="asymp")
        r = result[name]
        assert r["ks"] == pytest.approx(ks.statistic, abs=1e-12)
        assert r["p_value"] == pytest.approx(ks.pvalue, abs=1e-9)
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
    expected = chi2_contingency(table, correction=False)
    assert region["chi2"] == pytest.approx(expected.statistic, rel=1e-9)
    assert region["p_value"] == pytest.approx(expected.pvalue, abs=1e-9)
    assert region["new_category_ratio"] == pytest.approx(7 / 3000)
    assert np.isfinite(region["psi"]) and region["categories"]["names"][-1] == "atlantis"


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.random(rng.integers(1, 30)) ** 3
        np.testing.assert_allclose(adjust_pvalues(p, "bh"), false_discovery_control(p, method="bh"), atol=1e-12)
        np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), np.minimum(p * len(p), 1), atol=1e-12)


def false_alarm_rate(base, n, checks, seed):
    rng = np.random.default_rng(seed)
    policy = DriftPolicy()
    alarms = 0
    for _ in range(checks):
        verdicts = policy.judge(compare(base.features, base.schema, window(n, rng)), n)
        alarms += any(v != "none" for v in verdicts.values())
    return alarms / checks


@pytest.mark.parametrize("n, checks", [(200, 1000), (20_000, 500)])
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
        verdicts = DriftPolicy().judge(compare(base.features, base.schema, current), 5000)
        assert verdicts[feature] != "none"
        assert [f for f, v in verdicts.items() if v != "none"] == [feature]


def test_large_windows_use_effect_sizes_and_per_feature_thresholds(base):
    rng = np.random.default_rng(5)
    current = window(20_000, rng, shift=0.02)  # a trivial shift: p < 1e-3 at this size, but no real effect
    result = compare(base.features, base.schema, current)
    assert result["a"]["psi"] < 0.01 and result["a"]["wasserstein_norm"] < 0.05
    assert DriftPolicy().judge(result, 20_000)["a"] == "none"  # effect sizes, not p-values, at this size
    big = compare(base.features, base.schema, window(20_000, rng, shift=1.0))
    assert DriftPolicy().judge(big, 20_000)["a"] == "critical"  # PSI far above 0.25
    info = compare(base.features, base.schema, window(20_000, rng, shift=0.26))
    assert 0.05 <= info["a"]["psi"] < 0.1  # level info: reported, not drift
    assert DriftPolicy(thresholds=Thresholds(wasserstein=1.0, js=1.0)).judge(info, 20_000)["a"] == "info"
    assert DriftPolicy().judge(info, 20_000)["a"] == "warning"  # JS and Wasserstein do pass theirs
    lenient = DriftPolicy(overrides={"a": {"psi_info": 4, "psi_warning": 5, "psi_critical": 10, "js": 1, "wasserstein": 5}})
    assert lenient.judge(big, 20_000)["a"] == "none"


def test_policy_configuration_errors():
    with pytest.raises(ConfigError, match="correction must be 'bh' or 'bonferroni'"):
        DriftPolicy(correction="holm")
    with pytest.raises(ConfigError, match=r"overrides\['a'\]: unknown thresholds \['psi'\]"):
        DriftPolicy(overrides={"a": {"psi": 0.2}})
    with pytest.raises(ConfigError, match="alpha must be in"):
        DriftPolicy(alpha=0)


def test_adaptive_thresholds_follow_a_features_own_history():
    policy = DriftPolicy(adaptive_k=3.0, adaptive_min_history=30)
    history = {"noisy": [0.15 + 0.01 * (i % 5) for i in range(40)], "short": [0.5] * 5}
    adapted = policy.adapted(history)
    expected = np.mean(history["noisy"]) + 3 * np.std(history["noisy"])
    assert adapted.thresholds_for("noisy").psi_warning == pytest.approx(expected)
    assert adapted.thresholds_for("short").psi_warning == 0.1  # not enough history yet
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
