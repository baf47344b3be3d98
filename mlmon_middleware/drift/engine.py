"""One drift check: a window of rows against a baseline's profiles, every feature at once.

Numeric features get PSI and JS on the baseline's quantile bins (computed for all features in
one vectorised call), KS and Wasserstein against the baseline's sorted sample; categorical
features get chi², PSI and JS on category shares. Data quality comes from the same pass. The
statistics themselves live in :mod:`mlmon_middleware.drift.stats`; the verdicts in
:mod:`mlmon_middleware.drift.policy`.

>>> import numpy as np
>>> from mlmon_middleware.baseline import Baseline
>>> rng = np.random.default_rng(1)
>>> base = Baseline.from_data([{"x": float(v)} for v in rng.normal(0, 1, 5000)])
>>> window = {"numeric": rng.normal(0.8, 1, (2000, 1)), "categorical": np.empty((2000, 0), object)}
>>> result = compare(base.features, base.schema, window)
>>> result["x"]["psi"] > 0.25, result["x"]["p_value"] < 1e-6
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlmon_middleware.drift import stats
from mlmon_middleware.quality import categorical_quality, numeric_quality
from mlmon_middleware.schema import FeatureSchema


def compare(profiles: Mapping[str, Mapping[str, Any]], schema: FeatureSchema,
            window: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Statistics per feature of ``schema`` present in ``profiles``; ``window`` has the
    ``numeric`` and ``categorical`` matrices of a :class:`SlidingWindow` snapshot."""
    out: dict[str, dict[str, Any]] = {}
    binned: list[tuple[str, np.ndarray, np.ndarray]] = []  # (feature, reference shares, current shares)
    for j, name in enumerate(schema.numeric_names):
        profile = profiles.get(name)
        if profile is None or profile.get("kind") != "numeric":
            continue
        column = window["numeric"][:, j]
        result = {"kind": "numeric", **numeric_quality(column, profile)}
        values = np.sort(column[~np.isnan(column)])
        result["rows"] = int(len(values))
        sample = np.asarray(profile.get("sample") or [], dtype=float)
        if len(values) and len(sample):
            cuts = np.asarray(profile["bin_edges"][1:-1], dtype=float)
            reference = np.asarray(profile["bin_proportions"], dtype=float)
            current = stats.bin_counts(values, cuts) / len(values)
            binned.append((name, reference, current))
            result["ks"] = stats.ks_statistic(sample, values)
            result["wasserstein"] = stats.wasserstein(sample, values)
            std = profile.get("std") or 0.0
            result["wasserstein_norm"] = result["wasserstein"] / std if std > 0 else 0.0
            result["bins"] = {"edges": profile["bin_edges"], "reference": reference.tolist(), "current": current.tolist()}
            result["sample_rows"] = len(sample)
        else:
            result["rows"] = 0
        out[name] = result
    if binned:
        width = max(len(r) for _, r, _ in binned)
        ref = np.zeros((len(binned), width))
        cur = np.zeros((len(binned), width))
        for i, (_, r, c) in enumerate(binned):
            ref[i, :len(r)] = r
            cur[i, :len(c)] = c
        ks = np.array([out[name]["ks"] for name, _, _ in binned])
        p_values = stats.ks_pvalue(ks, [out[n]["sample_rows"] for n, _, _ in binned], [out[n]["rows"] for n, _, _ in binned])
        for i, value in enumerate(zip(stats.psi(ref, cur), stats.js_distance(ref, cur), p_values)):
            out[binned[i][0]].update(psi=float(value[0]), js=float(value[1]), p_value=float(value[2]))
    for j, name in enumerate(schema.categorical_names):
        profile = profiles.get(name)
        if profile is None or profile.get("kind") != "categorical":
            continue
        out[name] = _categorical(window["categorical"][:, j], profile)
    return out


def _categorical(column: np.ndarray, profile: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"kind": "categorical", **categorical_quality(column, profile)}
    frequencies = profile.get("frequencies") or {}
    n_ref = max(1, round(profile.get("count", 0) * (1 - profile.get("missing_rate", 0.0))))
    names, ref_counts, cur_counts = stats.category_counts(frequencies, n_ref, column.tolist())
    rows = int(cur_counts.sum())
    result["rows"] = rows
    if rows == 0 or not frequencies:
        result["rows"] = 0
        return result
    statistic, p_value, dof = stats.chi2_homogeneity(ref_counts, cur_counts)
    ref_share = ref_counts / ref_counts.sum()
    cur_share = cur_counts / rows
    result.update(chi2=statistic, p_value=p_value, dof=dof,
                  psi=float(stats.psi(ref_share, cur_share)), js=float(stats.js_distance(ref_share, cur_share)),
                  categories={"names": names, "reference": ref_share.tolist(), "current": cur_share.tolist()})
    return result
