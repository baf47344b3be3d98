"""Calibration of the drift verdict: false alarms on no-drift data, and power against a baseline.

    python benchmarks/calibration.py [--quick] [--part all|features|labels] [--reps N] [--power-reps N] [--seed S]
    python benchmarks/calibration.py --summarize OUTPUT.md   # pooled false-alarm tables of a run's output

Prints three tables (Markdown), all from data simulated here with a fixed seed:

1. **False alarms**: the share of no-drift checks in which mlmon's default policy flags any
   feature (a verdict of warning or critical; "info" is not an alarm), per data family, current
   window size n, reference size and number of features, with the 95 % Clopper–Pearson upper
   bound of each rate, then pooled by each of these. The reference is drawn afresh every
   ``REFRESH`` checks wherever the window is at least a tenth of it: a two-sample test's error
   rate is an average over references too, and with one fixed reference and windows larger than
   it, a check mostly re-measures that one reference's own sampling error (see docs/drift.md).
2. **Power**: the share of checks that flag the one drifted feature, for mlmon and, on the same
   data in the same run, for the "Failing Loudly" baseline (Rabanser et al. 2019: a two-sample
   KS test per numeric feature and a chi² test per categorical one, on the whole reference,
   Bonferroni at α = 0.005), per drift and window size.
3. **Practical significance**: at n ≥ 50,000 rows, the verdict of a 0.02 σ mean shift (at most
   "info" is the requirement).
4. **Label-based alerts** (``--part labels``): through a real monitor and prediction log, the
   share of checks of stationary labelled streams that raise a performance-degradation or
   concept-drift condition, and how many checks after an error-rate jump the alerts fire with
   the default policy.

The checks call the analysis directly (``Baseline.from_encoded`` + ``compare`` + ``DriftPolicy``):
what a monitored service's check runs, without the service around it. ``--quick`` is the subset
the test suite runs (tests/test_calibration.py) with binomial margins.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy.stats import beta, chi2_contingency, ks_2samp

from mlmon_middleware.baseline import Baseline
from mlmon_middleware.drift.engine import compare
from mlmon_middleware.drift.policy import RANK, DriftPolicy
from mlmon_middleware.schema import CATEGORICAL, NUMERIC, Encoded, FeatureSchema

ALPHA = 0.005  # the baseline's family level, and mlmon's default
Generator = Callable[[np.random.Generator, int], np.ndarray]


def _zipf_shares(levels: int, exponent: float = 1.3) -> np.ndarray:
    shares = 1.0 / np.arange(1, levels + 1) ** exponent
    return shares / shares.sum()


ZIPF50 = _zipf_shares(50)  # the 50th level: about 0.2 % of rows
THREE = np.array([0.5, 0.3, 0.2])


def _categories(shares: np.ndarray) -> Generator:
    names = np.array([f"c{i}" for i in range(len(shares))], dtype=object)
    return lambda rng, n: names[rng.choice(len(shares), n, p=shares)]


#: family -> (kind, generator of n values)
FAMILIES: dict[str, tuple[str, Generator]] = {
    "gaussian": (NUMERIC, lambda rng, n: rng.normal(0.0, 1.0, n)),
    "student_t3": (NUMERIC, lambda rng, n: rng.standard_t(3, n)),
    "lognormal": (NUMERIC, lambda rng, n: rng.lognormal(0.0, 1.0, n)),
    "uniform": (NUMERIC, lambda rng, n: rng.uniform(0.0, 1.0, n)),
    "poisson2": (NUMERIC, lambda rng, n: rng.poisson(2.0, n).astype(float)),
    "integers_0_5": (NUMERIC, lambda rng, n: rng.integers(0, 6, n).astype(float)),
    "binary_0.05": (NUMERIC, lambda rng, n: (rng.random(n) < 0.05).astype(float)),
    "binary_0.3": (NUMERIC, lambda rng, n: (rng.random(n) < 0.3).astype(float)),
    "binary_0.5": (NUMERIC, lambda rng, n: (rng.random(n) < 0.5).astype(float)),
    "zero_inflated": (NUMERIC, lambda rng, n: np.where(rng.random(n) < 0.7, 0.0, rng.lognormal(0.0, 1.0, n))),
    "categorical_3": (CATEGORICAL, _categories(THREE)),
    "categorical_50": (CATEGORICAL, _categories(ZIPF50)),
}
MIX = "mix"  # the features cycle through every family above


def family_of(family: str, j: int) -> str:
    return list(FAMILIES)[j % len(FAMILIES)] if family == MIX else family


class Setup:
    """A baseline of ``features`` features of one family (or the mix) built from ``ref_rows`` rows."""

    def __init__(self, family: str, features: int, ref_rows: int, rng: np.random.Generator) -> None:
        self.families = [family_of(family, j) for j in range(features)]
        self.numeric = [j for j, f in enumerate(self.families) if FAMILIES[f][0] == NUMERIC]
        self.categorical = [j for j, f in enumerate(self.families) if FAMILIES[f][0] == CATEGORICAL]
        self.schema = FeatureSchema([f"n{j}" for j in self.numeric] + [f"c{j}" for j in self.categorical],
                                    [NUMERIC] * len(self.numeric) + [CATEGORICAL] * len(self.categorical))
        self.reference = self.draw(rng, ref_rows)
        self.baseline = Baseline.from_encoded(self.schema, Encoded(*self.reference, collections.Counter()))

    def draw(self, rng: np.random.Generator, n: int,
             drift: dict[int, Generator] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rows; ``drift`` replaces the generator of some features (by position)."""
        drift = drift or {}
        numeric = np.empty((n, len(self.numeric)))
        categorical = np.empty((n, len(self.categorical)), dtype=object)
        for i, j in enumerate(self.numeric):
            numeric[:, i] = drift.get(j, FAMILIES[self.families[j]][1])(rng, n)
        for i, j in enumerate(self.categorical):
            categorical[:, i] = drift.get(j, FAMILIES[self.families[j]][1])(rng, n)
        return numeric, categorical

    def verdicts(self, window: tuple[np.ndarray, np.ndarray], policy: DriftPolicy) -> dict[str, str]:
        return dict(policy.judge(compare(self.baseline.features, self.schema,
                                         {"numeric": window[0], "categorical": window[1]})))

    def failing_loudly(self, window: tuple[np.ndarray, np.ndarray]) -> dict[str, bool]:
        """The baseline: KS / chi² per feature on the whole reference, Bonferroni at ALPHA."""
        level = ALPHA / len(self.schema.names)
        out = {}
        for i, j in enumerate(self.numeric):
            out[f"n{j}"] = ks_2samp(self.reference[0][:, i], window[0][:, i], method="asymp").pvalue < level
        for i, j in enumerate(self.categorical):
            ref, cur = self.reference[1][:, i], window[1][:, i]
            levels, codes = np.unique(np.concatenate([ref, cur]), return_inverse=True)  # one sort, not a pass per level
            table = np.stack([np.bincount(codes[:len(ref)], minlength=len(levels)),
                              np.bincount(codes[len(ref):], minlength=len(levels))])
            out[f"c{j}"] = len(levels) > 1 and chi2_contingency(table, correction=False).pvalue < level
        return out


