"""Multivariate drift (PCA reconstruction): false alarms on no-drift data, power on a correlation
flip with unchanged marginals, and cost.

    python benchmarks/multivariate.py [--reps N] [--seed S]

Every check runs through a real model's checker (``DriftChecker.check``), on windows of fresh
rows, against a baseline built by ``Baseline.from_data`` from the reference rows (which fits
the reconstruction as ``mlmon baseline build`` does).

1. **False alarms**: the share of no-drift checks whose multivariate verdict is ``warning``,
   per data set, window size n and reference size (95 % Clopper–Pearson upper bound). Data sets:
   ``correlated`` (d features in pairs correlated 0.9, the rest independent N(0, 1)),
   ``skewed`` (lognormal features, half of them sums of a shared factor), ``independent``
   (N(0, 1)). The reference is drawn afresh for every 10 checks.
2. **Power**: the share of checks flagged after the first pair's correlation changes from 0.9
   to −0.9 (flipped), 0.5 or 0.7 (every marginal unchanged), per window size, with the share of
   those checks in which any single feature drifted (none should).
3. **Cost**: the multivariate test against the drift check of the features, 100 features ×
   10,000 rows, 5 interleaved rounds.
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
from mlmon_middleware.drift import multivariate  # noqa: E402
from mlmon_middleware.drift.engine import compare  # noqa: E402
from mlmon_middleware.drift.policy import DriftPolicy  # noqa: E402


def draw(kind: str, rng: np.random.Generator, n: int, d: int, first: float = 0.9) -> np.ndarray:
    """``n`` rows of ``d`` features of ``kind``; ``first``: the first pair's correlation
    (``correlated`` only; the other pairs keep 0.9)."""
    if kind == "independent":
        return rng.normal(size=(n, d))
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
    model = mon.model("m", baseline=baseline, drift_policy=DriftPolicy())
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
    print("| data | features | reference rows | n | checks | alarms | rate | 95 % upper bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total = [0, 0]
    for kind in ("correlated", "skewed", "independent"):
        for d in (4, 20):
            for reference in (2000, 20_000):
                for n in (100, 1000, 10_000):
                    alarms = 0
                    for start in range(0, reps, 10):
                        baseline = Baseline.from_data(draw(kind, rng, reference, d), features=names(d))
                        reports = verdicts(baseline, [draw(kind, rng, n, d) for _ in range(min(10, reps - start))])
                        alarms += sum(r["multivariate"]["severity"] == "warning" for r in reports)
                    total[0] += reps
                    total[1] += alarms
                    print(f"| {kind} | {d} | {reference:,} | {n:,} | {reps} | {alarms} | {alarms / reps:.3f} | "
                          f"{upper_bound(alarms, reps):.3f} |", flush=True)
    print(f"\nall cells: {total[1]} alarms in {total[0]:,} checks = {rate_and_bound(total[1], total[0])}\n")


def power(reps: int, rng: np.random.Generator) -> None:
    print("## Power: the first pair's correlation changes from 0.9, every marginal unchanged\n")
    print("| correlation now | features | reference rows | n | checks | flagged | a single feature drifted |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for now in (-0.9, 0.5, 0.7):
        for d in (4, 20):
            baseline = Baseline.from_data(draw("correlated", rng, 20_000, d), features=names(d))
            for n in (50, 100, 200, 500, 1000, 10_000):
                reports = verdicts(baseline, [draw("correlated", rng, n, d, first=now) for _ in range(reps)])
                flagged = sum(r["multivariate"]["severity"] == "warning" for r in reports)
                single = sum(bool(r["drifted"]) for r in reports)
                print(f"| {now:g} | {d} | 20,000 | {n:,} | {reps} | {flagged / reps:.2f} | {single / reps:.2f} |",
                      flush=True)
    print()


def cost(rng: np.random.Generator) -> None:
    baseline = Baseline.from_data(draw("correlated", rng, 20_000, 100), features=names(100))
    rows = draw("correlated", rng, 10_000, 100)
    window = {"numeric": rows, "categorical": np.empty((10_000, 0), dtype=object)}
    policy = DriftPolicy()
    ratios, checks, tests = [], [], []
    for _ in range(5):
        start = time.perf_counter()
        policy.judge(compare(baseline.features, baseline.schema, window))
        check = time.perf_counter() - start
        start = time.perf_counter()
        multivariate.check(baseline.pca, rows)
        test = time.perf_counter() - start
        checks.append(check)
        tests.append(test)
        ratios.append(test / check)
    print("## Cost: 100 features × 10,000 rows\n")
    print(f"drift check {statistics.median(checks) * 1e3:.1f} ms (range {min(checks) * 1e3:.1f}–{max(checks) * 1e3:.1f}); "
          f"multivariate test {statistics.median(tests) * 1e3:.2f} ms (range {min(tests) * 1e3:.2f}–"
          f"{max(tests) * 1e3:.2f}); ratio {statistics.median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f}), "
          "5 interleaved rounds\n")


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
