"""One drift check, two revisions side by side: did a change of the check's statistics make it dearer?

    python benchmarks/check_versions.py BEFORE [--rounds 5]

Loads ``BEFORE``'s ``drift/engine.py`` and ``drift/stats.py`` (from git, into a temporary folder;
the rest of the library is the working tree's, so this compares changes confined to those two
files) beside the working tree's, and times both on the same windows in one process, pinned to
one core, alternating round by round: 22 features at 1k/10k/100k rows, 100 and 1,000 features at
100k rows (float64 windows, reference 10,000 rows, the default policy's verdicts included).
Prints each one's median CPU time with its min–max and the per-round ratio after / before.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from mlmon_middleware import Baseline
from mlmon_middleware.drift import engine
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.reservoir import SlidingWindow
from mlmon_middleware.schema import Encoded, FeatureSchema

SHAPES = ((22, 1_000), (22, 10_000), (22, 100_000), (100, 100_000), (1_000, 100_000))


def load_before(revision: str, folder: str):
    """``revision``'s engine module, its statistics its own (the other imports: this tree's)."""
    def source(path: str) -> str:
        return subprocess.run(["git", "show", f"{revision}:{path}"], check=True, capture_output=True, text=True).stdout

    stats_path = os.path.join(folder, "before_stats.py")
    with open(stats_path, "w") as f:
        f.write(source("mlmon_middleware/drift/stats.py"))
    engine_path = os.path.join(folder, "before_engine.py")
    with open(engine_path, "w") as f:
        f.write(source("mlmon_middleware/drift/engine.py").replace(
            "from mlmon_middleware.drift import stats\n", "import before_stats as stats\n"))
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("before_engine", engine_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checks(features: int, rows: int, before) -> dict:
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(size=(min(rows, 10_000), features)), rng.normal(0.1, 1, size=(rows, features))
    schema = FeatureSchema([f"f{i}" for i in range(features)])
    baseline = Baseline.from_encoded(schema, Encoded(ref, np.empty((len(ref), 0), object), collections.Counter()))
    window = SlidingWindow(rows, numeric=(features, float), categorical=(0, object))
    window.extend(np.zeros(rows), numeric=cur, categorical=np.empty((rows, 0), dtype=object))
    policy = DriftPolicy()
    return {name: (lambda compare=module.compare: policy.judge(compare(baseline.features, schema, window.snapshot())))
            for name, module in (("before", before), ("after", engine))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores "
          f"(pinned to one), Python {platform.python_version()}; "
          f"`python benchmarks/check_versions.py {args.before} --rounds {args.rounds}`\n")
    print(f"| features × rows | {args.before}, ms (median; min–max) | working tree, ms | after / before, "
          "per round (median; min–max) |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        before = load_before(args.before, folder)
        for features, rows in SHAPES:
            fns = checks(features, rows, before)
            for fn in fns.values():
                fn()  # first use: caches, imports
            times: dict[str, list[float]] = {name: [] for name in fns}
            repeat = max(1, 2_000_000 // (features * rows))  # small checks timed over several calls
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    start = time.process_time()
                    for _ in range(repeat):
                        fn()
                    times[name].append((time.process_time() - start) / repeat * 1e3)
            old, new = times["before"], times["after"]
            ratios = [b / a for a, b in zip(old, new)]
            print(f"| {features:,} × {rows:,} | {statistics.median(old):,.1f}; {min(old):,.1f}–{max(old):,.1f} "
                  f"| {statistics.median(new):,.1f}; {min(new):,.1f}–{max(new):,.1f} "
                  f"| {statistics.median(ratios):.2f}; {min(ratios):.2f}–{max(ratios):.2f} |", flush=True)


if __name__ == "__main__":
    main()
