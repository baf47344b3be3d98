"""The prediction log's costs: hot-path enqueue, writer throughput, label joins, window metrics.

    python benchmarks/store.py [sqlite|postgres|all] [--rows 500000] [--shared-rows 50000]

``sqlite`` (part of ``all``, the default):

* enqueue: ``ModelMonitor.record()`` per call with the log on (the request path's share), and
  ``StoreWriter.put`` per row (what the pipeline adds per logged row);
* writer throughput: rows per second into SQLite through the writer's batched transactions
  (target ≥ 50,000/s sustained), and end to end (record → pipeline → log);
* label joins: ``record_outcomes`` in batches of 1,000, labels per second;
* window metrics: one performance check over 100,000 labelled predictions.

``postgres`` (part of ``all``): the shared log against SQLite in the same run, 5 interleaved
rounds, each on a fresh file and a fresh database: rows per second through ``write`` in batches
of 1,000 (target ≥ 20,000/s for PostgreSQL) and labels per second through ``set_labels`` in
batches of 1,000. The PostgreSQL server is started here with its default (durable) settings by
``tests/postgres_server.py``, on 127.0.0.1 over TCP.
"""

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.store import LogRow, PredictionStore, SQLiteStore, open_store
from mlmon_middleware.store_writer import StoreWriter

FEATURES = '{"age": 41.0, "income": 52000.5, "debt_ratio": 0.31, "credit_score": 690.0, "region": "west"}'


def log_rows(n: int) -> list[LogRow]:
    """Rows shaped like the demo's (5 features logged)."""
    return [LogRow(f"p{i}", "m", "1", 1.7e9 + i * 1e-3, '{"prediction": 0.42}', '{"region": "west"}', FEATURES)
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=("sqlite", "postgres", "all"), default="all")
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--shared-rows", type=int, default=50_000, help="rows per round of the postgres part")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}\n")
    if args.part in ("sqlite", "all"):
        sqlite_costs(args.rows)
    if args.part in ("postgres", "all"):
        shared_log(args.shared_rows)


def sqlite_costs(n_rows: int) -> None:
    folder = tempfile.mkdtemp()

    # writer throughput
    rows = log_rows(n_rows)
    writer = StoreWriter(SQLiteStore(os.path.join(folder, "w.sqlite")), interval=3600)
    put = []
    start = time.perf_counter()
    for i in range(0, n_rows, 5000):
        t = time.perf_counter()
        writer.put(rows[i:i + 5000])
        put.append((time.perf_counter() - t) / 5000)
        writer.flush()
    elapsed = time.perf_counter() - start
    writer.close()
    print(f"writer: {n_rows:,} rows in {elapsed:.2f} s = {n_rows / elapsed:,.0f} rows/s "
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


def shared_log(n_rows: int, rounds: int = 5, batch: int = 1000) -> None:
    """SQLite and PostgreSQL alternate, ``rounds`` times: rows/s written, labels/s joined."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
    from postgres_server import PostgresServer  # the tests' throwaway server

    rows = log_rows(n_rows)
    labels = [(r.prediction_id, i % 2, r.timestamp + 60.0) for i, r in enumerate(rows)]
    folder = tempfile.mkdtemp()
    results: dict[str, dict[str, list[float]]] = {name: {"write": [], "label": []} for name in ("sqlite", "postgres")}
    with PostgresServer() as server:
        print(f"shared log: {n_rows:,} rows then {n_rows:,} labels per round, batches of {batch:,}, "
              f"{rounds} interleaved rounds; PostgreSQL {server_version(server.url)} on 127.0.0.1 (TCP, default settings)")
        for round_ in range(rounds):
            for name in ("sqlite", "postgres"):
                location = os.path.join(folder, f"r{round_}.sqlite") if name == "sqlite" else server.create_database()
                store = open_store(location)
                write, label = time_batches(store, rows, labels, batch)
                store.close()
                results[name]["write"].append(n_rows / write)
                results[name]["label"].append(n_rows / label)
                print(f"  round {round_ + 1} {name:8s}: write {n_rows / write:10,.0f} rows/s, labels {n_rows / label:10,.0f}/s")
    for what, unit in (("write", "rows/s"), ("label", "labels/s")):
        for name in ("sqlite", "postgres"):
            values = results[name][what]
            print(f"{what} {name:8s}: median {statistics.median(values):,.0f} {unit} "
                  f"(spread {min(values):,.0f} – {max(values):,.0f})")
        ratios = [p / s for p, s in zip(results["postgres"][what], results["sqlite"][what])]
        print(f"{what} postgres / sqlite per round: " + ", ".join(f"{r:.2f}" for r in ratios))


def time_batches(store: PredictionStore, rows: list[LogRow], labels: list[tuple[str, int, float]],
                 batch: int) -> tuple[float, float]:
    """Seconds to write ``rows`` then join ``labels``, ``batch`` at a time."""
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        store.write(rows[i:i + batch])
    written = time.perf_counter()
    for i in range(0, len(labels), batch):
        store.set_labels("m", labels[i:i + batch])
    return written - start, time.perf_counter() - written


def server_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as db:
        row = db.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


if __name__ == "__main__":
    main()
