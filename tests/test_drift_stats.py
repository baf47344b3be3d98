"""Each drift statistic agrees with scipy (or the published formula) to 1e-9 on random data."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from mlmon_middleware.drift import stats

seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(1, 400)


def samples(seed, n_ref, n_cur, ties=False):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 1, n_ref)
    cur = rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 2), n_cur)
    if ties:  # rounded values: many exact ties within and across samples
        ref, cur = np.round(ref, 1), np.round(cur, 1)
    return np.sort(ref), np.sort(cur)


@settings(max_examples=200, deadline=None)
@given(seeds, sizes, sizes, st.booleans())
def test_ks_matches_scipy(seed, n_ref, n_cur, ties):
    ref, cur = samples(seed, n_ref, n_cur, ties)
    with np.errstate(divide="ignore"):
        expected = ks_2samp(ref, cur, method="asymp")
    d = stats.ks_statistic(ref, cur)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    p = stats.ks_pvalue(np.array([d]), [n_ref], [n_cur])[0]
    if n_ref == n_cur == 1:  # scipy: NaN (an effective sample of 0); we: no evidence
        assert p == 1.0
    elif round(n_ref * n_cur / (n_ref + n_cur)) <= stats.EXACT_KS_MAX:  # beyond: Stephens' formula, below
        assert p == pytest.approx(expected.pvalue, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(seeds, sizes, sizes, st.booleans())
def test_wasserstein_matches_scipy(seed, n_ref, n_cur, ties):
    ref, cur = samples(seed, n_ref, n_cur, ties)
    assert stats.wasserstein(ref, cur) == pytest.approx(wasserstein_distance(ref, cur), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(seeds, st.integers(1, 3000), st.integers(1, 30_000),
       st.sampled_from(["normal", "far", "outlier", "integers", "float32"]))
def test_ks_and_wasserstein_at_the_checks_sizes(seed, n_ref, n_cur, kind):
    """The check's shapes: a reference grid of up to a few thousand values against windows up to
    tens of thousands, values far from zero (1e8 + noise), one window value far below the rest,
    few distinct values, float32 grids."""
    rng = np.random.default_rng(seed)
    ref, cur = rng.normal(0, 1, n_ref), rng.normal(rng.uniform(-0.2, 0.2), rng.uniform(0.8, 1.2), n_cur)
    if kind == "far":
        ref, cur = ref + 1e8, cur + 1e8
    elif kind == "outlier":
        ref, cur = ref + 1e8, cur + 1e8
        cur[0] = -1e11
    elif kind == "integers":
        ref, cur = np.round(ref * 2), np.round(cur * 2)
    elif kind == "float32":
        ref = ref.astype(np.float32).astype(float)
    ref, cur = np.sort(ref), np.sort(cur)
    expected_ks, expected_w = ks_2samp(ref, cur).statistic, wasserstein_distance(ref, cur)
    for ks, w in (stats.ks_wasserstein(ref, cur), stats._ks_wasserstein_lookup(ref, cur)):  # the merge, the lookup
        assert ks == pytest.approx(expected_ks, abs=1e-12)
        assert w == pytest.approx(expected_w, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("offset, outlier", [(0.0, None), (1e8, None), (1e8, -1e11)])
def test_a_big_window_is_looked_up_and_agrees_with_scipy(offset, outlier, monkeypatch):
    rng = np.random.default_rng(3)
    ref = np.sort(np.round(rng.normal(0, 1, 2000), 2)) + offset
    cur = np.round(rng.normal(0.05, 1.1, max(stats.LOOKUP_FROM, stats.LOOKUP_RATIO * 2000) + 1), 2) + offset
    if outlier is not None:  # one value far below the rest (a sentinel, a unit error)
        cur[0] = outlier
    cur = np.sort(cur)
    calls = []
    monkeypatch.setattr(stats, "_ks_wasserstein_lookup", lambda *samples: calls.append(samples) or (0.0, 0.0))
    stats.ks_wasserstein(ref, cur)
    assert len(calls) == 1  # the dispatch: this window is looked up, not merged
    stats.ks_wasserstein(ref, cur[:stats.LOOKUP_FROM - 1])
    stats.ks_wasserstein(np.sort(np.append(ref, ref + 0.001)), cur)  # a grid over an eighth of the window
    assert len(calls) == 1  # both merged
    monkeypatch.undo()
    ks, w = stats.ks_wasserstein(ref, cur)
    assert ks == pytest.approx(ks_2samp(ref, cur).statistic, abs=1e-12)
    assert w == pytest.approx(wasserstein_distance(ref, cur), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("offset", [0.0, 1e8])
def test_the_lookup_never_gives_a_negative_distance(offset):
    """Identical samples: a distance of 0, which rounding must not take below 0."""
    rng = np.random.default_rng(11)
    for _ in range(50):
        values = np.sort(rng.normal(offset, 1.0, int(rng.integers(100, 3000))))
        ks, w = stats._ks_wasserstein_lookup(values, values)
        assert ks == 0.0 and 0.0 <= w < 1e-9


@settings(max_examples=200, deadline=None)
@given(seeds, st.integers(0, 2000), st.integers(1, 300))
def test_prefix_sums_match_a_cumulative_sum(seed, n, k):
    """The lookup's sums of the r smallest values, at nondecreasing r with repeats, 0 and n."""
    rng = np.random.default_rng(seed)
    values = rng.normal(rng.uniform(-1e3, 1e3), rng.uniform(0.1, 100), n)
    at = np.sort(np.append(rng.integers(0, n + 1, k), n))  # n always; 0 only when drawn (the sum before it)
    expected = np.append(0.0, np.cumsum(values))[at]
    assert stats.prefix_sums(values, at) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(seeds, st.integers(2, 20), st.integers(1, 8))
