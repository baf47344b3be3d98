"""What one drift check costs, against scipy per feature and Evidently, and how it scales.

    python benchmarks/drift.py [--evidently-python PATH] [--quick]

1. 100 numeric features, 10,000 baseline rows, 10,000 current rows, on one core: mlmon's full
   check (PSI, JS, KS, Wasserstein for every feature, data quality, the policy's verdicts; at
   10,000 rows the default policy judges by effect sizes, so KS p-values are skipped, and the
   run with them is shown too); scipy called per feature on the raw data (``ks_2samp``,
   ``wasserstein_distance``, ``jensenshannon`` and PSI on quantile histograms); Evidently's
   ``DataDriftPreset`` on the same data, in its own interpreter (its pandas pin clashes with
   ours: ``make bench`` builds ``.bench-evidently``).
2. mlmon's check at 10/100/1,000 features × 1k/10k/100k rows, with a float64 window and with
   a float32 one (what a model keeps when its baseline's values survive the rounding): median
   time and peak memory (tracemalloc) of the check itself (the window's snapshot included), and
   that peak over the window's payload (rows × features × 4 or 8 bytes).
"""

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np

from mlmon_middleware import Baseline
from mlmon_middleware.drift.engine import compare
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.reservoir import SlidingWindow
from mlmon_middleware.schema import Encoded, FeatureSchema

PEER_DATA = textwrap.dedent("""
    import json, sys, time
    import numpy as np, pandas as pd
    features, rows, rounds = (int(a) for a in sys.argv[1:4])
    rng = np.random.default_rng(0)
    columns = [f"f{i}" for i in range(features)]
    ref = pd.DataFrame(rng.normal(size=(rows, features)), columns=columns)
    cur = pd.DataFrame(rng.normal(0.1, 1, size=(rows, features)), columns=columns)
""")


def peer_script(setup: str, check: str) -> str:
    """A script for a peer's own interpreter (arguments: features, rows, rounds): the numbers of
    ``data`` as the DataFrames ``ref`` and ``cur``, then ``setup`` once, then the one-line
    statement ``check`` timed ``rounds`` times; prints the seconds as a JSON list."""
    return PEER_DATA + textwrap.dedent(setup) + textwrap.dedent(f"""
        times = []
        for _ in range(rounds):
            start = time.perf_counter(); {check}; times.append(time.perf_counter() - start)
        print(json.dumps(times))
    """)


def run_peer(python: str, script: str, features: int, rows: int, rounds: int) -> list[float]:
    """``script`` (see ``peer_script``) run by ``python`` on core 0: its times in seconds; a
    RuntimeError carrying the last line of its stderr when it fails."""
    out = subprocess.run(["taskset", "-c", "0", python, "-c", script, str(features), str(rows), str(rounds)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1:])
    return json.loads(out.stdout.strip().splitlines()[-1])


EVIDENTLY = peer_script("""
    from evidently import Report
    from evidently.presets import DataDriftPreset
""", "Report([DataDriftPreset()]).run(cur, ref)")


def data(features: int, rows: int):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, features)), rng.normal(0.1, 1, size=(rows, features))


def mlmon_check(ref: np.ndarray, cur: np.ndarray, dtype: type = float):
    schema = FeatureSchema([f"f{i}" for i in range(ref.shape[1])])
    empty = np.empty((len(ref), 0), dtype=object)
    baseline = Baseline.from_encoded(schema, Encoded(ref, empty, collections.Counter()))
    window = SlidingWindow(len(cur), numeric=(cur.shape[1], dtype), categorical=(0, object))
    window.extend(np.zeros(len(cur)), numeric=cur, categorical=np.empty((len(cur), 0), dtype=object))
    policy = DriftPolicy()

    def check():  # as a model's check does: a snapshot of the window, then the statistics and verdicts
        return policy.judge(compare(baseline.features, schema, window.snapshot()))

    return check


def scipy_per_feature(ref: np.ndarray, cur: np.ndarray) -> None:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import ks_2samp, wasserstein_distance

    for j in range(ref.shape[1]):
        r, c = ref[:, j], cur[:, j]
        ks_2samp(r, c)
        wasserstein_distance(r, c)
        edges = np.quantile(r, np.linspace(0, 1, 11))
        p = np.histogram(r, edges)[0] / len(r)
        q = np.histogram(c, edges)[0] / len(c)
        jensenshannon(p, q, base=2)
        np.sum((np.clip(q, 1e-4, None) - np.clip(p, 1e-4, None)) * np.log(np.clip(q, 1e-4, None) / np.clip(p, 1e-4, None)))


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evidently-python", default=os.environ.get("EVIDENTLY_PYTHON"),
                        help="an interpreter with evidently installed (skipped when absent)")
    parser.add_argument("--quick", action="store_true", help="skip the largest scale runs")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})  # one core, as the target says
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores "
          f"(pinned to one), Python {platform.python_version()}\n")
    ref, cur = data(100, 10_000)
    check = mlmon_check(ref, cur)
    check()
    ours = statistics.median(timed(check, 15))
    sp = statistics.median(timed(lambda: scipy_per_feature(ref, cur), 3))
    rows = [("mlmon check (KS p-values, effect sizes, PSI, JS, quality)", ours),
            ("scipy per feature (ks_2samp auto, wasserstein, JS, PSI)", sp)]
    if args.evidently_python:
        try:
            times = run_peer(args.evidently_python, EVIDENTLY, 100, 10_000, 3)
            rows.append(("Evidently DataDriftPreset", statistics.median(times)))
        except RuntimeError as failure:
            print(f"(Evidently failed: {failure})")
    print("| 100 features, 10,000 + 10,000 rows, one core | median | × mlmon |\n|---|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1e3:,.1f} ms | {seconds / ours:,.1f} |")

    print("\n| features | rows (baseline = current) | window | check, median (min–max of 5) "
          "| peak memory of the check | peak / window payload |")
    print("|---:|---:|---|---:|---:|---:|")
    for features in (10, 100, 1000):
        for n in (1_000, 10_000, 100_000):
            if args.quick and features * n > 1_000_000:
                continue
            ref, cur = data(features, n)
            for dtype in (np.float64, np.float32):
                check = mlmon_check(ref, cur, dtype)
                check()
                times = timed(check, 5)
                seconds = statistics.median(times)
                tracemalloc.start()
                check()
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                payload = features * n * np.dtype(dtype).itemsize
                print(f"| {features:,} | {n:,} | {np.dtype(dtype).name} | {seconds * 1e3:,.1f} ms "
                      f"({min(times) * 1e3:,.1f}–{max(times) * 1e3:,.1f}) | {peak / 2**20:,.1f} MB | {peak / payload:.2f} |",
                      flush=True)


if __name__ == "__main__":
    sys.exit(main())