def upper_bound(alarms: int, checks: int) -> float:
    """95 % Clopper–Pearson upper bound of a rate."""
    return 1.0 if alarms == checks else float(beta.ppf(0.975, alarms + 1, checks - alarms))


def rate_and_bound(alarms: int, checks: int) -> str:
    """``0.0025 (95 % upper bound 0.0029)``: a pooled rate as the tables' summary lines give it."""
    return f"{alarms / checks:.4f} (95 % upper bound {upper_bound(alarms, checks):.4f})"


REFRESH = 10  # checks per reference where the window is at least a tenth of the reference


def false_alarms(family: str, features: int, ref_rows: int, n: int, reps: int, rng: np.random.Generator,
                 policy: DriftPolicy, setup: Setup, refresh: int = REFRESH) -> int:
    alarms = 0
    for i in range(reps):
        if i and i % refresh == 0 and n * 10 >= ref_rows:
            setup = Setup(family, features, ref_rows, rng)
        verdicts = setup.verdicts(setup.draw(rng, n), policy)
        alarms += any(RANK[v] >= RANK["warning"] for v in verdicts.values())
    return alarms


# ------------------------------------------------------------------------------------------ power
def shift(sigmas: float) -> Generator:
    return lambda rng, n: rng.normal(sigmas, 1.0, n)