def test_psi_and_js_match_the_formula_and_scipy(seed, bins, features):
    rng = np.random.default_rng(seed)
    ref = rng.dirichlet(np.ones(bins), size=features)
    cur = rng.dirichlet(np.ones(bins) * 0.5, size=features)
    cur[:, 0] = 0.0  # an empty bin: the floor keeps PSI finite
    cur /= cur.sum(axis=1, keepdims=True)
    expected_psi = [sum((max(q, 1e-4) - max(p, 1e-4)) * np.log(max(q, 1e-4) / max(p, 1e-4)) for p, q in zip(r, c))
                    for r, c in zip(ref, cur)]
    np.testing.assert_allclose(stats.psi(ref, cur), expected_psi, rtol=0, atol=1e-9)
    expected_js = [jensenshannon(r, c, base=2) for r, c in zip(ref, cur)]
    np.testing.assert_allclose(stats.js_distance(ref, cur), expected_js, rtol=0, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(seeds, st.integers(2, 12), st.integers(0, 3))
def test_chi2_matches_scipy_with_unseen_categories(seed, k, unseen):
    rng = np.random.default_rng(seed)
    ref = rng.integers(1, 200, k).astype(float)
    cur = np.concatenate([rng.integers(0, 200, k), rng.integers(1, 50, unseen)]).astype(float)
    ref = np.concatenate([ref, np.zeros(unseen)])  # categories new in production: count 0 in reference
    statistic, p, dof = stats.chi2_homogeneity(ref, cur)
    table = np.vstack([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    expected = chi2_contingency(table, correction=False)
    assert np.isfinite(statistic)
    assert statistic == pytest.approx(expected.statistic, rel=1e-9, abs=1e-9)
    assert p == pytest.approx(expected.pvalue, abs=1e-9)
    assert dof == expected.dof


def test_chi2_degenerate_tables_are_no_evidence():
    assert stats.chi2_homogeneity(np.array([5.0]), np.array([7.0])) == (0.0, 1.0, 0)
    assert stats.chi2_homogeneity(np.array([5.0, 3.0]), np.array([0.0, 0.0]))[1] == 1.0


def test_bin_counts_and_category_counts():
    cuts = np.array([0.0, 1.0])
    counts = stats.bin_counts(np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan]), cuts)
    assert counts.tolist() == [1, 2, 2]  # [-inf, 0), [0, 1), [1, inf)
    names, ref, cur = stats.category_counts({"a": 0.75, "b": 0.25}, 100, ["b", "c", None, "c", "a"])
    assert names == ["a", "b", "c"] and ref.tolist() == [75, 25, 0] and cur.tolist() == [1, 1, 2]


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 0.5), st.integers(51, 10**7), st.integers(51, 10**7))
def test_larger_ks_pvalues_follow_stephens_formula_within_a_few_percent_of_exact(d, n_ref, n_cur):
    from scipy.stats import kstwobign

    n = round(n_ref * n_cur / (n_ref + n_cur))
    assume(n > stats.EXACT_KS_MAX)
    expected = kstwobign.sf((np.sqrt(n) + 0.12 + 0.11 / np.sqrt(n)) * d)
    p = stats.ks_pvalue(np.array([d]), [n_ref], [n_cur])[0]
    assert p == pytest.approx(expected, abs=1e-9)
    if n <= 3000 and p > 1e-6:  # and near scipy's exact distribution (slow to compute beyond)
        from scipy.stats import kstwo

        assert 0.95 <= p / kstwo.sf(d, n) <= 1.13
