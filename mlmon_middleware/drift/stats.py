"""Two-sample drift statistics, computed for many features at once.

Numeric features are compared with a reference *profile* (the baseline's quantile bins and a
grid of its quantiles) rather than raw training data, so a check never needs the training set:

* PSI on the baseline's quantile bins, proportions clipped at ``eps`` (the usual
  floor of 1e-4) so an empty bin is a large but finite contribution:
  ``PSI = Σ (q − p) · ln(q / p)``.
* Jensen–Shannon distance (base 2, so in [0, 1]) on the same bins.
* Kolmogorov–Smirnov statistic and its two-sided p-value (:func:`ks_pvalue`): the exact
  ``scipy.stats.kstwo`` at small effective sizes (as ``scipy.stats.ks_2samp(method="asymp")``),
  Kolmogorov's limit with Stephens' correction beyond.
* Wasserstein-1 distance between the samples (as ``scipy.stats.wasserstein_distance``),
  which the policy divides by the baseline's standard deviation.

Categorical features (:func:`categories_test`): chi² test of homogeneity on the reference and
current counts over the union of categories (as ``scipy.stats.chi2_contingency`` without
continuity correction), so a category never seen in training is an extra column, not an
infinity, with rare categories pooled and, when too few, tested exactly; PSI and JS on the
category shares.

>>> ref = np.array([[0.25, 0.25, 0.25, 0.25]])
>>> cur = np.array([[0.10, 0.20, 0.30, 0.40]])
>>> round(float(psi(ref, cur)[0]), 6), round(float(js_distance(ref, cur)[0]), 6)
(0.228217, 0.200503)

References: Smirnov (1948), Table for estimating the goodness of fit of empirical
distributions; Lin (1991), Divergence measures based on the Shannon entropy; Yurdakul (2018),
Statistical properties of population stability index.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EPS = 1e-4  # proportion floor for PSI (0.0001, the usual choice)


def bin_counts(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Counts of ``values`` (NaN skipped) in the bins cut at ``cuts`` (``len(cuts)+1`` bins, the
    outer ones open), each bin closed on the left: ``[cuts[i-1], cuts[i])``."""
    present = values[~np.isnan(values)]
    return np.bincount(np.searchsorted(cuts, present, side="right"), minlength=len(cuts) + 1)


