"""Multivariate drift (PCA reconstruction and the domain classifier): false alarms on no-drift
data, power on a correlation flip with unchanged marginals and on a dependence without
correlation, and cost.

    python benchmarks/multivariate.py [--reps N] [--seed S]

Every check runs through a real model's checker (``DriftChecker.check``), on windows of fresh
rows, against a baseline built by ``Baseline.from_data`` from the reference rows (which fits
the reconstruction as ``mlmon baseline build`` does).

1. **False alarms**: the share of no-drift checks whose multivariate verdict is ``warning``, per
   method and for either, per data set, window size n and reference size (95 % Clopper–Pearson
   upper bound). Data sets:
   ``correlated`` (d features in pairs correlated 0.9, the rest independent N(0, 1)),
   ``skewed`` (lognormal features, half of them sums of a shared factor), ``independent``
   (N(0, 1)). The reference is drawn afresh for every 10 checks.
2. **Power**: the share of checks flagged per method after the first pair's correlation changes
   from 0.9 to −0.9 (flipped), 0.5 or 0.7 (every marginal unchanged), and (``folded``) after the
   first feature of an independent set becomes ±the second (b = a where |a| < 1.5381, −a
   elsewhere: b stays N(0, 1) and uncorrelated with a), per window size, with the share of
   those checks in which any single feature drifted (none should).
3. **Cost**: each test against the drift check of the features, 100 and 20 features × 10,000
   rows, 5 interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from calibration import rate_and_bound, upper_bound  # noqa: E402

from mlmon_middleware import Baseline, Monitor, MonitorConfig  # noqa: E402
from mlmon_middleware.analyzer import CheckInputs  # noqa: E402
from mlmon_middleware.drift import classifier, multivariate  # noqa: E402
from mlmon_middleware.drift.engine import compare  # noqa: E402
from mlmon_middleware.drift.policy import DriftPolicy  # noqa: E402

FOLD = 1.5381  # E[a²; |a| < FOLD] = 1/2 for a ~ N(0, 1): the folded pair is uncorrelated
METHODS = ("pca", "classifier")


def draw(kind: str, rng: np.random.Generator, n: int, d: int, first: float = 0.9) -> np.ndarray:
    """``n`` rows of ``d`` features of ``kind``; ``first``: the first pair's correlation
    (``correlated`` only; the other pairs keep 0.9)."""
    if kind == "independent":
        return rng.normal(size=(n, d))
    if kind == "folded":  # the first feature's sign folds the second; every marginal N(0, 1)
        out = rng.normal(size=(n, d))
        out[:, 1] = np.where(np.abs(out[:, 0]) < FOLD, out[:, 0], -out[:, 0])
        return out
    if kind == "skewed":
        shared = rng.normal(size=(n, 1))
        out = rng.normal(size=(n, d))
        out[:, : d // 2] += shared
        return np.exp(out / 2)
    out = rng.normal(size=(n, d))
    for j in range(0, d - 1, 2):
        if j < d // 2:
            rho = first if j == 0 else 0.9
            out[:, j + 1] = rho * out[:, j] + np.sqrt(1 - rho ** 2) * out[:, j + 1]
    return out


def verdicts(baseline: Baseline, windows: list[np.ndarray]) -> list[dict]:
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    model = mon.model("m", baseline=baseline, drift_policy=DriftPolicy(classifier=True))
    out = []
    try:
        for i, rows in enumerate(windows):
            window = {"time": np.full(len(rows), 1e9 + i), "numeric": rows,
                      "categorical": np.empty((len(rows), 0), dtype=object)}
            out.append(model.checker.check(CheckInputs("m", "1", 1e9 + i, window, schema=baseline.schema,
                                                       baseline=baseline, scheduled=False)).report)
    finally:
        mon.shutdown()
    return out


def names(d: int) -> list[str]:
    return [f"f{j}" for j in range(d)]


def false_alarms(reps: int, rng: np.random.Generator) -> None:
    print("## False alarms: no-drift checks with a multivariate warning\n")
    print("| data | features | reference rows | n | checks | PCA | classifier | either | rate (either) | 95 % upper bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    totals = dict.fromkeys((*METHODS, "either"), 0)
    checks = 0
    for kind in ("correlated", "skewed", "independent"):
        for d in (4, 20):
            for reference in (2000, 20_000):
                for n in (100, 1000, 10_000):
                    alarms = dict.fromkeys(totals, 0)
                    for start in range(0, reps, 10):
                        baseline = Baseline.from_data(draw(kind, rng, reference, d), features=names(d))
                        for r in verdicts(baseline, [draw(kind, rng, n, d) for _ in range(min(10, reps - start))]):
                            raised = {m for m in METHODS if r["multivariate"][m]["severity"] == "warning"}
                            for m in raised:
                                alarms[m] += 1
                            alarms["either"] += bool(raised)
                    checks += reps
                    for key, value in alarms.items():
                        totals[key] += value
                    print(f"| {kind} | {d} | {reference:,} | {n:,} | {reps} | {alarms['pca']} | {alarms['classifier']} | "
                          f"{alarms['either']} | {alarms['either'] / reps:.3f} | {upper_bound(alarms['either'], reps):.3f} |",
                          flush=True)
    print()
    for key, value in totals.items():
        print(f"all cells, {key}: {value} alarms in {checks:,} checks = {rate_and_bound(value, checks)}")
    print()


def power(reps: int, rng: np.random.Generator) -> None:
    print("## Power: every marginal unchanged, the first pair's relation changed\n")
    print("| the first pair now | features | reference rows | n | checks | PCA | classifier | a single feature drifted |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for now in (-0.9, 0.5, 0.7, "folded"):
        for d in (4, 20):
            kind = "independent" if now == "folded" else "correlated"
            baseline = Baseline.from_data(draw(kind, rng, 20_000, d), features=names(d))
            for n in (50, 100, 200, 500, 1000, 10_000):
                windows = [draw("folded", rng, n, d) if now == "folded" else draw(kind, rng, n, d, first=float(now))
                           for _ in range(reps)]
                reports = verdicts(baseline, windows)
                flagged = {m: sum(r["multivariate"][m]["severity"] == "warning" for r in reports) / reps for m in METHODS}
                single = sum(bool(r["drifted"]) for r in reports)
                label = "folded (uncorrelated)" if now == "folded" else f"correlation {now:g}"
                print(f"| {label} | {d} | 20,000 | {n:,} | {reps} | {flagged['pca']:.2f} | {flagged['classifier']:.2f} | "
                      f"{single / reps:.2f} |", flush=True)
    print()


def spread(values: list[float], scale: float = 1e3, digits: int = 1) -> str:
    """The median and range of ``values`` (times ``scale``)."""
    median, low, high = (v * scale for v in (statistics.median(values), min(values), max(values)))
    return f"{median:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def cost_of(d: int, rng: np.random.Generator) -> str:
    """One row of the cost table: ``d`` features × 10,000 rows, 5 interleaved rounds."""
    baseline = Baseline.from_data(draw("correlated", rng, 20_000, d), features=names(d))
    rows = draw("correlated", rng, 10_000, d)
    window = {"numeric": rows, "categorical": np.empty((10_000, 0), dtype=object)}
    policy = DriftPolicy()
    classifier.check(baseline.classifier, rows)  # scikit-learn's import is not a check's cost
    times: dict[str, list[float]] = {"check": [], "pca": [], "classifier": []}
    for _ in range(5):
        for name in times:
            start = time.perf_counter()
            if name == "check":
                policy.judge(compare(baseline.features, baseline.schema, window))
            elif name == "pca":
                multivariate.check(baseline.pca, rows)
            else:
                classifier.check(baseline.classifier, rows)
            times[name].append(time.perf_counter() - start)
    ratios = {m: [t / c for t, c in zip(times[m], times["check"])] for m in METHODS}
    return (f"| {d} | {spread(times['check'])} | {spread(times['pca'])} | {spread(ratios['pca'], 1, 3)} | "
            f"{spread(times['classifier'])} | {spread(ratios['classifier'], 1, 3)} |")


def cost(rng: np.random.Generator) -> None:
    print("## Cost: each test against the drift check of the same window (10,000 rows), 5 interleaved rounds\n")
    print("| features | drift check ms | PCA ms | PCA / check | classifier ms | classifier / check |")
    print("|---:|---|---|---|---|---|")
    for d in (20, 100):
        print(cost_of(d, rng), flush=True)
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="checks per cell")
    parser.add_argument("--seed", type=int, default=20261206)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; seed {args.seed}\n")
    false_alarms(args.reps, rng)
    power(max(args.reps // 2, 20), rng)
    cost(rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