def _moved_mass(rng: np.random.Generator, n: int) -> np.ndarray:
    """The zero-inflated family with its point mass moved from 0 to 1."""
    return np.where(rng.random(n) < 0.7, 1.0, rng.lognormal(0.0, 1.0, n))


def _doubled(shares: np.ndarray, index: int) -> Generator:
    doubled = shares.copy()
    doubled[index] *= 2
    return _categories(doubled / doubled.sum())


#: drift -> (family of the drifted feature, its new generator)
DRIFTS: dict[str, tuple[str, Generator]] = {
    "mean +0.25σ": ("gaussian", shift(0.25)),
    "mean +0.5σ": ("gaussian", shift(0.5)),
    "scale ×1.5": ("gaussian", lambda rng, n: rng.normal(0.0, 1.5, n)),
    "binary 0.3 → 0.4": ("binary_0.3", lambda rng, n: (rng.random(n) < 0.4).astype(float)),
    "a category's share doubled (3 levels)": ("categorical_3", _doubled(THREE, 2)),
    "a category's share doubled (50 levels, the 5th)": ("categorical_50", _doubled(ZIPF50, 4)),
    "point mass moved (zero-inflated)": ("zero_inflated", _moved_mass),
}


def power(drift: str, n: int, ref_rows: int, features: int, reps: int, rng: np.random.Generator,
          policy: DriftPolicy) -> tuple[int, int]:
    """(checks where mlmon flagged the drifted feature, where the baseline did), of ``reps``."""
    family, generator = DRIFTS[drift]
    setup = Setup(family, features, ref_rows, rng)
    target = setup.schema.names[0]  # feature 0 is the drifted one (all features share the family)
    ours = theirs = 0
    for _ in range(reps):
        window = setup.draw(rng, n, drift={0: generator})
        ours += RANK[setup.verdicts(window, policy)[target]] >= RANK["warning"]
        theirs += setup.failing_loudly(window)[target]
    return ours, theirs


# ------------------------------------------------------------------------------------------ plans
SIZES = (100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000, 200_000)
REFERENCES = (500, 5_000, 100_000)
WIDTHS = (5, 20, 100)