def sorted_bin_counts(values_sorted: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """:func:`bin_counts` of already sorted values without NaN: one lookup per cut."""
    below = np.searchsorted(values_sorted, cuts, side="left")
    return np.diff(np.concatenate([[0], below, [len(values_sorted)]]))


def psi(ref: np.ndarray, cur: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Population stability index per row of two (features × bins) proportion matrices."""
    p = np.clip(ref, eps, None)
    q = np.clip(cur, eps, None)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1))


def js_distance(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Jensen–Shannon distance (base 2) per row of two (features × bins) weight matrices
    (rows are normalised to sum to 1, as scipy does)."""
    p = ref / ref.sum(axis=-1, keepdims=True)
    q = cur / cur.sum(axis=-1, keepdims=True)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=-1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=-1)
    return np.asarray(np.sqrt(np.clip((kl_p + kl_q) / 2, 0.0, None)))


#: window sizes from which :func:`ks_wasserstein` looks the reference up in the window rather than
#: merging the two, if the window is also :data:`LOOKUP_RATIO` times the reference's size or more:
#: timing the two alone on the project's VM (2026-12-07), the merge's stable argsort costs 4× more
#: once the pooled values pass about 17,000 (out of the cache), where the lookup costs about
#: 0.45 ms against a 2,000-value grid and 1.4 ms against 5,000 (it works per reference value);
#: the whole check's gain, measured by ``benchmarks/check_versions.py``, is in docs/benchmarks.md
LOOKUP_FROM = 16_000
LOOKUP_RATIO = 8


def ks_wasserstein(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float]:
    """The two-sided KS statistic and the Wasserstein-1 distance of two sorted samples (as
    ``scipy.stats.ks_2samp`` and ``wasserstein_distance``), in one pass over the window: a
    merge of the two runs for small windows, a lookup (:func:`_ks_wasserstein_lookup`) for big
    ones (from :data:`LOOKUP_FROM` values and :data:`LOOKUP_RATIO` times the reference's).

    Both ways give scipy's values (the lookup is called directly here, on a small window):

    >>> import scipy.stats
    >>> rng = np.random.default_rng(0)
    >>> ref, cur = np.sort(rng.normal(size=300)), np.sort(np.round(rng.normal(0.2, 1, 1000), 1))
    >>> expected = scipy.stats.ks_2samp(ref, cur).statistic, scipy.stats.wasserstein_distance(ref, cur)
    >>> [bool(np.allclose(way(ref, cur), expected, rtol=0, atol=1e-12))
    ...  for way in (ks_wasserstein, _ks_wasserstein_lookup)]
    [True, True]
    """
    if len(cur_sorted) >= max(LOOKUP_FROM, LOOKUP_RATIO * len(ref_sorted)):
        return _ks_wasserstein_lookup(ref_sorted, cur_sorted)
    # A stable argsort of the two runs is a linear merge, and the running count of reference
    # values gives both empirical CDFs at every pooled point.
    m, n = len(ref_sorted), len(cur_sorted)
    pooled = np.concatenate([ref_sorted, cur_sorted])
    order = np.argsort(pooled, kind="stable")
    values = pooled[order]
    from_ref = np.cumsum(order < m)
    gap = np.abs(from_ref / m - (np.arange(1, m + n + 1) - from_ref) / n)
    # Inside a run of equal values only its last position is a CDF value; the others add no
    # area (zero width) and must not count for the maximum.
    last = np.append(values[1:] != values[:-1], True)
    return float(gap[last].max()), float(np.sum(gap[:-1] * np.diff(values)))


def _ks_wasserstein_lookup(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float]:
    """:func:`ks_wasserstein` without merging: the reference (a grid of a few thousand
    quantiles) is looked up in the window, which is read once, summed by stretches
    (:func:`prefix_sums`).

    Between two consecutive distinct reference values ``u_k < u_k+1`` the reference's CDF is a
    constant ``a``; the window's CDF ``G`` climbs from ``G(u_k)`` to ``G(u_k+1 −)``. So the KS
    statistic is the largest of ``|a − G(u_k)|`` and ``|a − G(u_k+1 −)|``, and the area
    ``∫ |a − G|`` over the interval splits where ``G`` reaches ``a`` (at the window's
    ``⌈a·n⌉``-th value) into two integrals of ``G``, each read from ``H(x) = ∫ G``: with ``r``
    window values at or below ``x``, ``n·H(x) = r·x − (their sum)``, exact for any ``r`` that
    counts all values below ``x`` and only values equal to it besides. The sums are of the
    values less the window's median, so that values far from zero lose no precision (nor do the
    others beside one far outlier). Checked against scipy in :func:`ks_wasserstein`'s example and
    ``tests/test_drift_stats.py``.
    """
    m, n = len(ref_sorted), len(cur_sorted)
    last = np.empty(m, dtype=bool)  # the last of each run of equal reference values
    np.not_equal(ref_sorted[1:], ref_sorted[:-1], out=last[:-1])
    last[-1] = True
    u = ref_sorted[last]
    at_or_below = np.flatnonzero(last) + 1  # reference values <= each u
    a = at_or_below / m
    right = np.searchsorted(cur_sorted, u, side="right")  # window values <= each u
    left = np.searchsorted(cur_sorted, u, side="left")  # window values < each u
    ks = max(float(np.max(np.abs(a - right / n))), float(np.max(np.abs(np.append(0.0, a[:-1]) - left / n))))

    shift = cur_sorted[n // 2]  # the median: one outlier far from the rest must not set the scale
    # the intervals [lo, hi) and the reference's CDF level on each: before u_0 (0), between the
    # u (a), after the last (1, up to the window's largest value); r_ counts window values <= x
    lo, r_lo = np.append(min(shift, u[0]), u), np.append(0, right)
    hi, r_hi = np.append(u, max(cur_sorted[-1], u[-1])), np.append(right, n)
    counts = np.append(0, at_or_below)
    level = counts / m
    reach = -(-(counts * n) // m)  # G >= level from the window's reach-th value on (1-based)
    crossing = np.where(reach > 0, cur_sorted[np.maximum(reach, 1) - 1], -np.inf)
    cross = np.clip(crossing, lo, hi)
    # reach when the crossing is inside; at a tie with lo or hi any count of the values below it
    # and some equal to it does, so clipped to [r_lo, r_hi]: the r's then run in order
    r_cross = np.clip(reach, r_lo, r_hi)
    # the sums of the r smallest window values, less r·shift, at each r used
    sums = prefix_sums(cur_sorted - shift, np.stack([r_lo, r_cross, r_hi], axis=1).ravel()).reshape(-1, 3).T
    h_lo, h_cross, h_hi = (r * (x - shift) - s for x, r, s in zip((lo, cross, hi), (r_lo, r_cross, r_hi), sums))
    below_level = level * (cross - lo) * n - (h_cross - h_lo)  # n·∫ (level − G) where G < level
    above_level = (h_hi - h_cross) - level * (hi - cross) * n  # n·∫ (G − level) where G >= level
    # exact up to rounding of the order of 1e-15 × the values' spread: a distance of 0 may come
    # out as -1e-16, which a distance cannot be
    return ks, max(0.0, float(np.sum(below_level + above_level)) / n)


def prefix_sums(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values[:r].sum()`` for each ``r`` of the nondecreasing ``at`` (integers from 0 to
    ``len(values)``): one sum per stretch between consecutive ``r`` and a cumulative sum of those,
    rather than a cumulative sum of every value (which runs one addition after another: several
    times slower at 100,000 values against a few thousand ``r``).

    >>> prefix_sums(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 2, 2, 4]))
    array([ 0.,  3.,  3., 10.])
    """
    padded = np.append(values, 0.0)  # reduceat's indices must be inside: the last r may be len(values)
    stretches = np.add.reduceat(padded, at)[:-1]
    stretches[at[:-1] == at[1:]] = 0.0  # reduceat gives an empty stretch's first value
    return np.asarray(padded[:at[0]].sum() + np.append(0.0, np.cumsum(stretches)))


def ks_statistic(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> float:
    """Two-sided KS statistic of two sorted samples (as ``scipy.stats.ks_2samp``)."""
    return ks_wasserstein(ref_sorted, cur_sorted)[0]


EXACT_KS_MAX = 50  # effective sizes up to which the KS p-value uses scipy's exact kstwo


def ks_pvalue(statistic: np.ndarray, n_ref: np.ndarray, n_cur: np.ndarray) -> np.ndarray:
    """Two-sided p-values of KS statistics at the effective size ``round(m n / (m + n))``: from
    the exact one-sample distribution ``kstwo`` up to ``EXACT_KS_MAX`` (as
    ``scipy.stats.ks_2samp(method="asymp")``), and beyond from Kolmogorov's limit with Stephens'
    (1970) correction, ``kstwobign.sf((√n + 0.12 + 0.11/√n) D)``: between 0.96 and 1.12 times the
    exact value down to p = 1e-6 there, where ``kstwo`` takes from 0.05 to 5 ms per feature
    (measured: 460 ms for a hundred drifting features at n = 5,000) and this a microsecond."""
    from scipy.stats import kstwo, kstwobign

    statistic = np.asarray(statistic, dtype=float)
    n_ref = np.asarray(n_ref, dtype=float)
    n_cur = np.asarray(n_cur, dtype=float)
    rounded = np.round(n_ref * n_cur / (n_ref + n_cur))
    effective = np.maximum(rounded, 1)
    exact = effective <= EXACT_KS_MAX
    p = np.empty(np.broadcast(statistic, effective).shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic, effective = np.broadcast_arrays(statistic, effective)
        p[exact] = kstwo.sf(statistic[exact], effective[exact])
        root = np.sqrt(effective[~exact])
        p[~exact] = kstwobign.sf((root + 0.12 + 0.11 / root) * statistic[~exact])
    return np.asarray(np.where(rounded >= 1, np.clip(p, 0.0, 1.0), 1.0))  # one value on each side: no evidence


def wasserstein(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> float:
    """Wasserstein-1 distance of two sorted samples (as ``scipy.stats.wasserstein_distance``)."""
    return ks_wasserstein(ref_sorted, cur_sorted)[1]


def chi2_homogeneity(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float, int]:
    """Chi² test that two count vectors over the same categories come from one distribution:
    ``(statistic, p-value, degrees of freedom)``; categories empty in both are dropped."""
    from scipy.stats import chi2

    table = np.vstack([ref_counts, cur_counts]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    dof = table.shape[1] - 1
    if dof < 1 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0, max(dof, 0)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return statistic, float(chi2.sf(statistic, dof)), dof


OTHER = "__other__"  # a baseline's pooled tail of categories (profile.MAX_CATEGORIES)
MIN_EXPECTED = 5.0  # Cochran's rule: the chi² approximation needs about five expected rows per cell


def categories_test(ref_counts: np.ndarray, cur_counts: np.ndarray, min_expected: float = MIN_EXPECTED
                    ) -> tuple[float, float, int]:
    """One p-value for two count vectors over the same categories: ``(chi², p-value, dof)``.

    The chi² approximation needs about ``min_expected`` rows per cell (Cochran's rule); on windows
    of a few hundred rows over many rare categories it does not hold, and alarms far more often
    than its level. So the categories whose expected count (under one common distribution) is
    below it in the smaller sample are taken out and pooled: when the pool is large enough it
    joins the chi² test as one column; when it is not, the pool gets its own exact test (a
    binomial test of the current sample's share of the pool's rows, as Fisher's exact test would
    give) and the feature's p-value is the smaller of the two, doubled (Bonferroni). A rare
    category that surges is therefore never diluted into a common one.

    >>> categories_test(np.array([199_800.0, 200.0]), np.array([200.0, 800.0]))[1] < 1e-100  # a rare one surges
    True
    >>> round(categories_test(np.array([900.0, 90.0, 9.0]), np.array([90.0, 9.0, 1.0]))[1], 3)  # no change
    1.0
    """
    from scipy.stats import binomtest

    total = ref_counts + cur_counts
    keep = total > 0
    ref, cur, total = ref_counts[keep], cur_counts[keep], total[keep]
    grand = total.sum()
    if grand == 0 or len(total) < 2 or ref.sum() == 0 or cur.sum() == 0:
        return 0.0, 1.0, 0
    share = cur.sum() / grand  # of any category's rows, the share expected in the current sample
    expected = total * min(share, 1 - share)  # in the smaller sample
    rare = expected < min_expected
    if not rare.any():
        return chi2_homogeneity(ref, cur)
    if expected[rare].sum() >= min_expected:  # the rare categories, pooled, are one good column
        return chi2_homogeneity(np.append(ref[~rare], ref[rare].sum()), np.append(cur[~rare], cur[rare].sum()))
    tests = []
    if (~rare).sum() >= 2:
        tests.append(chi2_homogeneity(ref[~rare], cur[~rare]))
    pooled = binomtest(int(round(cur[rare].sum())), int(round(total[rare].sum())), share)
    tests.append((0.0, float(pooled.pvalue), 1))
    statistic, p_value, dof = min(tests, key=lambda t: t[1])
    return statistic, min(1.0, p_value * len(tests)), dof


def effect_w(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    """An effect size for shares: ``sqrt(Σ (q − p)² / ((p + q) / 2))``, Cohen's w with the two
    distributions' mean in the denominator so that new and vanished categories stay finite (at
    most 2). For two categories it equals the shift of the share divided by its standard
    deviation, as Wasserstein/σ does for a binary number (0.3 → 0.4: about 0.21).

    >>> round(effect_w(np.array([0.7, 0.3]), np.array([0.6, 0.4])), 3)
    0.21
    """
    mean = (ref_share + cur_share) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(mean > 0, (cur_share - ref_share) ** 2 / mean, 0.0)
    return float(np.sqrt(terms.sum()))


def category_counts(frequencies: Mapping[str, float], n_ref: int, current: Sequence[str | None]
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Reference and current counts over the union of categories (reference first, then the
    categories new in ``current`` in order of appearance); missing values (None) are skipped.
    When the baseline pooled its least frequent categories as ``__other__``, current values it
    does not list count there, not as new categories."""
    seen = collections.Counter(current)  # counted in C; keys in order of first appearance
    seen.pop(None, None)
    if OTHER in frequencies:
        unlisted = [value for value in seen if value not in frequencies]
        seen[OTHER] = seen.get(OTHER, 0) + sum(seen.pop(value) for value in unlisted)
    names: list[str] = [*frequencies, *(value for value in seen if value is not None and value not in frequencies)]
    cur_counts = [seen.get(name, 0) for name in names]
    ref = np.zeros(len(names))
    ref[:len(frequencies)] = np.fromiter(frequencies.values(), float, len(frequencies)) * n_ref
    return names, ref, np.asarray(cur_counts, dtype=float)


def reference_rows(profile: Mapping[str, Any]) -> int:
    """Rows with a value behind a feature's baseline profile: its ``reference_rows``, or (for
    categorical features and older baselines) count × (1 − missing rate).

    >>> reference_rows({"count": 1000, "missing_rate": 0.25}), reference_rows({"reference_rows": 7, "count": 9})
    (750, 7)
    """
    return int(profile.get("reference_rows") or round(profile.get("count", 0) * (1 - profile.get("missing_rate", 0.0))))
