"""Drift forecasts: false alarms of the DriftForecast condition, lead time and accuracy, and cost.

    python benchmarks/forecast.py [--streams N] [--seed S] [--quick]

Every check runs through a real model's checker (``DriftChecker.check``: compare, the policy,
the trend, the forecast, the alert state, all with the default policy: the trend must be
significant at 2 points in a row, and the alert then fires after 2 checks), on windows that
share no row with the previous one: each check adds a point to the trend, the most that can
happen to it (overlapping windows add fewer).

1. **False alarms**: streams of no-drift data (a reference of 5,000 rows, then 40 checks of
   ``n`` fresh rows each), per data family, window size and number of features: the streams in
   which the ``DriftForecast`` alert fired at all (the honest unit: the checks of one stream
   share most of their points), with its 95 % Clopper–Pearson upper bound, and the share of
   checks it was firing in (once a trend has its 8 points).
2. **Lead time and accuracy**: one of 20 gaussian features drifts, its mean moving linearly so
   that its effect (Wasserstein/σ: the mean shift) reaches the warning level at check 40: from
   0 to 0.05 σ at the default level, or 0 to 0.2 σ with the feature's level raised to 0.2. Per
   window size: the share of streams in which DriftForecast fired before FeatureDrift, the
   median check it fired at, and the forecast made at check 30: its median and 90th-percentile
   error relative to the time left until the measured effect reaches the level (about 10
   checks: the effect is measured from the reference sample's own mean, which moves the
   crossing), ``inf`` where no significant trend was found, and the share within ±20 %.
3. **Cost**: the forecasts of 100 features from 20 points (what a check pays when a point is
   added; otherwise the cached forecasts are reused) against the drift check of 100 features ×
   10,000 rows, interleaved over 5 rounds: median and spread of the ratio.
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
from calibration import Setup, rate_and_bound, upper_bound  # noqa: E402  (the same data families and bounds)

from mlmon_middleware import Monitor, MonitorConfig  # noqa: E402
from mlmon_middleware.analyzer import CheckInputs  # noqa: E402
from mlmon_middleware.drift.engine import compare  # noqa: E402
from mlmon_middleware.drift.forecast import DriftTrend  # noqa: E402
from mlmon_middleware.drift.policy import DriftPolicy  # noqa: E402

HOUR = 3600.0
CHECKS = 40


def run_stream(setup: Setup, rng: np.random.Generator, n: int, checks: int, policy: DriftPolicy,
               drift=None) -> list[tuple[dict, list]]:
    """``checks`` hourly checks of ``n`` fresh rows each; per check (report, active alerts).
    ``drift(i)`` gives the generators of the drifted features at check ``i``."""
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    model = mon.model("m", baseline=setup.baseline, drift_policy=policy)
    out = []
    try:
        for i in range(checks):
            numeric, categorical = setup.draw(rng, n, drift(i) if drift else None)
            now = 1e9 + i * HOUR
            window = {"time": np.linspace(now - HOUR + 1, now, n), "numeric": numeric, "categorical": categorical}
            report = model.checker.check(CheckInputs("m", "1", now, window, schema=setup.schema,
                                                     baseline=setup.baseline)).report
            out.append((report, model.checker.alerts.active()))
    finally:
        mon.shutdown()
    return out


def false_alarms(streams: int, rng: np.random.Generator, quick: bool) -> None:
    print("## False alarms: no-drift checks with any DriftForecast condition\n")
    print("| family | n | features | streams | streams with an alarm | 95 % upper bound | checks firing |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    policy = DriftPolicy()  # the default: a trend significant at 2 points in a row, then 2 checks
    total = [0, 0]
    for family in ("gaussian", "lognormal", "categorical_3"):
        for n in (200, 1000) if quick else (200, 1000, 10_000):
            for features in (1, 20):
                checks = alarms = streams_any = 0
                for _ in range(streams):
                    setup = Setup(family, features, 5000, rng)
                    found = [any(a == "DriftForecast" for a, _, _ in active)
                             for _, active in run_stream(setup, rng, n, CHECKS, policy)[policy.forecast_min_points - 1:]]
                    checks += len(found)
                    alarms += sum(found)
                    streams_any += any(found)
                total[0] += streams
                total[1] += streams_any
                print(f"| {family} | {n:,} | {features} | {streams} | {streams_any} | {upper_bound(streams_any, streams):.3f} | "
                      f"{alarms / checks:.4f} |", flush=True)
    print(f"\nall cells: an alarm in {total[1]} of {total[0]:,} streams = {rate_and_bound(total[1], total[0])}, "
          "each stream 33 checks after its 8th point\n")


def lead_and_accuracy(streams: int, rng: np.random.Generator, quick: bool) -> None:
    print("## Lead time and accuracy: one of 20 gaussian features drifting linearly to its warning level at check 40\n")
    print("| warning level | n | streams | DriftForecast before FeatureDrift | median check it fired | "
          "forecast at check 30: median error | 90th percentile | within ±20 % |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in (0.05, 0.2):
        for n in (1000, 10_000) if quick else (1000, 10_000, 100_000):
            policy = DriftPolicy(overrides={"n0": {"effect": level}})
            before, fired_at, errors = 0, [], []
            for _ in range(streams):
                setup = Setup("gaussian", 20, 5000, rng)
                mean, sd = float(setup.reference[0][:, 0].mean()), float(setup.reference[0][:, 0].std())

                def drift(i: int, step: float = level * sd / CHECKS) -> dict:
                    return {0: lambda g, m, i=i: g.normal(step * i, 1.0, m)}
                # the effect measured is the shift from the reference's own mean over its σ: it
                # reaches the level where level·sd·i/40 − mean = level·sd
                crossing = CHECKS * (1 + mean / (level * sd))
                results = run_stream(setup, rng, n, 31, policy, drift)
                forecast_at = next((i for i, (_, a) in enumerate(results) if any(x[0] == "DriftForecast" for x in a)), None)
                drift_at = next((i for i, (_, a) in enumerate(results) if any(x[0] == "FeatureDrift" and x[1] == "n0"
                                                                                for x in a)), None)
                if forecast_at is not None:
                    fired_at.append(forecast_at)
                    before += drift_at is None or forecast_at < drift_at
                seconds = results[30][0].get("forecast", {}).get("n0", {}).get("seconds")
                remaining = (crossing - 30) * HOUR
                errors.append(np.inf if seconds is None else abs(seconds - remaining) / remaining)
            errors.sort()
            print(f"| {level:g} | {n:,} | {streams} | {before}/{streams} | "
                  f"{statistics.median(fired_at) if fired_at else '–'} | {errors[len(errors) // 2]:.2f} | "
                  f"{errors[int(0.9 * (len(errors) - 1))]:.2f} | {np.mean(np.array(errors) <= 0.2):.2f} |", flush=True)
    print()


def cost(rng: np.random.Generator) -> None:
    print("## Cost: 100 features, forecasts from 20 points against the drift check of 10,000 rows\n")
    setup = Setup("gaussian", 100, 10_000, rng)
    numeric, categorical = setup.draw(rng, 10_000)
    window = {"numeric": numeric, "categorical": categorical}
    trend = DriftTrend(20, 8)
    for i in range(20):
        trend.add("b", i * HOUR, i * HOUR - HOUR + 1, i * HOUR, 10_000,
                  {f"n{j}": float(rng.random() * 0.05) for j in range(100)})
    thresholds = {f"n{j}": 0.05 for j in range(100)}
    policy = DriftPolicy()
    ratios, checks, fits = [], [], []
    for _ in range(5):
        start = time.perf_counter()
        policy.judge(compare(setup.baseline.features, setup.schema, window))
        check = time.perf_counter() - start
        start = time.perf_counter()
        trend._fitted = None  # as when a point was just added
        trend.forecasts(thresholds, 1 - 2 * policy.alpha / 100, 20 * HOUR)
        fit = time.perf_counter() - start
        checks.append(check)
        fits.append(fit)
        ratios.append(fit / check)
    print(f"drift check {statistics.median(checks) * 1e3:.1f} ms (range {min(checks) * 1e3:.1f}–{max(checks) * 1e3:.1f}); "
          f"forecasts {statistics.median(fits) * 1e3:.2f} ms (range {min(fits) * 1e3:.2f}–{max(fits) * 1e3:.2f}); "
          f"ratio {statistics.median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f}), 5 interleaved rounds\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50, help="streams per cell")
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer streams")
    args = parser.parse_args(argv)
    streams = 10 if args.quick else args.streams
    rng = np.random.default_rng(args.seed)
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; seed {args.seed}; {streams} streams per cell\n")
    false_alarms(streams, rng, args.quick)
    lead_and_accuracy(max(streams // 2, 5), rng, args.quick)
    cost(rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
