"""The prediction log's costs: hot-path enqueue, writer throughput, label joins, window metrics.

    python benchmarks/store.py [--rows 500000]

* enqueue: ``ModelMonitor.record()`` per call with the log on (the request path's share), and
  ``StoreWriter.put`` per row (what the pipeline adds per logged row);
* writer throughput: rows per second into SQLite through the writer's batched transactions
  (target ≥ 50,000/s sustained), and end to end (record → pipeline → log);
* label joins: ``record_outcomes`` in batches of 1,000, labels per second;
* window metrics: one performance check over 100,000 labelled predictions.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.store import LogRow, SQLiteStore
from mlmon_middleware.store_writer import StoreWriter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}\n")
    folder = tempfile.mkdtemp()

    # writer throughput, rows shaped like the demo's (16 features logged)
    features = '{"age": 41.0, "income": 52000.5, "debt_ratio": 0.31, "credit_score": 690.0, "region": "west"}'
    rows = [LogRow(f"p{i}", "m", "1", 1.7e9 + i * 1e-3, '{"prediction": 0.42}', '{"region": "west"}', features)
            for i in range(args.rows)]
    writer = StoreWriter(SQLiteStore(os.path.join(folder, "w.sqlite")), interval=3600)
    put = []
    start = time.perf_counter()
    for i in range(0, args.rows, 5000):
        t = time.perf_counter()
        writer.put(rows[i:i + 5000])
        put.append((time.perf_counter() - t) / 5000)
        writer.flush()
    elapsed = time.perf_counter() - start
    writer.close()
    print(f"writer: {args.rows:,} rows in {elapsed:.2f} s = {args.rows / elapsed:,.0f} rows/s "
          f"(batches of 5,000; put {statistics.median(put) * 1e6:.2f} µs/row)")

    # end to end and the request path
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=folder, store_max_rows=None))
    mm = mon.model("e2e", segments=["region"], performance={"task": "binary", "count_window": 100_000})
    rng = np.random.default_rng(0)
    xs = rng.normal(size=100_000)
    record_times = []
    start = time.perf_counter()
    ids = []
    for i, x in enumerate(xs):
        t = time.perf_counter_ns()
        ids.append(mm.record({"x": float(x), "region": f"r{i % 5}"}, {"prediction": float(1 / (1 + np.exp(-3 * x)))}))
        record_times.append(time.perf_counter_ns() - t)
        if i % 5000 == 4999:
            mon.flush()  # a bare loop outruns the pipeline thread (see overhead.py memory)
    mon.flush()
    mon.store_writer.flush()
    elapsed = time.perf_counter() - start
    print(f"end to end: 100,000 record() → pipeline → log in {elapsed:.2f} s = {100_000 / elapsed:,.0f} predictions/s; "
          f"record() median {statistics.median(record_times) / 1000:.2f} µs")

    labels = [(pid, int(x > 0), None) for pid, x in zip(ids, xs)]
    start = time.perf_counter()
    for i in range(0, len(labels), 1000):
        mm.record_outcomes(labels[i:i + 1000])
    elapsed = time.perf_counter() - start
    print(f"labels: 100,000 joined in {elapsed:.2f} s = {100_000 / elapsed:,.0f} labels/s (batches of 1,000)")

    times = []
    for _ in range(3):
        start = time.perf_counter()
        mm.checker.performance.compute(mon.store_writer.store, time.time())
        times.append(time.perf_counter() - start)
    print(f"window metrics: a performance check over 100,000 labelled predictions (2 windows, 5 segments, "
          f"error-stream detectors) median {statistics.median(times):.2f} s")
    mon.shutdown()


if __name__ == "__main__":
    main()
