"""How monitoring costs grow: with features, batch size, window size and the number of models.

    python benchmarks/scaling.py [requests|windows|models|all] [--rounds 5]

requests  A plain function (no web framework) called with one input, bare and with ``@monitor``,
          interleaved round by round in one process. The cost counted is the process's CPU time
          (every thread: the background pipeline included, each round ending with a flush), per
          call; the table gives what monitoring adds per call and per row × feature (ns), for
          features 5–500 (one row per call) and batches of 1–256 rows of 22 features, each as a
          dict (or a list of dicts), a pandas DataFrame and a numpy array.
windows   One check (window snapshot, statistics, verdicts) of 22 features at 1k–100k rows:
          time, ns per row × feature, and peak memory over the window's payload.
models    20 features, 1/10/100 models, each with a baseline and a full window of 10,000 rows:
          traced memory in total and per model, and per model before any traffic.
"""

import argparse
import gc
import os
import platform
import shutil
import statistics
import tempfile
import time
import tracemalloc

import numpy as np
import pandas as pd

from mlmon_middleware import Baseline, Monitor, MonitorConfig, monitor


def inputs(shape: str, features: int, rows: int, rng: np.random.Generator):
    """One call's input: ``rows`` rows of ``features`` numbers, as ``shape``."""
    values = rng.normal(size=(rows, features))
    names = [f"f{i}" for i in range(features)]
    if shape == "ndarray":
        return values
    if shape == "DataFrame":
        return pd.DataFrame(values, columns=names)
    dicts = [dict(zip(names, row)) for row in values.tolist()]
    return dicts[0] if rows == 1 else dicts


def cpu_per_call(fn, payload, calls: int, mon: Monitor | None) -> float:
    """Process CPU seconds per call (all threads), the pipeline's remaining work included."""
    gc.collect()
    start = time.process_time()
    for _ in range(calls):
        fn(payload)
    if mon is not None:
        mon.flush()
    return (time.process_time() - start) / calls


def bench_requests(rounds: int, features_list=(5, 22, 100, 500), batches=(16, 64, 256)) -> list[dict]:
    rng = np.random.default_rng(0)
    cases = [(shape, f, 1) for f in features_list for shape in ("dict", "DataFrame", "ndarray")]
    cases += [(shape, 22, b) for b in batches for shape in ("dict", "DataFrame", "ndarray")]
    results = []
    for shape, features, rows in cases:
        mon = Monitor(MonitorConfig(tracing=False, check_interval=0, service_name="bench", max_features=1000))

        def bare(x, rows=rows):
            return np.zeros(rows) if rows > 1 else 0.0

        monitored = monitor(model=f"{shape}-{features}-{rows}", registry=mon)(bare)
        payload = inputs(shape, features, rows, rng)
        calls = max(50, min(2000, 200_000 // (features * rows)))
        cpu_per_call(monitored, payload, calls, mon)  # warm up: schema, windows, first-use paths
        added = []
        for _ in range(rounds):
            plain = cpu_per_call(bare, payload, calls, None)
            watched = cpu_per_call(monitored, payload, calls, mon)
            added.append(watched - plain)
        mon.shutdown()
        cells = features * rows
        results.append({"shape": shape, "features": features, "rows": rows, "added_us": statistics.median(added) * 1e6,
                        "ns_cell": statistics.median(added) * 1e9 / cells,
                        "spread": (min(added) * 1e9 / cells, max(added) * 1e9 / cells)})
    return results


def bench_windows(rounds: int, sizes=(1_000, 10_000, 100_000)) -> list[dict]:
    from drift import mlmon_check

    out = []
    for rows in sizes:
        rng = np.random.default_rng(0)
        check = mlmon_check(rng.normal(size=(rows, 22)), rng.normal(0.1, 1, size=(rows, 22)))
        check()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            check()
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        check()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        seconds = statistics.median(times)
        out.append({"rows": rows, "ms": seconds * 1e3, "ns_cell": seconds * 1e9 / (rows * 22),
                    "spread": (min(times) * 1e3, max(times) * 1e3), "peak_ratio": peak / (rows * 22 * 8)})
    return out


def bench_models(counts=(1, 10, 100)) -> list[dict]:
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(20)]
    folder = tempfile.mkdtemp(prefix="mlmon-scaling-")
    path = os.path.join(folder, "baseline.json")  # each model loads its own copy, as services do
    Baseline.from_data(pd.DataFrame({n: rng.normal(size=5_000) for n in names})).save(path)
    batch = pd.DataFrame({n: rng.normal(size=10_000) for n in names})
    out = []
    for count in counts:
        mon = Monitor(MonitorConfig(tracing=False, check_interval=0, max_models=1000, service_name="bench"))
        warm = mon.model("warm", baseline=Baseline.load(path))
        warm.record(batch.iloc[:100], np.zeros(100))
        mon.flush()
        warm.check_now()  # first-use imports and caches out of the measurement
        gc.collect()
        tracemalloc.start()
        models = [mon.model(f"m{i}", baseline=Baseline.load(path)) for i in range(count)]
        gc.collect()
        fixed = tracemalloc.get_traced_memory()[0]
        for model in models:
            model.record(batch, np.zeros(10_000))
        mon.flush()
        gc.collect()
        total = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        mon.shutdown()
        out.append({"models": count, "total_mb": total / 2**20, "per_model_mb": total / count / 2**20,
                    "fixed_mb": fixed / count / 2**20})
    shutil.rmtree(folder, ignore_errors=True)
    return out


def print_requests(rows: list[dict]) -> None:
    print("| input | features | rows per call | added per call, µs (median) | added per row × feature, ns "
          "(median; min–max over rounds) |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['features']} | {r['rows']} | {r['added_us']:.1f} | {r['ns_cell']:.0f}; "
              f"{r['spread'][0]:.0f}–{r['spread'][1]:.0f} |", flush=True)


def print_windows(rows: list[dict]) -> None:
    print("\n| window rows (22 features) | check, ms (median; min–max) | ns per row × feature "
          "| peak memory / window payload |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['rows']:,} | {r['ms']:.1f}; {r['spread'][0]:.1f}–{r['spread'][1]:.1f} | {r['ns_cell']:.1f} "
              f"| {r['peak_ratio']:.2f} |", flush=True)


def print_models(rows: list[dict]) -> None:
    print("\n| models (20 features, 10,000-row windows, baselines) | traced memory, MB | per model, MB "
          "| per model before traffic, MB |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['models']} | {r['total_mb']:.1f} | {r['per_model_mb']:.2f} | {r['fixed_mb']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["requests", "windows", "models", "all"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; `python benchmarks/scaling.py {args.what} "
          f"--rounds {args.rounds}`\n")
    if args.what in ("requests", "all"):
        print_requests(bench_requests(args.rounds))
    if args.what in ("windows", "all"):
        print_windows(bench_windows(args.rounds))
    if args.what in ("models", "all"):
        print_models(bench_models())


if __name__ == "__main__":
    main()