def reps_for(n: int, features: int, base: int) -> int:
    """Fewer repetitions where a check is costly, never fewer than 20."""
    cost = n * features
    return max(20, base if cost <= 200_000 else base // 4 if cost <= 2_000_000 else base // 20)


def false_alarm_plan(quick: bool, only: list[str] | None = None, sizes: list[int] | None = None,
                     references: list[int] | None = None, widths: list[int] | None = None
                     ) -> Iterator[tuple[str, int, int, int]]:
    """(family, n, reference rows, features) cells of the false-alarm table."""
    families = only or [*FAMILIES, MIX]
    if quick:
        for family in ("gaussian", "poisson2", "binary_0.05", "zero_inflated", "categorical_50", MIX):
            yield family, 1_000, 5_000, 20
        return
    for family in families:
        for ref_rows in references or REFERENCES:
            for features in widths or WIDTHS:
                for n in sizes or SIZES:
                    yield family, n, ref_rows, features


def labelled_checks(model: Any, rng: np.random.Generator, error_rate: float, labels: int) -> dict[str, Any]:
    """One check of a binary model after ``labels`` new labelled predictions at ``error_rate``."""
    x = rng.normal(size=labels)
    items = []
    for v in x:
        pid = model.record({"x": float(v)}, {"prediction": float(1 / (1 + np.exp(-4 * v)))})
        items.append((pid, int((v > 0) != (rng.random() < error_rate)), None))
    model.record_outcomes(items)
    model.check_now()
    report: dict[str, Any] = dict(model.performance_report())
    return report


def label_alerts(quick: bool, rng: np.random.Generator) -> None:
    """False raises on stationary labelled streams, and checks to fire after an error jump."""
    import logging
    import tempfile

    from mlmon_middleware import Monitor, MonitorConfig

    logging.getLogger("mlmon_middleware").setLevel(logging.ERROR)  # the alert log lines: the tables say it

    print("\n## Label-based alerts: stationary streams (count window 500, reference: the first full window)\n")
    print("| error rate | labels per check | streams × checks | checks raising degradation | raising concept drift |")
    print("|---:|---:|---:|---:|---:|")
    streams, checks = (1, 30) if quick else (5, 60)
    for rate in (0.05, 0.2):
        for per_check in (100, 500):
            degraded = concept = 0
            for _ in range(streams):
                mon = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=tempfile.mkdtemp()))
                model = mon.model("m", performance={"task": "binary", "count_window": 500})
                for _ in range(checks):
                    report = labelled_checks(model, rng, rate, per_check)
                    degraded += any(d["severity"] != "none" for w in report["windows"].values()
                                    for d in w.get("degradation", {}).values())
                    concept += bool(report["concept_drift"].get("raised"))
                mon.shutdown()
            total = streams * checks
            print(f"| {rate:.0%} | {per_check} | {streams} × {checks} | {degraded} ({degraded / total:.1%}) | "
                  f"{concept} ({concept / total:.1%}) |", flush=True)

    print("\n## Label-based alerts: checks after a 5 % → 30 % error jump until each alert fires (default policy)\n")
    print("| labels per check | runs | PerformanceDegradation: median (max) | ConceptDrift: median (max) | never |")
    print("|---:|---:|---:|---:|---:|")
    for per_check in (100, 300):
        delays: dict[str, list[int]] = {"PerformanceDegradation": [], "ConceptDrift": []}
        never = 0
        for _ in range(3 if quick else 20):
            events: list[dict[str, Any]] = []
            mon = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=tempfile.mkdtemp()))
            model = mon.model("m", on_alert=events.append, performance={"task": "binary", "count_window": 500})
            for _ in range(max(5, 1500 // per_check)):
                labelled_checks(model, rng, 0.05, per_check)
            events.clear()
            fired: dict[str, int] = {}
            for check in range(1, 11):
                labelled_checks(model, rng, 0.30, per_check)
                for event in events:
                    fired.setdefault(event["alertname"], check)
            for name in delays:
                if name in fired:
                    delays[name].append(fired[name])
                else:
                    never += 1
            mon.shutdown()
        shown = {n: f"{np.median(d):.0f} ({max(d)})" if d else "-" for n, d in delays.items()}
        print(f"| {per_check} | {3 if quick else 20} | {shown['PerformanceDegradation']} | {shown['ConceptDrift']} | {never} |",
              flush=True)


Cell = tuple[str, int, int, int, int, int]  # family, reference rows, n, features, checks, alarms


def summarize(cells: list[Cell]) -> None:
    """Pooled false-alarm rates by family, window size, reference size and width: single cells of
    a few hundred checks scatter around the design rate (0.5 %) by chance; the pools show it."""
    total_checks = sum(c[4] for c in cells)
    total_alarms = sum(c[5] for c in cells)
    print(f"\nall cells: {total_alarms} alarms in {total_checks:,} checks = {rate_and_bound(total_alarms, total_checks)}\n")
    for title, index in (("family", 0), ("reference rows", 1), ("n", 2), ("features", 3)):
        groups: dict[object, list[int]] = {}
        for cell in cells:
            pooled = groups.setdefault(cell[index], [0, 0])
            pooled[0] += cell[4]
            pooled[1] += cell[5]
        print(f"| {title} | checks | alarms | rate | 95 % upper bound |\n|---|---:|---:|---:|---:|")
        for key, (checks, alarms) in groups.items():
            shown = f"{key:,}" if isinstance(key, int) else key
            print(f"| {shown} | {checks:,} | {alarms} | {alarms / checks:.4f} | {upper_bound(alarms, checks):.4f} |")
        print()


def read_cells(path: str) -> list[Cell]:
    """The false-alarm cells of a run's printed table."""
    cells = []
    for line in open(path, encoding="utf-8"):
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == 8 and parts[1].replace(",", "").isdigit():
            family, ref_rows, n, features, checks, alarms = parts[:6]
            cells.append((family, int(ref_rows.replace(",", "")), int(n.replace(",", "")), int(features),
                          int(checks), int(alarms)))
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test suite's subset")
    parser.add_argument("--reps", type=int, default=100, help="no-drift checks per cheap cell (fewer for big ones)")
    parser.add_argument("--power-reps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--summarize", metavar="OUTPUT", help="print the pooled tables of a run's output and stop")
    parser.add_argument("--part", choices=("all", "features", "labels"), default="all")
    parser.add_argument("--families", nargs="+", choices=[*FAMILIES, MIX], help="only these families' false alarms")
    parser.add_argument("--sizes", nargs="+", type=int, help="only these window sizes' false alarms")
    parser.add_argument("--references", nargs="+", type=int, help="only these reference sizes' false alarms")
    parser.add_argument("--widths", nargs="+", type=int, help="only these numbers of features' false alarms")
    parser.add_argument("--refresh", type=int, default=REFRESH, help="checks per reference for large windows")
    parser.add_argument("--false-alarms-only", action="store_true", help="stop after the false-alarm table")
    args = parser.parse_args(argv)
    if args.summarize:
        summarize(read_cells(args.summarize))
        return 0
    rng = np.random.default_rng(args.seed)
    policy = DriftPolicy()
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; seed {args.seed}\n")
    if args.part == "labels":
        label_alerts(args.quick, rng)
        return 0

    print("## False alarms: share of no-drift checks with any feature at warning or worse\n")
    print("| family | reference rows | n | features | checks | alarms | rate | 95 % upper bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    cells: list[Cell] = []
    setups: dict[tuple[str, int, int], Setup] = {}
    for family, n, ref_rows, features in false_alarm_plan(args.quick, args.families, args.sizes, args.references,
                                                          args.widths):
        key = (family, ref_rows, features)
        if key not in setups:
            setups.clear()  # one setup alive at a time: the 100-feature, 100k-row ones are large
            setups[key] = Setup(family, features, ref_rows, rng)
        reps = reps_for(n, features, args.reps)
        alarms = false_alarms(family, features, ref_rows, n, reps, rng, policy, setups[key], args.refresh)
        worst = max(worst, alarms / reps)
        cells.append((family, ref_rows, n, features, reps, alarms))
        print(f"| {family} | {ref_rows:,} | {n:,} | {features} | {reps} | {alarms} | {alarms / reps:.3f} | "
              f"{upper_bound(alarms, reps):.3f} |", flush=True)
    print(f"\nhighest observed rate in a cell: {worst:.3f}")
    summarize(cells)
    if args.false_alarms_only:
        return 0

    print("## Power: share of checks flagging the drifted feature (20 features, reference 5,000 rows)\n")
    print("| drift | n | checks | mlmon | Failing Loudly (KS/chi², Bonferroni) | mlmon − baseline |")
    print("|---|---:|---:|---:|---:|---:|")
    sizes = (1_000,) if args.quick else SIZES[:-1]
    for drift in DRIFTS:
        for n in sizes:
            reps = reps_for(n, 20, args.power_reps)
            ours, theirs = power(drift, n, 5_000, 20, reps, rng, policy)
            print(f"| {drift} | {n:,} | {reps} | {ours / reps:.2f} | {theirs / reps:.2f} | {(ours - theirs) / reps:+.2f} |",
                  flush=True)

    print("\n## Practical significance: a 0.02 σ mean shift at large windows (reference 100,000 rows)\n")
    print("| n | checks | none | info | warning or worse |\n|---:|---:|---:|---:|---:|")
    setup = Setup("gaussian", 5, 100_000, rng)
    for n in (50_000, 200_000):
        reps = 5 if args.quick else 20
        seen: collections.Counter[str] = collections.Counter()
        for _ in range(reps):
            seen[setup.verdicts(setup.draw(rng, n, drift={0: shift(0.02)}), policy)[setup.schema.names[0]]] += 1
        print(f"| {n:,} | {reps} | {seen['none']} | {seen['info']} | {seen['warning'] + seen['critical']} |", flush=True)
    if args.part == "all":
        label_alerts(args.quick, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
